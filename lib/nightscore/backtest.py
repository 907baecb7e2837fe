"""Back-test: how did a committed date's scores do against what then happened to its customers?

Outcomes land long after a date is scored (a default within the 12-month horizon, the
products taken up). Joined to the committed scores by id, they measure the model the way a
validation team does: ranking (AUC, KS, Gini) and accuracy (Brier) of the PD, calibration
per risk band with the Jeffreys test of IRB/ECB validation practice, and for the
recommendations each product's take-up when recommended against when not, hit rate@k and
NDCG@k. Coverage is counted both ways (scored customers without an outcome, outcomes
without a score), never dropped silently. Thresholds in ``backtest:`` turn the result into
pass or fail. The report holds aggregates only: a risk band or PD bin under
``monitoring.min_group_size`` customers is merged with a neighbour, and a product's take-up
rate over fewer customers than that is withheld.
"""
from __future__ import annotations

import datetime as dt
import html
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from scipy.stats import beta, norm
from sklearn.metrics import ndcg_score

from . import metrics as M
from . import pages, partition, storage
from .challenger import CHALLENGER, CHAMPION
from .config import BacktestSpec, Config, ConfigError
from .monitoring import merge_small
from .schema import default_label, label_columns
from .scoring.outputs import SCHEMA as SCORES_SCHEMA
from .suitability import load_catalog, recommended_ranks
from .training.data import multi_hot, product_lists
from .validate import InputFileError, _cast_column

JSON_NAME, HTML_NAME = "backtest.json", "backtest.html"
DECILES = 10
STATUS_COLOURS = {"pass": pages.LEVEL_COLOURS["ok"], "fail": pages.LEVEL_COLOURS["alert"]}


# --------------------------------------------------------------------------- inputs
def read_outcomes(uri: str, date: dt.date, cfg: Config) -> pa.Table:
    """The id and label columns of ``<uri>/date=D/``, cast to their configured types.

    Labels are read by the same functions training uses (schema.default_label,
    training.data.product_lists), so "defaulted" and "taken up" mean the same here.
    """
    wanted = {cfg.schema.id: pa.string(), **label_columns(cfg.schema)}
    fs, root = storage.filesystem(uri, cfg.storage.s3)
    files = storage.list_files(fs, partition.date_dir(root, date))
    if not files:
        raise InputFileError(f"{uri}: date={date} holds no Parquet files")
    parts = []
    for path in files:
        where = storage.to_uri(fs, path)
        try:
            names = pq.read_schema(path, filesystem=fs).names
            missing = [c for c in wanted if c not in names]
            if missing:
                raise InputFileError(f"{where}: missing outcome column(s) {', '.join(missing)}")
            table = pq.read_table(path, filesystem=fs, columns=list(wanted))
        except (OSError, pa.ArrowException) as exc:
            raise InputFileError(f"{where}: unreadable Parquet file ({exc})") from None
        parts.append(pa.table({c: _cast_column(table.column(c), t, c, where) for c, t in wanted.items()}))
    return pa.concat_tables(parts)


def _align(scores: pa.Table, outcomes: pa.Table, id_col: str) -> tuple[pa.Table, dict[str, int]]:
    """Outcome rows in score order (all-null where a scored customer has none) and the counts of
    each side's unmatched rows. An id on several outcome rows is ambiguous: all its rows are
    left out and counted, and its customer counts as one without an outcome."""
    keyed = outcomes.filter(pc.is_valid(outcomes.column(id_col)))
    counts = pc.value_counts(keyed.column(id_col)).flatten()
    repeated = counts[0].filter(pc.greater(counts[1], 1))
    unique = keyed.filter(pc.invert(pc.is_in(keyed.column(id_col), value_set=repeated)))
    score_ids = pc.cast(scores.column("customer_id"), pa.string())
    at = pc.index_in(score_ids, value_set=unique.column(id_col))
    scored_too = pc.sum(pc.is_in(unique.column(id_col), value_set=score_ids)).as_py() or 0
    return unique.take(at), {"matched": len(at) - at.null_count, "outcome_rows": outcomes.num_rows,
                             "outcome_rows_without_id": outcomes.num_rows - keyed.num_rows,
                             "outcome_rows_with_repeated_id": keyed.num_rows - unique.num_rows,
                             "outcomes_without_score": unique.num_rows - scored_too}


