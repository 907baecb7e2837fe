"""Nightly monitoring: is tonight's population, and how we scored it, still like the one the model learned?

The model directory carries the validation population as binned distributions, never its
rows: per feature the decile cuts and counts (numeric) or the category counts, the PD and
credit-score distributions, and a PD histogram for the plot. Any group smaller than
``monitoring.min_group_size`` is merged with a neighbour (or into "other") before it is
stored, so a model directory can travel between teams without identifying anyone. Each
night is compared against it: score and feature PSI, band shares, quarantine rate,
recommendation coverage and group fairness (small groups suppressed). Config thresholds
turn drift into warn/alert, which the nightly job turns into its exit status. The report is
JSON for machines plus one self-contained HTML page (plots embedded as PNG) for people; it
holds aggregates only, never a customer's row.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from . import pages
from .challenger import html_section
from .config import MonitoringSpec, SchemaSpec, ScorecardSpec, SensitiveSpec
from .scorecard import pd_to_score

REFERENCE_FORMAT = 1  # layout of reference.json; a reader refuses any other
REFERENCE_KINDS = ("numeric", "categorical", "boolean")  # kinds PSI can bin; list and text are skipped
PSI_BINS = 10  # numeric features, PD and credit score are cut at the reference's deciles
MAX_CATEGORIES = 50  # categories kept per feature in the reference; the rest share "other"
PD_PLOT_EDGES = np.geomspace(1e-5, 1.0, 101)  # the PD histogram's grid: 20 bins per decade
SCALING_KEYS = ("base_score", "base_odds", "pdo", "min_score", "max_score")  # PD -> score
PD_COLUMN = "pd_12m"
PSI_EPS = 1e-4  # share given to an empty bin so its log term stays finite
MISSING = "missing"
OUT_OF_RANGE = "out of range"
FOUR_FIFTHS = 0.8  # fairness ratios below this are highlighted (the four-fifths rule of thumb)

ArrayLike = np.ndarray | pa.Array | pa.ChunkedArray | Sequence[Any]
Distribution = dict[str, Any]  # one variable's binned reference, as stored in reference.json


# --------------------------------------------------------------------------- distributions
def _floats(values: ArrayLike) -> np.ndarray:
    """float64 values with NaN for nulls, from numpy, a sequence or Arrow."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def _strings(values: ArrayLike) -> pa.Array | pa.ChunkedArray:
    """Values as Arrow strings (booleans read 'true'/'false'), nulls kept, so JSON keys can name them."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    return pc.cast(values, pa.string())


def merge_small(counts: np.ndarray, k: int) -> np.ndarray:
    """First bin of each group after merging adjacent bins until no non-empty bin holds fewer than k rows.

    The smallest such bin joins its smaller non-empty neighbour, with any empty bins between
    them; empty bins stay apart (a zero describes no one). A bin count is a handful of
    decile or histogram bins, so the loop is short.
    """
    starts, sizes = list(range(len(counts))), [int(c) for c in counts]
    while True:
        filled = [i for i, s in enumerate(sizes) if s > 0]
        small = [i for i in filled if sizes[i] < k]
        if not small or len(filled) < 2:
            return np.array(starts, dtype=np.int64)
        i = min(small, key=sizes.__getitem__)
        at = filled.index(i)
        j = min((filled[a] for a in (at - 1, at + 1) if 0 <= a < len(filled)), key=sizes.__getitem__)
        lo, hi = min(i, j), max(i, j)
        sizes[lo:hi + 1] = [sum(sizes[lo:hi + 1])]
        starts[lo:hi + 1] = [starts[lo]]


def numeric_distribution(values: ArrayLike, min_group_size: int, extra_cuts: Sequence[float] = ()) -> Distribution:
    """Decile cuts (plus ``extra_cuts``) of the finite values, the count in each bin, and the null count.

    Bins are (cut[i-1], cut[i]], open-ended at both ends, so a value equal to a cut falls in
    the bin below it and a point mass (e.g. zero late payments) forms its own bin; duplicate
    cuts collapse. Bins under ``min_group_size`` are merged (dropping the cut between them),
    a null group under it is dropped, and fewer finite values than that leave no bins at all.
    """
    x = _floats(values)
    ok = np.isfinite(x)
    n_nulls = int((~ok).sum())
    nulls = n_nulls if n_nulls >= min_group_size else 0
    if ok.sum() < min_group_size:
        return {"kind": "numeric", "cuts": [], "counts": [0], "nulls": nulls}
    cuts = np.unique(np.concatenate([np.quantile(x[ok], np.linspace(0, 1, PSI_BINS + 1)[1:-1]),
                                     np.asarray(extra_cuts, dtype=np.float64)]))
    counts = np.bincount(np.searchsorted(cuts, x[ok], side="left"), minlength=len(cuts) + 1)
    starts = merge_small(counts, min_group_size)
    return {"kind": "numeric", "cuts": cuts[starts[1:] - 1].tolist(),
            "counts": np.add.reduceat(counts, starts).tolist(), "nulls": nulls}


def categorical_distribution(values: ArrayLike, min_group_size: int,
                             max_categories: int = MAX_CATEGORIES) -> Distribution:
    """Count per category (most frequent first), an "other" count and the null count.

    Categories under ``min_group_size`` and beyond the ``max_categories`` most frequent go
    to "other"; while "other" is non-empty but under ``min_group_size`` the smallest kept
    category joins it too. A null group under it is dropped, and so is an "other" that stays
    under it (every category together being that small).
    """
    arr = _strings(values)
    n_nulls = arr.null_count
    vc = pc.value_counts(pc.drop_null(arr))
    vc = vc.take(pc.sort_indices(vc, sort_keys=[("counts", "descending"), ("values", "ascending")]))
    labels, counts = vc.field("values").to_pylist(), vc.field("counts").to_numpy(zero_copy_only=False)
    kept = min(max_categories, int((counts >= min_group_size).sum()))  # a prefix: most frequent first
    while kept and 0 < counts[kept:].sum() < min_group_size:
        kept -= 1
    other = int(counts[kept:].sum())
    return {"kind": "categorical", "categories": dict(zip(labels[:kept], counts[:kept].tolist())),
            "other": other if other >= min_group_size else 0,
            "nulls": n_nulls if n_nulls >= min_group_size else 0}


def histogram(values: ArrayLike, edges: np.ndarray, min_group_size: int) -> Distribution:
    """Counts on fixed ``edges`` (values outside clipped into the end bins), small bins merged.

    The edges are a fixed grid, not quantiles, so they carry nothing about any customer.
    """
    x = _floats(values)
    x = x[np.isfinite(x)]
    counts = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges)[0]
    if counts.sum() < min_group_size:
        return {"edges": [float(edges[0]), float(edges[-1])], "counts": [0]}
    starts = merge_small(counts, min_group_size)
    return {"edges": np.append(edges[starts], edges[-1]).tolist(), "counts": np.add.reduceat(counts, starts).tolist()}


def _scaling(scorecard: ScorecardSpec) -> dict[str, float]:
    return {k: getattr(scorecard, k) for k in SCALING_KEYS}


def build_reference(table: pa.Table, schema: SchemaSpec, pd: np.ndarray, scorecard: ScorecardSpec,
                    min_group_size: int) -> dict[str, Any]:
    """The model's ``reference.json``: the validation population as binned distributions.

    ``features``: one distribution per binnable schema feature (numeric, categorical,
    boolean; booleans as categories 'true'/'false'). ``pd``: the calibrated PDs' deciles and
    mean; ``pd_histogram``: PDs on a fixed log grid for the report's plot; ``credit_score``:
    the scores' deciles plus the scorecard's band cut-offs (so band shares can be read off),
    with the scaling that turned PDs into scores. Only schema features are read, and the
    schema forbids a feature from being the id or a PII column. Every non-empty group holds
    at least ``min_group_size`` rows.
    """
    pd = np.asarray(pd, dtype=np.float64)
    if pd.shape != (table.num_rows,):
        raise ValueError(f"pd has shape {pd.shape}; expected ({table.num_rows},) to match the table")
    names = [f.name for f in schema.features if f.kind in REFERENCE_KINDS]
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"reference table lacks feature columns {missing}")
    k = min_group_size
    features = {f.name: numeric_distribution(table.column(f.name), k) if f.kind == "numeric"
                else categorical_distribution(table.column(f.name), k)
                for f in schema.features if f.name in names}
    finite = pd[np.isfinite(pd)]
    band_cuts = [b.min_score - 0.5 for b in scorecard.bands[:-1]]  # integer scores: a cut just below each minimum
    return {
        "format": REFERENCE_FORMAT,
        "rows": table.num_rows,
        "min_group_size": k,
        "features": features,
        "pd": {**numeric_distribution(pd, k), "mean": _mean(finite) if len(finite) >= k else None},
        "pd_histogram": histogram(finite, PD_PLOT_EDGES, k),
        "credit_score": {**numeric_distribution(pd_to_score(finite, scorecard), k, band_cuts),
                         "scaling": _scaling(scorecard)},
    }


# --------------------------------------------------------------------------- PSI
def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """PSI of two count vectors over the same bins; NaN when either side is empty."""
    n_ref, n_cur = ref_counts.sum(), cur_counts.sum()
    if n_ref == 0 or n_cur == 0:
        return float("nan")
    p = np.maximum(ref_counts / n_ref, PSI_EPS)
    q = np.maximum(cur_counts / n_cur, PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(reference: Distribution, current: ArrayLike) -> float:
    """PSI of current values over a reference distribution's bins, nulls (and non-finite numbers) a bin of their own.

    Numeric bins are open-ended, so current values beyond the reference range count; a
    category the reference does not list (never seen, or merged as rare) counts as "other".
    """
    if reference["kind"] == "numeric":
        x = _floats(current)
        ok = np.isfinite(x)
        cuts = np.asarray(reference["cuts"], dtype=np.float64)
        cur = np.bincount(np.searchsorted(cuts, x[ok], side="left"), minlength=len(cuts) + 1)
        ref = reference["counts"]
        nulls = (~ok).sum()
    else:
        arr = _strings(current)
        labels = pa.array(list(reference["categories"]), pa.string())
        at = pc.fill_null(pc.index_in(arr, value_set=labels), len(labels)).to_numpy(zero_copy_only=False)
        nulls = arr.null_count
        cur = np.bincount(at, minlength=len(labels) + 1)
        cur[-1] -= nulls  # index_in gives nulls no index either: they are not "other"
        ref = [*reference["categories"].values(), reference["other"]]
    return _psi(np.append(ref, reference["nulls"]).astype(np.float64), np.append(cur, nulls).astype(np.float64))


def feature_psi(reference: dict[str, Any], current: pa.Table, schema: SchemaSpec) -> dict[str, float]:
    """PSI per schema feature held in the reference, in schema order."""
    out: dict[str, float] = {}
    for f in schema.features:
        if f.name not in reference["features"]:
            continue
        if f.name not in current.column_names:
            raise ValueError(f"current population lacks feature column {f.name!r}")
        out[f.name] = psi(reference["features"][f.name], current.column(f.name))
    return out


def reference_band_shares(reference: dict[str, Any], scorecard: ScorecardSpec) -> dict[str, float | None] | None:
    """The reference's share of each band under ``scorecard``, read off its credit-score bins.

    None for a band whose edge fell inside a merged bin (a neighbouring band under
    min_group_size), and None as a whole when the scorecard's PD-to-score scaling is not
    the one the reference was scored with.
    """
    dist = reference["credit_score"]
    counts = np.asarray(dist["counts"], dtype=np.float64)
    if dist["scaling"] != _scaling(scorecard) or counts.sum() == 0:
        return None
    cuts = np.asarray(dist["cuts"], dtype=np.float64)
    lo, hi = np.append(-np.inf, cuts), np.append(cuts, np.inf)  # bin i holds (lo[i], hi[i]]
    mins = [b.min_score - 0.5 for b in scorecard.bands[:-1]] + [-np.inf]
    maxs = [np.inf] + mins[:-1]
    shares: dict[str, float | None] = {}
    for band, b_lo, b_hi in zip(scorecard.bands, mins, maxs):
        inside = (lo >= b_lo) & (hi <= b_hi)
        clear = inside | (hi <= b_lo) | (lo >= b_hi) | (counts == 0)
        shares[band.name] = float(counts[inside].sum() / counts.sum()) if clear.all() else None
    return shares


# --------------------------------------------------------------------------- report
def _mean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _score_summary(score: np.ndarray) -> dict[str, float]:
    if not len(score):
        return {"mean": float("nan"), "p5": float("nan"), "p50": float("nan"), "p95": float("nan")}
    p5, p50, p95 = np.percentile(score, [5, 50, 95])
    return {"mean": float(score.mean()), "p5": float(p5), "p50": float(p50), "p95": float(p95)}


def _shares(bands: np.ndarray, band_names: list[str]) -> dict[str, float]:
    """Share of rows per band, every band listed (0 when empty)."""
    n = len(bands)
    return {b: float((bands == b).sum() / n) if n else 0.0 for b in band_names}


def _interval_label(lo: float, hi: float, integer: bool) -> str:
    """Readable name of the half-open group [lo, hi): '25–34' for whole numbers, else '[2.5, 3.5)'."""
    if integer and float(lo).is_integer() and float(hi).is_integer():
        lo_i, hi_i = int(lo), int(hi) - 1
        return f"{lo_i:,}" if lo_i == hi_i else f"{lo_i:,}–{hi_i:,}"
    return f"[{lo:,g}, {hi:,g})"


def _groups(s: SensitiveSpec, column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Group code per row and the group names: bins in order (+ out of range), or sorted categories; then missing."""
    if s.bins is not None:
        x = _floats(column)
        edges = np.asarray(s.bins, dtype=np.float64)
        integer = pa.types.is_integer(column.type)
        names = [_interval_label(lo, hi, integer) for lo, hi in zip(edges[:-1], edges[1:])]
        idx = np.searchsorted(edges, x, side="right") - 1
        codes = np.where(np.isnan(x), len(names) + 1, np.where((idx < 0) | (idx >= len(names)), len(names), idx))
        return codes, names + [OUT_OF_RANGE, MISSING]
    labels = pc.cast(column, pa.string()).to_numpy(zero_copy_only=False)
    null = pc.is_null(column).to_numpy(zero_copy_only=False)
    names, codes = np.unique(labels[~null].astype(str), return_inverse=True)
    out = np.full(len(labels), len(names), dtype=np.int64)
    out[~null] = codes
    return out, [str(n) for n in names] + [MISSING]


