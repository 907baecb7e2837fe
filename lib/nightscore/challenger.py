"""Champion and challenger: a candidate model scored beside the approved one, compared with it,
and optionally tried on a random share of customers' recommendations (an A/B test).

The challenger's scores are committed to their own root (``nightly.challenger_output``) by the
same commit protocol as the champion's, so reading the published root never returns them. The
comparison needs no outcomes: how far the PDs agree, how scores and bands move, how much the
recommendation lists overlap. Whether the challenger is *better* is for the back-test, once
outcomes land. With ``nightly.challenger_share`` above 0, a stable hash-of-id share of customers
gets the challenger's recommendations in the published output (their PD, score, band and reason
codes stay the champion's) and every row records its arm, so take-up can be compared per arm.
"""
from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from scipy.stats import pearsonr, spearmanr

from . import pages, partition, storage
from .config import S3Spec
from .schema import id_hash
from .suitability import recommended_ranks

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_STEP = 10  # points per bin of the score-difference histogram
BIG_MOVE = 20  # a score moving more than this many points (one pdo by default) is counted


@dataclass(frozen=True)
class ABTest:
    """Publish the challenger's recommendations to `share` of the customers (hash of id and `salt`)."""
    share: float
    salt: str
    shadow: str  # the challenger's committed scores root


def challenger_arm(ids: pa.Array | pa.ChunkedArray, share: float, salt: str) -> np.ndarray:
    """True for the customers in the challenger arm: a keyed hash of the id, so the assignment is
    the same every night and on every rerun, independent of row order and of the training split,
    and changes only when the salt does."""
    return (id_hash(ids, salt) % 1_000_000) < round(share * 1_000_000)


def publish_ab(fs: Any, scores_dir: str, date: dt.date, ab: ABTest, s3: S3Spec | None) -> dict[str, Any]:
    """Rewrite a run's staged score files so the challenger arm carries the challenger's
    recommendations (before the run's invariant checks and commit). A customer the challenger
    did not score stays in the champion arm. Returns the manifest's record of the test."""
    shadow_fs, shadow_root = storage.filesystem(ab.shadow, s3)
    shadow_manifest = partition.manifest(shadow_fs, shadow_root, date) or {}
    theirs = partition.read(ab.shadow, date, "scores", s3)
    if theirs.num_rows:
        theirs = theirs.select(["customer_id", "recommendations"])
        theirs = theirs.filter(pa.array(challenger_arm(theirs.column("customer_id"), ab.share, ab.salt)))
    counts = {CHAMPION: 0, CHALLENGER: 0}
    for path in storage.list_files(fs, scores_dir):
        table = pq.read_table(path, filesystem=fs)
        at = (pc.index_in(table.column("customer_id"), value_set=theirs.column("customer_id"))
              if theirs.num_rows else pa.nulls(table.num_rows, pa.int32()))
        use = pa.array(challenger_arm(table.column("customer_id"), ab.share, ab.salt)
                       & pc.is_valid(at).to_numpy(zero_copy_only=False))
        if theirs.num_rows:
            recs = pc.if_else(use, theirs.column("recommendations").take(pc.fill_null(at, 0)),
                              table.column("recommendations"))
            table = table.set_column(table.schema.get_field_index("recommendations"), "recommendations", recs)
        arms = pc.if_else(use, CHALLENGER, CHAMPION)
        table = table.set_column(table.schema.get_field_index("recommendation_arm"), "recommendation_arm", arms)
        n = int(pc.sum(use).as_py() or 0)
        counts[CHALLENGER] += n
        counts[CHAMPION] += table.num_rows - n
        pq.write_table(table, path, filesystem=fs)
    return {"share": ab.share, "salt": ab.salt, "challenger_output": ab.shadow,
            "challenger_run_id": shadow_manifest.get("run_id"),
            "challenger_model_version": shadow_manifest.get("model_version"),
            "rows": counts}