# --------------------------------------------------------------------------- default
def jeffreys_p(defaults: int, n: int, mean_pd: float, test: str) -> float:
    """Jeffreys test of a band's PD: with a Beta(d + 1/2, n - d + 1/2) posterior for its default
    rate, the one-sided p-value is the posterior mass below the predicted mean PD (small when
    more customers defaulted than predicted); two-sided doubles the smaller tail."""
    p = float(beta.cdf(mean_pd, defaults + 0.5, n - defaults + 0.5))
    return p if test == "under-estimation" else min(1.0, 2 * min(p, 1 - p))


def _bands(pd: np.ndarray, y: np.ndarray, bands: np.ndarray, names: list[str], spec: BacktestSpec,
           k: int) -> list[dict[str, Any]]:
    """Per band, best first: customers with an outcome, mean PD, realised default rate and the
    Jeffreys test. A band under k customers is merged with its smaller neighbour ("B+C") and
    tested as one, so every customer counts and no published group is small; with fewer than
    k customers in all, nothing is published per band."""
    n = np.array([(bands == b).sum() for b in names])
    if n.sum() < k:
        return []
    rows = []
    for members in np.split(np.arange(len(names)), merge_small(n, k)[1:]):
        m = np.isin(bands, [names[i] for i in members])
        count, d = int(m.sum()), int(y[m].sum())
        row: dict[str, Any] = {"band": "+".join(names[i] for i in members), "customers": count, "defaults": d,
                               "mean_pd": None, "default_rate": None, "p_value": None, "passed": None,
                               "tested": bool(count)}
        if count:
            mean_pd = float(pd[m].mean())
            p = jeffreys_p(d, count, mean_pd, spec.calibration_test)
            row.update(mean_pd=mean_pd, default_rate=d / count, p_value=p, passed=p >= spec.alpha)
        rows.append(row)
    return rows