def _suppressed(n: np.ndarray, k: int) -> np.ndarray:
    """Groups (by size ``n``) not to publish: those with 1..k-1 customers, and, when those add
    up to fewer than k, the next smallest groups too, so the published totals cannot give a
    small group's outcomes away by subtraction."""
    hidden = (n > 0) & (n < k)
    for g in np.argsort(n, kind="stable"):
        if not 0 < n[hidden].sum() < k:
            break
        hidden[g] |= n[g] > 0
    return hidden


def _fairness(s: SensitiveSpec, column: pa.ChunkedArray, score: np.ndarray, bands: np.ndarray,
              has_rec: np.ndarray, band_names: list[str], min_group_size: int) -> dict[str, Any]:
    """Per-group outcomes and their ratio to the most favoured group (highest mean score / rec. rate).

    A group under ``min_group_size`` (and any group that would give it away) is listed with
    its outcomes withheld and the reason in ``suppressed``; it is never the favoured group.
    """
    codes, names = _groups(s, column)
    k = len(names)
    n = np.bincount(codes, minlength=k)
    score_mean = np.bincount(codes, weights=score, minlength=k) / np.maximum(n, 1)
    rec_rate = np.bincount(codes, weights=has_rec.astype(np.float64), minlength=k) / np.maximum(n, 1)
    band_counts = {b: np.bincount(codes, weights=(bands == b).astype(np.float64), minlength=k) for b in band_names}
    hidden = _suppressed(n, min_group_size)
    shown = [g for g in range(k) if n[g] > 0 and not hidden[g]]  # empty groups have no outcome to compare
    best_score = max((score_mean[g] for g in shown), default=0.0)
    best_rec = max((rec_rate[g] for g in shown), default=0.0)
    withheld = dict.fromkeys(("n", "share", "mean_score", "score_ratio", "recommendation_rate",
                              "recommendation_ratio", "band_shares"))
    groups: dict[str, dict[str, Any]] = {}
    for g in np.flatnonzero(n):
        if hidden[g]:
            groups[names[g]] = {**withheld, "suppressed": f"n < {min_group_size}" if n[g] < min_group_size
                                else f"would reveal a group with n < {min_group_size}"}
            continue
        groups[names[g]] = {
            "n": int(n[g]),
            "share": float(n[g] / len(codes)),
            "mean_score": float(score_mean[g]),
            "score_ratio": float(score_mean[g] / best_score) if best_score > 0 else float("nan"),
            "recommendation_rate": float(rec_rate[g]),
            "recommendation_ratio": float(rec_rate[g] / best_rec) if best_rec > 0 else float("nan"),
            "band_shares": {b: float(band_counts[b][g] / n[g]) for b in band_names},
            "suppressed": None,
        }
    favoured = {
        "score": names[max(shown, key=lambda g: score_mean[g])] if shown else None,
        "recommendation_rate": names[max(shown, key=lambda g: rec_rate[g])] if shown else None,
    }
    return {"label": s.label or s.column, "groups": groups, "favoured": favoured}