# --------------------------------------------------------------------------- comparison
def compare(champion: pa.Table, challenger: pa.Table, band_names: list[str], top_k: int) -> dict[str, Any]:
    """How the challenger's scores differ from the champion's on the customers both scored."""
    theirs = challenger.select(["customer_id", "pd_12m", "credit_score", "risk_band", "recommendations",
                                "model_version"])
    at = pc.index_in(champion.column("customer_id"), value_set=theirs.column("customer_id"))
    both = pc.is_valid(at)
    ours = champion.filter(both)
    theirs = theirs.take(pc.drop_null(at))
    n = ours.num_rows
    out: dict[str, Any] = {
        "champion_model": sorted(set(pc.drop_null(champion.column("model_version")).to_pylist())),
        "challenger_model": sorted(set(pc.drop_null(challenger.column("model_version")).to_pylist())),
        "customers": n, "champion_only": champion.num_rows - n, "challenger_only": challenger.num_rows - n,
        "pd_pearson": None, "pd_spearman": None, "score_difference": None, "band_migration": None,
        f"overlap@{top_k}": None, "top_k": top_k,
    }
    p0 = pc.fill_null(ours.column("pd_12m"), np.nan).to_numpy(zero_copy_only=False)
    p1 = pc.fill_null(theirs.column("pd_12m"), np.nan).to_numpy(zero_copy_only=False)
    ok = np.isfinite(p0) & np.isfinite(p1)
    if ok.sum() >= 3 and np.ptp(p0[ok]) > 0 and np.ptp(p1[ok]) > 0:
        out["pd_pearson"] = float(pearsonr(p0[ok], p1[ok]).statistic)
        out["pd_spearman"] = float(spearmanr(p0[ok], p1[ok]).statistic)
    if ok.any():
        s0 = ours.column("credit_score").to_numpy(zero_copy_only=False)[ok].astype(float)
        diff = theirs.column("credit_score").to_numpy(zero_copy_only=False)[ok].astype(float) - s0
        lo = SCORE_STEP * np.floor(diff.min() / SCORE_STEP)
        edges = np.arange(lo, diff.max() + SCORE_STEP + 1e-9, SCORE_STEP)
        counts, _ = np.histogram(diff, bins=edges)
        out["score_difference"] = {
            "mean": float(diff.mean()), **{f"p{q}": float(np.percentile(diff, q)) for q in (5, 25, 50, 75, 95)},
            f"share_moved_over_{BIG_MOVE}": float((np.abs(diff) > BIG_MOVE).mean()),
            "edges": edges.tolist(), "counts": counts.tolist()}
        b0 = pc.cast(ours.column("risk_band"), pa.string()).to_numpy(zero_copy_only=False)[ok]
        b1 = pc.cast(theirs.column("risk_band"), pa.string()).to_numpy(zero_copy_only=False)[ok]
        out["band_migration"] = {"bands": band_names, "counts": [[int(((b0 == a) & (b1 == b)).sum())
                                                                 for b in band_names] for a in band_names],
                                 "unchanged": float((b0 == b1).mean())}
    if n:
        recs = [ours.column("recommendations"), theirs.column("recommendations")]
        ids = pc.unique(pa.chunked_array([pc.struct_field(pc.list_flatten(r), "product_id") for r in recs])).drop_null()
        mine, other = (recommended_ranks(r, ids.to_pylist(), top_k) > 0 for r in recs)
        shown = mine.any(axis=1) | other.any(axis=1)
        out[f"overlap@{top_k}"] = float(((mine & other).sum(axis=1) / top_k)[shown].mean()) if shown.any() else None
    return pages.jsonable(out)


def summary(cmp: dict[str, Any]) -> str:
    k = cmp["top_k"]
    return (f"challenger {', '.join(cmp['challenger_model'])} vs champion: PD rank correlation "
            f"{pages.fmt(cmp['pd_spearman'], '.3f')}, bands unchanged "
            f"{pages.fmt((cmp['band_migration'] or {}).get('unchanged'), '.1%')}, "
            f"recommendation overlap@{k} {pages.fmt(cmp[f'overlap@{k}'], '.1%')}")


def _plot(cmp: dict[str, Any]) -> Figure:
    """Score-difference histogram beside the band migration matrix."""
    fig = Figure(figsize=(11, 4.5))
    ax_diff, ax_mig = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    d = cmp["score_difference"]
    if d:
        edges = np.array(d["edges"])
        ax_diff.bar(edges[:-1], d["counts"], width=np.diff(edges), align="edge", color="#1565c0", edgecolor="white")
        ax_diff.axvline(0, color="#616161", linestyle="--")
    else:
        pages.no_data(ax_diff)
    ax_diff.set_title("Credit score: challenger minus champion")
    ax_diff.set_xlabel("Points")
    ax_diff.set_ylabel("Customers")
    m = cmp["band_migration"]
    if m:
        counts = np.array(m["counts"], dtype=float)
        rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax_mig.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(m["bands"])):
            for j in range(len(m["bands"])):
                ax_mig.text(j, i, f"{int(counts[i, j]):,}", ha="center", va="center", fontsize=8,
                            color="white" if rows[i, j] > 0.6 else "#212121")
        ax_mig.set_xticks(range(len(m["bands"])), m["bands"])
        ax_mig.set_yticks(range(len(m["bands"])), m["bands"])
    else:
        pages.no_data(ax_mig)
    ax_mig.set_title("Band migration (customers)")
    ax_mig.set_xlabel("Challenger band")
    ax_mig.set_ylabel("Champion band")
    return fig


def html_section(cmp: dict[str, Any] | None, error: str | None = None) -> str:
    """The champion/challenger part of the nightly report page."""
    if error:
        return (f'<p class="note">The challenger run failed ({html.escape(error)}); '
                "the champion's output is unaffected.</p>")
    if cmp is None:
        return '<p class="note">No challenger configured (nightly.challenger).</p>'
    k, d, m = cmp["top_k"], cmp["score_difference"] or {}, cmp["band_migration"] or {}
    rows = [("Champion model", ", ".join(cmp["champion_model"])),
            ("Challenger model", ", ".join(cmp["challenger_model"])),
            ("Customers scored by both", f"{cmp['customers']:,}"),
            ("PD correlation (Pearson / Spearman)",
             f"{pages.fmt(cmp['pd_pearson'], '.3f')} / {pages.fmt(cmp['pd_spearman'], '.3f')}"),
            ("Score difference mean / p5 / p95",
             " / ".join(pages.fmt(d.get(q), "+.1f") for q in ("mean", "p5", "p95"))),
            (f"Scores moved over {BIG_MOVE} points", pages.fmt(d.get(f"share_moved_over_{BIG_MOVE}"), ".1%")),
            ("Band unchanged", pages.fmt(m.get("unchanged"), ".1%")),
            (f"Recommendation overlap@{k}", pages.fmt(cmp[f"overlap@{k}"], ".1%"))]
    return (pages.table(["Measure", "Value"], [[(a, ""), (b, "")] for a, b in rows])
            + pages.img(pages.png(_plot(cmp)), "Champion vs challenger"))