def _deciles(pd: np.ndarray, y: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Predicted vs realised per PD quantile bin: as many bins (up to ten) as hold k customers
    each, any smaller one (ties) merged with a neighbour."""
    bins = min(DECILES, len(pd) // k)
    if not bins:
        return []
    t = M.calibration_table(y, pd, bins)
    count = np.array(t["count"])
    starts = merge_small(count, k)
    n = np.add.reduceat(count, starts)
    mean_pd = np.add.reduceat(np.array(t["predicted"]) * count, starts) / n
    rate = np.add.reduceat(np.array(t["observed"]) * count, starts) / n
    return [{"mean_pd": float(p), "default_rate": float(o), "customers": int(c)} for p, o, c in zip(mean_pd, rate, n)]


def default_section(scores: pa.Table, y: pa.Array, cfg: Config) -> dict[str, Any] | None:
    """Ranking, accuracy and calibration of the PD over the scored customers with a known outcome;
    None for a products-only model (no PD)."""
    pd_col = scores.column("pd_12m")
    if pd_col.null_count == len(pd_col):
        return None
    known = pc.and_(pc.is_valid(y), pc.is_valid(pd_col)).to_numpy(zero_copy_only=False)
    pd = pc.fill_null(pd_col, 0.0).to_numpy(zero_copy_only=False)[known]
    yk = pc.fill_null(y, False).to_numpy(zero_copy_only=False)[known].astype(bool)
    bands = pc.fill_null(pc.cast(scores.column("risk_band"), pa.string()), "none")
    bands = bands.to_numpy(zero_copy_only=False)[known]
    names = [b.name for b in cfg.scorecard.bands]
    names += sorted(set(bands) - set(names))  # bands of another scorecard, should the scores carry any
    k = cfg.monitoring.min_group_size
    spec = cfg.backtest
    rows = _bands(pd, yk, bands, names, spec, k)
    tested = [r for r in rows if r["tested"]]
    failed = [r["band"] for r in tested if not r["passed"]]
    enough = len(pd) >= k
    return {
        "customers": int(len(pd)),
        "defaults": int(yk.sum()) if enough else None,
        "mean_pd": float(pd.mean()) if enough else None,
        "default_rate": float(yk.mean()) if enough else None,
        "metrics": {key.removeprefix("default_"): v for key, v in M.default_metrics(yk, pd).items()}
        if enough else None,
        "bands": rows,
        "bands_tested": len(tested),
        "bands_failed": failed,
        "failed_band_share": len(failed) / len(tested) if tested else None,
        "deciles": _deciles(pd, yk, k),
    }


# --------------------------------------------------------------------------- recommendations
def _takeup(scores: pa.Table, outcomes: pa.Table, matched: np.ndarray, cfg: Config
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Over the customers with an outcome: the catalog's product ids, which products each took up
    (customers, products) and the rank each was recommended at (0: not in the top k)."""
    product_ids = load_catalog(cfg.products.catalog, cfg.storage.s3).ids
    keep = pa.array(matched)
    taken = multi_hot(product_lists(outcomes.filter(keep), cfg.schema.labels.products), product_ids) > 0.5
    rank = recommended_ranks(scores.column("recommendations").filter(keep), product_ids, cfg.products.top_k)
    return product_ids, taken, rank


def recommendation_section(product_ids: list[str], taken: np.ndarray, rank: np.ndarray, cfg: Config
                           ) -> dict[str, Any]:
    """Per product, take-up when recommended vs when not (descriptive: not recommended includes the
    customers it was unsuitable for), and hit rate@k / NDCG@k over customers who took anything up."""
    k, top_k = cfg.monitoring.min_group_size, cfg.products.top_k
    rec = rank > 0
    products = []
    for j, pid in enumerate(product_ids):
        n_rec, n_not = int(rec[:, j].sum()), int((~rec[:, j]).sum())
        rate_rec = float(taken[rec[:, j], j].mean()) if n_rec >= k else None
        rate_not = float(taken[~rec[:, j], j].mean()) if n_not >= k else None
        products.append({"product_id": pid, "recommended": n_rec, "not_recommended": n_not,
                         "takeup_recommended": rate_rec, "takeup_not_recommended": rate_not,
                         "uplift": rate_rec - rate_not if rate_rec is not None and rate_not is not None else None})
    active = taken.any(axis=1)
    ranking: dict[str, Any] = {"customers_with_takeup": int(active.sum()), f"hit_rate@{top_k}": None,
                               f"ndcg@{top_k}": None}
    if active.sum() >= k:
        # top_k zero-gain placeholders rank below the recommended products and above the rest, so a
        # list shorter than k leaves empty slots instead of borrowing products never shown
        filler = np.full((int(active.sum()), top_k), 0.5)
        position = np.where(rec[active], top_k + 2 - rank[active], 0.0)
        ranking[f"hit_rate@{top_k}"] = float((taken[active] & rec[active]).any(axis=1).mean())
        ranking[f"ndcg@{top_k}"] = float(ndcg_score(np.hstack([taken[active], np.zeros_like(filler)]),
                                                    np.hstack([position, filler]), k=top_k))
    return {"customers": len(taken), "top_k": top_k, **ranking, "products": products}


def two_proportions(x0: int, n0: int, x1: int, n1: int, alpha: float) -> dict[str, float]:
    """Difference of two rates (second minus first): the pooled two-proportion z-test's two-sided
    p-value and the unpooled Wald confidence interval at level 1 - alpha."""
    r0, r1 = x0 / n0, x1 / n1
    pooled = (x0 + x1) / (n0 + n1)
    se0 = np.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    p = float(2 * norm.sf(abs(r1 - r0) / se0)) if se0 > 0 else 1.0
    half = norm.ppf(1 - alpha / 2) * np.sqrt(r0 * (1 - r0) / n0 + r1 * (1 - r1) / n1)
    return {"difference": r1 - r0, "p_value": p, "ci_low": r1 - r0 - half, "ci_high": r1 - r0 + half}


def arms_section(scores: pa.Table, matched: np.ndarray, taken: np.ndarray, rank: np.ndarray, cfg: Config
                 ) -> dict[str, Any] | None:
    """The A/B test of recommendations: per arm, the share of customers with an outcome who took up
    a product recommended to them, and the challenger arm's difference with its test. None when
    the scores carry one arm only (no test ran); rates over fewer than min_group_size withheld."""
    if "recommendation_arm" not in scores.column_names:
        return None
    arm = pc.fill_null(scores.column("recommendation_arm"), CHAMPION).to_numpy(zero_copy_only=False)[matched]
    if set(arm) != {CHAMPION, CHALLENGER}:
        return None
    k, top_k = cfg.monitoring.min_group_size, cfg.products.top_k
    hit = (taken & (rank > 0)).any(axis=1)
    out: dict[str, Any] = {"top_k": top_k, "arms": {}, "test": None}
    for name in (CHAMPION, CHALLENGER):
        n, x = int((arm == name).sum()), int(hit[arm == name].sum())
        out["arms"][name] = {"customers": n, "took_up_recommended": x if n >= k else None,
                             "takeup_rate": x / n if n >= k else None}
    a, b = out["arms"][CHAMPION], out["arms"][CHALLENGER]
    if a["takeup_rate"] is not None and b["takeup_rate"] is not None:
        out["test"] = two_proportions(a["took_up_recommended"], a["customers"], b["took_up_recommended"],
                                      b["customers"], cfg.backtest.alpha)
    return out


# --------------------------------------------------------------------------- report
def _breaches(coverage: dict[str, Any], default: dict[str, Any] | None, spec: BacktestSpec) -> list[dict[str, Any]]:
    """Every threshold crossed; an undefined figure (no outcomes, a suppressed metric) crosses none."""
    out = []
    if coverage["share_with_outcome"] is not None and coverage["share_with_outcome"] < spec.min_coverage:
        out.append({"metric": "coverage", "value": coverage["share_with_outcome"], "threshold": spec.min_coverage})
    if default and default["metrics"]:
        auc = default["metrics"]["auc"]
        if spec.min_auc is not None and np.isfinite(auc) and auc < spec.min_auc:
            out.append({"metric": "auc", "value": auc, "threshold": spec.min_auc})
    failed = default["failed_band_share"] if default else None
    if failed is not None and failed > spec.max_failed_band_share:
        out.append({"metric": "failed_band_share", "value": failed, "threshold": spec.max_failed_band_share})
    return out


def build_report(scores: pa.Table, outcomes: pa.Table, cfg: Config, date: dt.date) -> dict[str, Any]:
    """The back-test of one date as a JSON-ready dict (undefined figures are None)."""
    labels = cfg.schema.labels
    aligned, counts = _align(scores, outcomes, cfg.schema.id)
    matched = pc.is_valid(aligned.column(cfg.schema.id)).to_numpy(zero_copy_only=False)
    y = default_label(aligned, cfg.schema) if labels.default else None
    with_outcome = int(len(y) - y.null_count) if y is not None else counts["matched"]
    scored = scores.num_rows
    coverage = {"scored": scored, **counts, "with_outcome": with_outcome, "without_outcome": scored - with_outcome,
                "share_with_outcome": with_outcome / scored if scored else None}
    default = default_section(scores, y, cfg) if y is not None else None
    recs = ab = None
    if labels.products:
        product_ids, taken, rank = _takeup(scores, aligned, matched, cfg)
        recs = recommendation_section(product_ids, taken, rank, cfg)
        ab = arms_section(scores, matched, taken, rank, cfg)
    report = {
        "date": date.isoformat(),
        "model_version": sorted(set(pc.drop_null(scores.column("model_version")).to_pylist())),
        "scores_run_id": sorted(set(pc.drop_null(scores.column("run_id")).to_pylist())),
        "coverage": coverage,
        "default": default,
        "recommendations": recs,
        "ab_test": ab,
        "thresholds": {**cfg.backtest.model_dump(), "min_group_size": cfg.monitoring.min_group_size},
        "breaches": _breaches(coverage, default, cfg.backtest),
    }
    report["status"] = "fail" if report["breaches"] else "pass"
    return pages.jsonable(report)


def summary(report: dict[str, Any]) -> list[str]:
    """A few log lines of aggregates for the job's output."""
    c, d = report["coverage"], report["default"]
    lines = [f"{report['date']}: {c['with_outcome']:,} of {c['scored']:,} scored customers have an outcome; "
             f"{c['outcomes_without_score']:,} outcome(s) without a score"]
    if d and d["metrics"]:
        m = d["metrics"]
        lines.append(f"AUC {pages.fmt(m['auc'], '.3f')}, Brier {pages.fmt(m['brier'], '.4f')}; Jeffreys "
                     f"test failed in {len(d['bands_failed'])} of {d['bands_tested']} band(s) tested")
    ab = report.get("ab_test")
    if ab and ab["test"]:
        t = ab["test"]
        lines.append(f"A/B: challenger arm take-up {t['difference']:+.2%} vs champion "
                     f"(95% CI {t['ci_low']:+.2%} to {t['ci_high']:+.2%}, {_p(t['p_value'])})")
    ch = report.get("challenger")
    if ch:
        lines.append(f"challenger {ch['model']['version']}: {ch['status'].upper()}, "
                     f"AUC gain over the champion {pages.fmt(ch['auc_gain'], '+.3f')}")
    lines.append(f"report: {report['report_html']}  status: {report['status'].upper()}")
    lines += [f"  breach: {b['metric']} = {b['value']:.3f} (threshold {b['threshold']:g})" for b in report["breaches"]]
    return lines


# --------------------------------------------------------------------------- plots
def _plot_calibration(default: dict[str, Any]) -> Figure:
    """Realised default rate against mean predicted PD, per PD decile and per band, beside the
    diagonal. Log axes, as PDs are skewed towards small values; a realised rate of 0 is drawn
    on the bottom edge."""
    fig = Figure(figsize=(8.5, 5.5))
    ax = fig.add_subplot()
    deciles = default["deciles"]
    bands = [b for b in default["bands"] if b["tested"]]
    rows = deciles + bands
    values = [v for r in rows for v in (r["mean_pd"], r["default_rate"]) if v > 0]
    if not values:
        pages.no_data(ax)
        return fig
    lo, hi = min(values) / 1.5, min(max(values) * 1.5, 1.0)
    ax.plot([lo, hi], [lo, hi], color="#9e9e9e", linestyle="--", label="perfect calibration")
    ax.plot([d["mean_pd"] for d in deciles], [max(d["default_rate"], lo) for d in deciles], marker="o",
            color="#1565c0", label="PD decile")
    for b in bands:
        colour = pages.LEVEL_COLOURS["ok"] if b["passed"] else pages.LEVEL_COLOURS["alert"]
        ax.scatter(b["mean_pd"], max(b["default_rate"], lo), s=90, marker="s", color=colour, zorder=3)
        ax.annotate(b["band"], (b["mean_pd"], max(b["default_rate"], lo)), textcoords="offset points",
                    xytext=(7, -3), fontweight="bold")
    ax.scatter([], [], marker="s", color=pages.LEVEL_COLOURS["ok"], label="band, test passed")
    ax.scatter([], [], marker="s", color=pages.LEVEL_COLOURS["alert"], label="band, test failed")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.1%}" if v < 0.01 else f"{v:.0%}")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.1%}" if v < 0.01 else f"{v:.0%}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title("Calibration: realised default rate vs predicted PD")
    ax.set_xlabel("Mean predicted 12-month PD (log scale)")
    ax.set_ylabel("Realised default rate (log scale)")
    return fig