def _alerts(score_psi: float, feature_psi_values: dict[str, float], quarantine_rate: float,
            spec: MonitoringSpec) -> list[dict[str, Any]]:
    """Every crossed threshold, worst level per metric; NaN (nothing to compare) never alerts."""
    alerts = []
    for metric, value in [("score_psi", score_psi), *((f"feature_psi.{k}", v) for k, v in feature_psi_values.items())]:
        if value > spec.psi_alert:
            alerts.append({"metric": metric, "value": value, "threshold": spec.psi_alert, "level": "alert"})
        elif value > spec.psi_warn:
            alerts.append({"metric": metric, "value": value, "threshold": spec.psi_warn, "level": "warn"})
    if quarantine_rate > spec.quarantine_alert:
        alerts.append({"metric": "quarantine_rate", "value": quarantine_rate, "threshold": spec.quarantine_alert,
                       "level": "alert"})
    return alerts


def _status(alerts: list[dict[str, Any]]) -> str:
    levels = {a["level"] for a in alerts}
    return "alert" if "alert" in levels else "warn" if "warn" in levels else "ok"


def with_alerts(report: dict[str, Any], alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """The report with alerts raised beside it (back-tests, the challenger run) added and its
    status, today's trend point's too, recomputed."""
    out = {**report, "alerts": [*report["alerts"], *pages.jsonable(alerts)]}
    out["status"] = _status(out["alerts"])
    out["trend"] = [*report["trend"][:-1], {**report["trend"][-1], "status": out["status"]}]
    return out


TREND_KEYS = ("band_shares", "quarantine_rate", "score_psi", "mean_pd", "status")


def _trend(date: str, current: dict[str, Any], history: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Compact points for the trend plots: earlier dates only (a rerun replaces its date), then today; last n.

    Points, not whole reports, so each report stays small instead of nesting its predecessors.
    """
    earlier = {h["date"]: h for h in history if isinstance(h.get("date"), str) and h["date"] < date}
    points = [{"date": d, **{k: earlier[d].get(k) for k in TREND_KEYS}} for d in sorted(earlier)]
    points.append({"date": date, **{k: current[k] for k in TREND_KEYS}})
    return points[-n:]


def build_report(*, date: str, scores: pa.Table, quarantine_rows: int, input_rows: int, features: pa.Table,
                 reference: dict[str, Any], schema: SchemaSpec, spec: MonitoringSpec, band_names: list[str],
                 history: list[dict[str, Any]], scorecard: ScorecardSpec | None = None) -> dict[str, Any]:
    """One date's monitoring report as a JSON-ready dict (undefined values are None).

    ``scores`` needs pd_12m, credit_score, risk_band and recommendations; ``features`` holds
    the same rows, in the same order, with the feature and sensitive columns (PII removed).
    ``reference`` is the model's reference.json (see build_reference). ``history`` holds
    earlier reports, for the trend. With ``scorecard``, the reference's credit-score bins are
    banded with today's cut-offs, so band shares can be compared with the reference.
    """
    scored_rows = scores.num_rows
    if input_rows != scored_rows + quarantine_rows:
        raise ValueError(f"input_rows {input_rows} != scored {scored_rows} + quarantined {quarantine_rows}")
    if features.num_rows != scored_rows:
        raise ValueError(f"features has {features.num_rows} rows but scores has {scored_rows}")
    absent = [s.column for s in spec.sensitive if s.column not in features.column_names]
    if absent:
        raise ValueError(f"monitoring.sensitive columns {absent} are not in the scored rows' features")

    pd_cur = _floats(scores.column(PD_COLUMN))
    score = _floats(scores.column("credit_score"))
    bands = pc.cast(scores.column("risk_band"), pa.string()).to_numpy(zero_copy_only=False)
    n_recs = pc.fill_null(pc.list_value_length(scores.column("recommendations")), 0).to_numpy(zero_copy_only=False)
    has_rec = n_recs > 0
    quarantine_rate = quarantine_rows / input_rows if input_rows else 0.0
    score_psi = psi(reference["pd"], pd_cur)
    feat_psi = feature_psi(reference, features, schema)
    alerts = _alerts(score_psi, feat_psi, quarantine_rate, spec)

    report: dict[str, Any] = {
        "date": date,
        "status": _status(alerts),
        "input_rows": input_rows,
        "scored_rows": scored_rows,
        "quarantined_rows": quarantine_rows,
        "quarantine_rate": quarantine_rate,
        "mean_pd": _mean(pd_cur),
        "reference_mean_pd": reference["pd"]["mean"],
        "reference_rows": reference["rows"],
        "score": _score_summary(score),
        "band_shares": _shares(bands, band_names),
        "reference_band_shares": reference_band_shares(reference, scorecard) if scorecard else None,
        "score_psi": score_psi,
        "feature_psi": feat_psi,
        "recommendation_coverage": _mean(has_rec),
        "mean_recommendations": _mean(n_recs),
        "fairness": {s.column: _fairness(s, features.column(s.column), score, bands, has_rec, band_names,
                                         spec.min_group_size)
                     for s in spec.sensitive},
        "thresholds": {"psi_warn": spec.psi_warn, "psi_alert": spec.psi_alert,
                       "quarantine_alert": spec.quarantine_alert, "min_group_size": spec.min_group_size},
        "alerts": alerts,
    }
    report["trend"] = _trend(date, report, history, spec.history)
    return pages.jsonable(report)


# --------------------------------------------------------------------------- plots
def _band_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn_r"]
    return [cmap(0.1 + 0.8 * i / max(n - 1, 1)) for i in range(n)]


def _plot_pd(ref_hist: Distribution, cur_pd: np.ndarray, report: dict[str, Any]) -> Figure:
    """PD histograms on a log axis (PDs are skewed towards small values): the reference on its
    stored bins, today's on the full grid.

    The reference's bins are that grid with small bins merged, so heights are shares per
    decade of PD: a merged, wider bin is not drawn taller for being wide.
    """
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    c = cur_pd[np.isfinite(cur_pd)]
    sides = [(np.asarray(ref_hist["edges"], dtype=np.float64), np.asarray(ref_hist["counts"], dtype=np.float64),
              {"fill": True, "color": "#9e9e9e", "alpha": 0.6, "label": f"Reference (n={sum(ref_hist['counts']):,})"}),
             (PD_PLOT_EDGES, np.histogram(np.clip(c, PD_PLOT_EDGES[0], PD_PLOT_EDGES[-1]), bins=PD_PLOT_EDGES)[0],
              {"linewidth": 2, "color": "#1565c0", "label": f"{report['date']} (n={len(c):,})"})]
    spans = [(edges[i[0]], edges[i[-1] + 1]) for edges, counts, _ in sides if len(i := np.flatnonzero(counts))]
    if spans:
        for edges, counts, kwargs in sides:
            if counts.sum():
                ax.stairs(counts / counts.sum() / np.diff(np.log10(edges)), edges, **kwargs)
        ax.set_xscale("log")
        ax.set_xlim(min(lo for lo, _ in spans), max(hi for _, hi in spans))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
        ax.legend()
    else:
        pages.no_data(ax)
    psi = report["score_psi"]
    ax.set_title(f"12-month PD distribution: current vs reference (score PSI {pages.fmt(psi, '.3f')})")
    ax.set_xlabel("12-month probability of default (log scale)")
    ax.set_ylabel("Share of customers per decade of PD")
    return fig


def _plot_psi(report: dict[str, Any]) -> Figure:
    """Horizontal PSI bars, worst first, coloured by level, with the warn/alert thresholds."""
    t = report["thresholds"]
    items = [("Score (PD)", report["score_psi"])] + sorted(
        ((k, v) for k, v in report["feature_psi"].items()), key=lambda kv: -(kv[1] or 0.0))
    fig = Figure(figsize=(8, 1.5 + 0.28 * len(items)))
    ax = fig.add_subplot()
    values = [v or 0.0 for _, v in items]
    colours = [pages.LEVEL_COLOURS["alert"] if v > t["psi_alert"] else pages.LEVEL_COLOURS["warn"] if v > t["psi_warn"]
               else pages.LEVEL_COLOURS["ok"] for v in values]
    y = np.arange(len(items))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, [k for k, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(t["psi_warn"], color=pages.LEVEL_COLOURS["warn"], linestyle="--", label=f"warn ({t['psi_warn']:g})")
    ax.axvline(t["psi_alert"], color=pages.LEVEL_COLOURS["alert"], linestyle="--", label=f"alert ({t['psi_alert']:g})")
    ax.set_xlim(0, max(max(values), t["psi_alert"]) * 1.15)
    ax.legend(loc="lower right")
    ax.set_title("Population stability index vs reference")
    ax.set_xlabel("PSI")
    ax.set_ylabel("Feature")
    return fig


def _plot_bands(report: dict[str, Any]) -> Figure:
    """Band shares today, beside the reference population's when known ('merged' where the
    reference cannot tell a band from a neighbour under min_group_size)."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    names = list(report["band_shares"])
    x = np.arange(len(names))
    ref = report["reference_band_shares"]
    width = 0.4 if ref else 0.6
    if ref:
        ref_bars = ax.bar(x - width / 2, [ref[b] or 0.0 for b in names], width, color="#9e9e9e", label="Reference")
        ax.bar_label(ref_bars, labels=["" if ref[b] is not None else "merged" for b in names], fontsize=8)
    cur = ax.bar(x + (width / 2 if ref else 0), [report["band_shares"][b] for b in names], width, color="#1565c0",
                 label=report["date"])
    ax.bar_label(cur, labels=[f"{report['band_shares'][b]:.1%}" for b in names], fontsize=8)
    ax.set_xticks(x, names)
    ax.legend()
    ax.set_title("Risk band shares" + (": current vs reference" if ref else ""))
    ax.set_xlabel("Risk band (best first)")
    ax.set_ylabel("Share of scored customers")
    return fig


def _plot_trend(report: dict[str, Any]) -> Figure:
    """Band mix, score PSI and quarantine rate over the last dates, one panel each."""
    points, t = report["trend"], report["thresholds"]
    names = list(report["band_shares"])
    x = np.arange(len(points))
    fig = Figure(figsize=(9, 9))
    ax_bands, ax_psi, ax_q = fig.subplots(3, 1, sharex=True)
    bottom = np.zeros(len(points))
    for band, colour in zip(names, _band_colours(len(names))):
        shares = np.array([(p.get("band_shares") or {}).get(band) or 0.0 for p in points])
        ax_bands.bar(x, shares, bottom=bottom, color=colour, label=band, width=0.8)
        bottom += shares
    ax_bands.set_ylim(0, 1)
    ax_bands.legend(title="Band", loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_bands.set_title("Risk band shares by date")
    ax_bands.set_ylabel("Share of scored customers")

    psi = np.array([p.get("score_psi") if p.get("score_psi") is not None else np.nan for p in points], dtype=float)
    ax_psi.plot(x, psi, marker="o", color="#1565c0", label="Score PSI")
    ax_psi.axhline(t["psi_warn"], color=pages.LEVEL_COLOURS["warn"], linestyle="--", label=f"warn ({t['psi_warn']:g})")
    ax_psi.axhline(t["psi_alert"], color=pages.LEVEL_COLOURS["alert"], linestyle="--",
                   label=f"alert ({t['psi_alert']:g})")
    ax_psi.set_ylim(0, max(np.nanmax(psi, initial=0.0), t["psi_alert"]) * 1.2)
    ax_psi.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_psi.set_title("Score PSI vs reference by date")
    ax_psi.set_ylabel("PSI")

    rate = np.array([p.get("quarantine_rate") if p.get("quarantine_rate") is not None else np.nan for p in points],
                    dtype=float)
    ax_q.plot(x, rate * 100, marker="o", color="#6a1b9a", label="Quarantine rate")
    ax_q.axhline(t["quarantine_alert"] * 100, color=pages.LEVEL_COLOURS["alert"], linestyle="--",
                 label=f"alert ({t['quarantine_alert']:.1%})")
    ax_q.set_ylim(0, max(np.nanmax(rate, initial=0.0), t["quarantine_alert"]) * 120)
    ax_q.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_q.set_title("Quarantined input rows by date")
    ax_q.set_ylabel("Quarantined (% of input rows)")
    ax_q.set_xlabel("Snapshot date")
    step = max(1, len(points) // 15)  # keep date labels legible over a long history
    ax_q.set_xticks(x[::step], [p["date"] for p in points][::step], rotation=45, ha="right", fontsize=8)
    return fig


def _plot_outcomes(points: list[dict[str, Any]]) -> Figure:
    """Back-tested dates: realised AUC (champion, and challenger where one was scored), and mean
    predicted PD against the realised default rate."""
    x = np.arange(len(points))
    fig = Figure(figsize=(9, 6))
    ax_auc, ax_cal = fig.subplots(2, 1, sharex=True)

    def series(key: str) -> np.ndarray:
        return np.array([p.get(key) if p.get(key) is not None else np.nan for p in points], dtype=float)

    ax_auc.plot(x, series("auc"), marker="o", color="#1565c0", label="champion")
    if np.isfinite(series("challenger_auc")).any():
        ax_auc.plot(x, series("challenger_auc"), marker="s", color="#ef8f00", label="challenger")
    ax_auc.set_ylim(0.5, 1.0)
    ax_auc.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_auc.set_title("Realised default AUC by scored date")
    ax_auc.set_ylabel("AUC")
    ax_cal.plot(x, series("mean_pd") * 100, marker="o", color="#1565c0", label="mean predicted PD")
    ax_cal.plot(x, series("default_rate") * 100, marker="o", color="#c62828", label="realised default rate")
    ax_cal.set_ylim(bottom=0)
    ax_cal.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_cal.set_title("Calibration by scored date")
    ax_cal.set_ylabel("% of customers")
    ax_cal.set_xlabel("Snapshot date scored")
    step = max(1, len(points) // 15)
    ax_cal.set_xticks(x[::step], [p["date"] for p in points][::step], rotation=45, ha="right", fontsize=8)
    return fig


def _model_html(report: dict[str, Any]) -> str:
    m = report.get("model_in_force")
    if not m:
        return ""
    since = (f", approved {m['since']} by {m['by']}: {m['why']}" if m.get("since")
             else " (configured directly, not through the approved-model pointer)" if "manifest_sha256" not in m
             else " (no promotion on record)")
    ab = report.get("ab_test")
    test = (f" A/B test of recommendations: {ab['rows']['challenger']:,} customers ({ab['share']:.0%} share, salt "
            f"{ab['salt']}) got the challenger's." if ab else "")
    return f'<p class="note">Model in force: {html.escape(str(m["model"]) + since)}.{html.escape(test)}</p>'


def _outcomes_html(report: dict[str, Any]) -> str:
    points = report.get("outcomes")
    if not points:
        return '<p class="note">No back-test yet: outcomes land months after a date is scored (nightly.outcomes).</p>'
    return pages.img(pages.png(_plot_outcomes(points)), "Realised AUC and calibration by scored date")


# --------------------------------------------------------------------------- HTML
def _alert_format(alert: dict[str, Any]) -> str:
    return ".2%" if alert["metric"] == "quarantine_rate" else ".3f"


def _ratio_class(ratio: float | None) -> str:
    return "warn" if ratio is not None and ratio < FOUR_FIFTHS else ""


def _fairness_html(report: dict[str, Any]) -> str:
    if not report["fairness"]:
        return '<p class="note">No sensitive attributes configured (monitoring.sensitive).</p>'
    k = report["thresholds"]["min_group_size"]
    parts = [f'<p class="note">Ratios compare each group with the most favoured group (ratio 1); ratios below '
             f'{FOUR_FIFTHS:g} (the four-fifths rule of thumb) are highlighted. Groups of fewer than {k} customers '
             f'are suppressed, with the next smallest group where the other figures would give them away.</p>']
    bands = list(report["band_shares"])
    for attr in report["fairness"].values():
        rows = []
        for name, g in attr["groups"].items():
            if g["suppressed"]:
                rows.append([(name, ""), (f"suppressed ({g['suppressed']})", "note")] + [("", "")] * (5 + len(bands)))
                continue
            rows.append([(name, ""), (f"{g['n']:,}", ""), (pages.fmt(g["share"], ".1%"), ""),
                         (pages.fmt(g["mean_score"], ".1f"), ""),
                         (pages.fmt(g["score_ratio"], ".3f"), _ratio_class(g["score_ratio"])),
                         (pages.fmt(g["recommendation_rate"], ".1%"), ""),
                         (pages.fmt(g["recommendation_ratio"], ".3f"), _ratio_class(g["recommendation_ratio"]))]
                        + [(pages.fmt(g["band_shares"][b], ".1%"), "") for b in bands])
        parts.append(f"<h3>{html.escape(attr['label'])}</h3>")
        parts.append(pages.table(["Group", "Customers", "Share", "Mean score", "Score ratio", "Recommended",
                             "Rec. ratio"] + [f"Band {b}" for b in bands], rows))
    return "".join(parts)


def challenger_html(report: dict[str, Any]) -> str:
    ch = report.get("challenger")
    return html_section(None if ch is None or "error" in ch else ch, (ch or {}).get("error"))


def render_html(report: dict[str, Any], reference: dict[str, Any], scores_pd: ArrayLike) -> str:
    """The report as one self-contained page: inline CSS, plots as data-URI PNGs, no external links."""
    status = report["status"]
    s = report["score"]
    summary = [
        ("Input rows", f"{report['input_rows']:,}"),
        ("Scored rows", f"{report['scored_rows']:,}"),
        ("Quarantined rows", f"{report['quarantined_rows']:,} ({report['quarantine_rate']:.2%})"),
        ("Mean PD (reference)",
         f"{pages.fmt(report['mean_pd'], '.2%')} ({pages.fmt(report['reference_mean_pd'], '.2%')})"),
        ("Credit score mean / p5 / p50 / p95",
         " / ".join(pages.fmt(s[k], ".0f") for k in ("mean", "p5", "p50", "p95"))),
        ("Score PSI", pages.fmt(report["score_psi"], ".3f")),
        ("Customers with a recommendation", pages.fmt(report["recommendation_coverage"], ".1%")),
        ("Recommendations per customer", pages.fmt(report["mean_recommendations"], ".2f")),
    ]
    alert_rows = [[(a["metric"], ""), (pages.fmt(a["value"], _alert_format(a)), a["level"]),
                   (pages.fmt(a["threshold"], _alert_format(a)), ""), (a["level"], a["level"])]
                  for a in report["alerts"]]
    alerts = (pages.table(["Metric", "Value", "Threshold", "Level"], alert_rows) if alert_rows
              else '<p class="note">No threshold crossed.</p>')
    plots = [
        pages.img(pages.png(_plot_pd(reference["pd_histogram"], _floats(scores_pd), report)), "PD histogram"),
        pages.img(pages.png(_plot_psi(report)), "PSI per feature"),
        pages.img(pages.png(_plot_bands(report)), "Risk band shares"),
        pages.img(pages.png(_plot_trend(report)), "Trends over recent dates"),
    ]
    date = html.escape(report["date"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nightscore monitoring {date}</title><style>{pages.CSS}</style></head>
<body>
<h1>nightscore monitoring report: {date}</h1>
<p><span class="status" style="background:{pages.LEVEL_COLOURS[status]}">{html.escape(status.upper())}</span>
&nbsp;{len(report['alerts'])} threshold(s) crossed; PSI warn {report['thresholds']['psi_warn']:g},
alert {report['thresholds']['psi_alert']:g}; quarantine alert {report['thresholds']['quarantine_alert']:.1%}.</p>
{_model_html(report)}
<h2>Summary</h2>{pages.table(["Measure", "Value"], [[(k, ""), (v, "")] for k, v in summary])}
<h2>Alerts</h2>{alerts}
<h2>Score distribution</h2>{plots[0]}
<h2>Population stability</h2>{plots[1]}
<h2>Risk bands</h2>{plots[2]}
<h2>Trends (last {len(report['trend'])} date(s))</h2>{plots[3]}
<h2>Fairness</h2>{_fairness_html(report)}
<h2>Outcomes (back-tests)</h2>{_outcomes_html(report)}
<h2>Champion vs challenger</h2>{challenger_html(report)}
</body></html>
"""


def write_report(report: dict[str, Any], reference: dict[str, Any], scores_pd: np.ndarray,
                 out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` (strict JSON) and the self-contained ``report.html``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report, reference, scores_pd), encoding="utf-8")
    return json_path, html_path