def _plot_uplift(recs: dict[str, Any]) -> Figure:
    """Each product's take-up rate when recommended and when not, side by side."""
    products = recs["products"]
    fig = Figure(figsize=(8, 1.5 + 0.32 * len(products)))
    ax = fig.add_subplot()
    y = np.arange(len(products))
    ax.barh(y - 0.2, [p["takeup_recommended"] or 0.0 for p in products], 0.4, color="#1565c0", label="recommended")
    ax.barh(y + 0.2, [p["takeup_not_recommended"] or 0.0 for p in products], 0.4, color="#9e9e9e",
            label="not recommended")
    ax.set_yticks(y, [p["product_id"] for p in products], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.legend(loc="lower right")
    ax.set_title("Take-up per product: recommended vs not recommended")
    ax.set_xlabel("Share of customers who took the product up")
    return fig


# --------------------------------------------------------------------------- HTML
def _default_html(default: dict[str, Any] | None) -> str:
    if default is None:
        return '<p class="note">No default label configured, or the scores carry no PD.</p>'
    m = default["metrics"] or {}
    summary = [("Customers with an outcome", f"{default['customers']:,}"),
               ("Mean predicted PD", pages.fmt(default["mean_pd"], ".2%")),
               ("Realised default rate", pages.fmt(default["default_rate"], ".2%")),
               ("AUC / Gini", f"{pages.fmt(m.get('auc'), '.3f')} / {pages.fmt(m.get('gini'), '.3f')}"),
               ("KS", pages.fmt(m.get("ks"), ".3f")), ("Brier", pages.fmt(m.get("brier"), ".4f"))]
    rows = []
    for b in default["bands"]:
        verdict = ("pass", "") if b["passed"] else ("fail", "alert") if b["tested"] else ("not tested", "note")
        rows.append([(b["band"], ""), (f"{b['customers']:,}", ""), (pages.fmt(b["mean_pd"], ".2%"), ""),
                     (pages.fmt(b["default_rate"], ".2%"), ""), (pages.fmt(b["p_value"], ".4f"), verdict[1]), verdict])
    return (pages.table(["Measure", "Value"], [[(k, ""), (v, "")] for k, v in summary])
            + pages.table(["Band", "Customers", "Mean PD", "Default rate", "Jeffreys p-value", "Test"], rows)
            + pages.img(pages.png(_plot_calibration(default)), "Calibration plot"))


def _recommendations_html(recs: dict[str, Any] | None) -> str:
    if recs is None:
        return '<p class="note">No product take-up label configured.</p>'
    k = recs["top_k"]
    summary = [("Scored customers with an outcome row", f"{recs['customers']:,}"),
               ("… who took up at least one product", f"{recs['customers_with_takeup']:,}"),
               (f"Hit rate@{k}", pages.fmt(recs[f"hit_rate@{k}"], ".1%")),
               (f"NDCG@{k}", pages.fmt(recs[f"ndcg@{k}"], ".3f"))]
    rows = [[(p["product_id"], ""), (f"{p['recommended']:,}", ""), (pages.fmt(p["takeup_recommended"], ".2%"), ""),
             (f"{p['not_recommended']:,}", ""), (pages.fmt(p["takeup_not_recommended"], ".2%"), ""),
             (pages.fmt(p["uplift"], "+.2%"), "")] for p in recs["products"]]
    return (pages.table(["Measure", "Value"], [[(a, ""), (b, "")] for a, b in summary])
            + pages.table(["Product", "Recommended", "Take-up", "Not recommended", "Take-up", "Uplift"], rows)
            + pages.img(pages.png(_plot_uplift(recs)), "Take-up per product"))


def _p(p: float) -> str:
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.4f}"


def _ab_html(ab: dict[str, Any] | None) -> str:
    if ab is None:
        return '<p class="note">No A/B test of recommendations ran on this date (nightly.challenger_share).</p>'
    rows = [[(arm, ""), (f"{a['customers']:,}", ""), (pages.fmt(a["took_up_recommended"], ","), ""),
             (pages.fmt(a["takeup_rate"], ".2%"), "")] for arm, a in ab["arms"].items()]
    t = ab["test"]
    verdict = ('<p class="note">Too few customers in an arm for a test.</p>' if t is None else
               f"<p>Challenger minus champion: <b>{t['difference']:+.2%}</b> (95% CI {t['ci_low']:+.2%} to "
               f"{t['ci_high']:+.2%}; two-proportion z-test {_p(t['p_value'])}).</p>")
    return (pages.table(["Arm", "Customers with an outcome", f"Took up a top-{ab['top_k']} product", "Rate"], rows)
            + verdict)


def _challenger_html(report: dict[str, Any]) -> str:
    ch = report.get("challenger")
    if ch is None:
        return '<p class="note">No challenger was scored on this date (nightly.challenger).</p>'
    k = report["recommendations"]["top_k"] if report["recommendations"] else None

    def figures(r: dict[str, Any]) -> list[str]:
        m = (r["default"] or {}).get("metrics") or {}
        recs = r["recommendations"] or {}
        return [pages.fmt(m.get("auc"), ".3f"), pages.fmt(m.get("ks"), ".3f"), pages.fmt(m.get("brier"), ".4f"),
                pages.fmt((r["default"] or {}).get("mean_pd"), ".2%"),
                ", ".join((r["default"] or {}).get("bands_failed") or []) or "none",
                pages.fmt(recs.get(f"hit_rate@{k}"), ".1%"), pages.fmt(recs.get(f"ndcg@{k}"), ".3f")]

    names = ["AUC", "KS", "Brier", "Mean predicted PD", "Bands failing the Jeffreys test", f"Hit rate@{k}",
             f"NDCG@{k}"]
    rows = [[(n, ""), (a, ""), (b, "")] for n, a, b in zip(names, figures(report), figures(ch))]
    rows.insert(0, [("Model", ""), (report["model"]["version"] or "n/a", ""), (ch["model"]["version"] or "n/a", "")])
    status = ch["status"]
    breaches = "; ".join(f"{b['metric']} = {b['value']:.3f} (threshold {b['threshold']:g})" for b in ch["breaches"])
    return (f'<p><span class="status" style="background:{STATUS_COLOURS[status]}">CHALLENGER {status.upper()}</span>'
            f"&nbsp;{html.escape(breaches) or 'no threshold crossed'}; AUC gain over the champion "
            f"{pages.fmt(ch['auc_gain'], '+.3f')}.</p>"
            + pages.table(["Measure", "Champion", "Challenger"], rows))


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained page: inline CSS, plots as data-URI PNGs, no external links."""
    c, t, status = report["coverage"], report["thresholds"], report["status"]
    coverage = [("Scored customers", f"{c['scored']:,}"),
                ("… with an outcome", f"{c['with_outcome']:,} ({pages.fmt(c['share_with_outcome'], '.1%')})"),
                ("… without an outcome", f"{c['without_outcome']:,}"),
                ("Outcome rows", f"{c['outcome_rows']:,}"),
                ("Outcomes without a score", f"{c['outcomes_without_score']:,}"),
                ("Outcome rows without an id", f"{c['outcome_rows_without_id']:,}"),
                ("Outcome rows left out: their id repeats", f"{c['outcome_rows_with_repeated_id']:,}")]
    breaches = (pages.table(["Metric", "Value", "Threshold"],
                            [[(b["metric"], ""), (pages.fmt(b["value"], ".3f"), "alert"),
                              (pages.fmt(b["threshold"], ".3f"), "")]
                        for b in report["breaches"]])
                if report["breaches"] else '<p class="note">No threshold crossed.</p>')
    date = html.escape(report["date"])
    models = html.escape(", ".join(report["model_version"]))
    auc = f"AUC &ge; {t['min_auc']:g}" if t["min_auc"] is not None else "AUC not checked"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nightscore back-test {date}</title><style>{pages.CSS}</style></head>
<body>
<h1>nightscore back-test: scores of {date}</h1>
<p><span class="status" style="background:{STATUS_COLOURS[status]}">{html.escape(status.upper())}</span>
&nbsp;model {models}; {len(report['breaches'])} threshold(s) crossed.</p>
<p class="note">Thresholds: {auc}; Jeffreys test ({html.escape(t['calibration_test'])},
&alpha; = {t['alpha']:g}) failing in at most {t['max_failed_band_share']:.0%} of the bands tested; outcome coverage
&ge; {t['min_coverage']:.0%}. Bands of fewer than {t['min_group_size']} customers are merged with a neighbour;
take-up rates over fewer are withheld.</p>
<h2>Breaches</h2>{breaches}
<h2>Coverage</h2>{pages.table(["Measure", "Value"], [[(k, ""), (v, "")] for k, v in coverage])}
<h2>Default</h2>{_default_html(report['default'])}
<h2>Recommendations</h2>{_recommendations_html(report['recommendations'])}
<h2>A/B test of recommendations</h2>{_ab_html(report.get('ab_test'))}
<h2>Champion vs challenger</h2>{_challenger_html(report)}
</body></html>
"""


# --------------------------------------------------------------------------- run
def _model_of(scores_uri: str, date: dt.date, cfg: Config) -> dict[str, Any]:
    """Which model produced a committed date, from its manifest (what promotion looks up)."""
    fs, root = storage.filesystem(scores_uri, cfg.storage.s3)
    m = partition.manifest(fs, root, date) or {}
    return {"uri": m.get("model_uri"), "version": m.get("model_version"),
            "manifest_sha256": m.get("model_manifest_sha256"), "scores_run_id": m.get("run_id")}


def challenger_section(champion: dict[str, Any], challenger_uri: str, outcomes: pa.Table, cfg: Config,
                       date: dt.date) -> dict[str, Any]:
    """The challenger's shadow scores of the same date on the same outcomes, with its own
    thresholds and the comparison one: its realised AUC at least the champion's plus
    ``backtest.challenger_min_auc_gain``."""
    scores = partition.read(challenger_uri, date, "scores", cfg.storage.s3)
    if not scores.column_names:
        scores = SCORES_SCHEMA.empty_table()
    report = build_report(scores, outcomes, cfg, date)
    auc = ((report["default"] or {}).get("metrics") or {}).get("auc")
    base = ((champion["default"] or {}).get("metrics") or {}).get("auc")
    gain = auc - base if auc is not None and base is not None else None
    breaches = list(report["breaches"])
    if gain is not None and gain < cfg.backtest.challenger_min_auc_gain:
        breaches.append({"metric": "auc_gain_over_champion", "value": gain,
                         "threshold": cfg.backtest.challenger_min_auc_gain})
    return pages.jsonable({"model": _model_of(challenger_uri, date, cfg), "coverage": report["coverage"],
                           "default": report["default"], "recommendations": report["recommendations"],
                           "auc_gain": gain, "breaches": breaches, "status": "fail" if breaches else "pass"})


def run(cfg: Config, scores_uri: str, outcomes_uri: str, date: dt.date, out_uri: str,
        challenger_uri: str | None = None) -> dict[str, Any]:
    """Back-test one committed date and write ``<out>/date=D/backtest.json`` and ``backtest.html``
    (the page first, the JSON last); with `challenger_uri`, the challenger's shadow scores of the
    date are tested beside the champion's. Returns the report with ``report_json`` and
    ``report_html`` added."""
    labels = cfg.schema.labels
    if not labels.default and not labels.products:
        raise ConfigError("schema.labels: set default and/or products: the back-test compares scores with them")
    scores = partition.read(scores_uri, date, "scores", cfg.storage.s3)  # committed rows only
    if not scores.column_names:  # a committed date whose every row was quarantined
        scores = SCORES_SCHEMA.empty_table()
    outcomes = read_outcomes(outcomes_uri, date, cfg)
    report = {**build_report(scores, outcomes, cfg, date), "model": _model_of(scores_uri, date, cfg)}
    if challenger_uri:
        report["challenger"] = challenger_section(report, challenger_uri, outcomes, cfg, date)
    fs, root = storage.filesystem(out_uri, cfg.storage.s3)
    folder = partition.date_dir(root, date)
    storage.write_bytes_atomic(render_html(report).encode(), fs, storage.join(folder, HTML_NAME))
    storage.write_json_atomic(report, fs, storage.join(folder, JSON_NAME))
    return {**report, "report_json": storage.to_uri(fs, storage.join(folder, JSON_NAME)),
            "report_html": storage.to_uri(fs, storage.join(folder, HTML_NAME))}
