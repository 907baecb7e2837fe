"""Nightly monitoring: is tonight's population, and how we scored it, still like the one the model learned?

The model directory carries a reference sample of raw validation-set features and PDs, so
PSI can be recomputed with any binning later. Each night is compared against it: score
and feature PSI, band shares, quarantine rate, recommendation coverage and group
fairness. Config thresholds turn drift into warn/alert, which the nightly job turns into
its exit status. The report is JSON for machines plus one self-contained HTML page
(plots embedded as PNG) for people; it holds aggregates only, never a customer's row.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .config import MonitoringSpec, SchemaSpec, ScorecardSpec, SensitiveSpec
from .scorecard import pd_to_score, score_to_band

REFERENCE_ROWS = 50_000  # plenty for stable decile PSI, small enough to ship with every model
REFERENCE_KINDS = ("numeric", "categorical", "boolean")  # kinds PSI can bin; list and text are skipped
PD_COLUMN = "pd_12m"
PSI_EPS = 1e-4  # share given to an empty bin so its log term stays finite
MISSING = "missing"
OUT_OF_RANGE = "out of range"
FOUR_FIFTHS = 0.8  # fairness ratios below this are highlighted (the four-fifths rule of thumb)
LEVEL_COLOURS = {"ok": "#2e7d32", "warn": "#ef8f00", "alert": "#c62828"}

ArrayLike = np.ndarray | pa.Array | pa.ChunkedArray | Sequence[Any]


# --------------------------------------------------------------------------- reference
def build_reference(table: pa.Table, schema: SchemaSpec, pd: np.ndarray, *, max_rows: int = REFERENCE_ROWS,
                    seed: int = 0) -> pa.Table:
    """Sample of validation rows to store as the model's ``reference.parquet``.

    Keeps raw values of the binnable features (numeric, categorical, boolean) plus the
    calibrated PD as ``pd_12m``. Only schema features are selected, and the schema forbids
    a feature from being the id or a PII column, so neither can leave training this way.
    """
    pd = np.asarray(pd, dtype=np.float64)
    if pd.shape != (table.num_rows,):
        raise ValueError(f"pd has shape {pd.shape}; expected ({table.num_rows},) to match the table")
    names = [f.name for f in schema.features if f.kind in REFERENCE_KINDS]
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"reference table lacks feature columns {missing}")
    rows = np.arange(table.num_rows)
    if table.num_rows > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, max_rows, replace=False))
    return table.select(names).take(pa.array(rows)).append_column(PD_COLUMN, pa.array(pd[rows]))


# --------------------------------------------------------------------------- PSI
def _floats(values: ArrayLike) -> np.ndarray:
    """float64 values with NaN for nulls, from numpy, a sequence or Arrow."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """PSI of two count vectors over the same bins; NaN when either side is empty."""
    n_ref, n_cur = ref_counts.sum(), cur_counts.sum()
    if n_ref == 0 or n_cur == 0:
        return float("nan")
    p = np.maximum(ref_counts / n_ref, PSI_EPS)
    q = np.maximum(cur_counts / n_cur, PSI_EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_numeric(ref: ArrayLike, cur: ArrayLike, bins: int = 10) -> float:
    """PSI over the reference's quantile bins, with nulls (and non-finite values) as a bin of their own.

    Duplicate quantile edges collapse, and a value equal to an edge falls in the bin below
    it, so a point mass (e.g. zero late payments) forms its own bin rather than being split
    arbitrarily. Bins are open-ended, so current values beyond the reference range count.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    r, c = _floats(ref), _floats(cur)
    r_ok, c_ok = np.isfinite(r), np.isfinite(c)
    cuts = np.unique(np.quantile(r[r_ok], np.linspace(0, 1, bins + 1)[1:-1])) if r_ok.any() else np.empty(0)

    def counts(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        binned = np.bincount(np.searchsorted(cuts, x[ok], side="left"), minlength=len(cuts) + 1)
        return np.append(binned, (~ok).sum()).astype(np.float64)

    return _psi(counts(r, r_ok), counts(c, c_ok))


def _category_counts(values: ArrayLike) -> dict[Any, int]:
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(
        np.asarray(values, dtype=object), from_pandas=True)
    return {row["values"]: row["counts"] for row in pc.value_counts(arr).to_pylist()}


def psi_categorical(ref: ArrayLike, cur: ArrayLike) -> float:
    """PSI over every category seen on either side, null being a category of its own."""
    r, c = _category_counts(ref), _category_counts(cur)
    keys = list(r.keys() | c.keys())
    return _psi(np.array([r.get(k, 0) for k in keys], dtype=np.float64),
                np.array([c.get(k, 0) for k in keys], dtype=np.float64))


def feature_psi(reference: pa.Table, current: pa.Table, schema: SchemaSpec, bins: int = 10) -> dict[str, float]:
    """PSI per schema feature held in the reference, in schema order (numeric: quantile bins)."""
    out: dict[str, float] = {}
    for f in schema.features:
        if f.kind not in REFERENCE_KINDS or f.name not in reference.column_names:
            continue
        if f.name not in current.column_names:
            raise ValueError(f"current population lacks feature column {f.name!r}")
        ref, cur = reference.column(f.name), current.column(f.name)
        out[f.name] = psi_numeric(ref, cur, bins) if f.kind == "numeric" else psi_categorical(ref, cur)
    return out


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


def _fairness(s: SensitiveSpec, column: pa.ChunkedArray, score: np.ndarray, bands: np.ndarray,
              has_rec: np.ndarray, band_names: list[str]) -> dict[str, Any]:
    """Per-group outcomes and their ratio to the most favoured group (highest mean score / rec. rate)."""
    codes, names = _groups(s, column)
    k = len(names)
    n = np.bincount(codes, minlength=k)
    score_mean = np.bincount(codes, weights=score, minlength=k) / np.maximum(n, 1)
    rec_rate = np.bincount(codes, weights=has_rec.astype(np.float64), minlength=k) / np.maximum(n, 1)
    band_counts = {b: np.bincount(codes, weights=(bands == b).astype(np.float64), minlength=k) for b in band_names}
    present = [g for g in range(k) if n[g] > 0]  # empty groups have no outcome to compare
    best_score = max((score_mean[g] for g in present), default=0.0)
    best_rec = max((rec_rate[g] for g in present), default=0.0)
    groups = {
        names[g]: {
            "n": int(n[g]),
            "share": float(n[g] / len(codes)),
            "mean_score": float(score_mean[g]),
            "score_ratio": float(score_mean[g] / best_score) if best_score > 0 else float("nan"),
            "recommendation_rate": float(rec_rate[g]),
            "recommendation_ratio": float(rec_rate[g] / best_rec) if best_rec > 0 else float("nan"),
            "band_shares": {b: float(band_counts[b][g] / n[g]) for b in band_names},
        }
        for g in present
    }
    favoured = {
        "score": names[max(present, key=lambda g: score_mean[g])] if present else None,
        "recommendation_rate": names[max(present, key=lambda g: rec_rate[g])] if present else None,
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


TREND_KEYS = ("band_shares", "quarantine_rate", "score_psi", "mean_pd", "status")


def _trend(date: str, current: dict[str, Any], history: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Compact points for the trend plots: earlier dates only (a rerun replaces its date), then today; last n.

    Points, not whole reports, so each report stays small instead of nesting its predecessors.
    """
    earlier = {h["date"]: h for h in history if isinstance(h.get("date"), str) and h["date"] < date}
    points = [{"date": d, **{k: earlier[d].get(k) for k in TREND_KEYS}} for d in sorted(earlier)]
    points.append({"date": date, **{k: current[k] for k in TREND_KEYS}})
    return points[-n:]


def _jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become None so report.json is strict JSON."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def build_report(*, date: str, scores: pa.Table, quarantine_rows: int, input_rows: int, features: pa.Table,
                 reference: pa.Table, schema: SchemaSpec, spec: MonitoringSpec, band_names: list[str],
                 history: list[dict[str, Any]], scorecard: ScorecardSpec | None = None) -> dict[str, Any]:
    """One date's monitoring report as a JSON-ready dict (undefined values are None).

    ``scores`` needs pd_12m, credit_score, risk_band and recommendations; ``features`` holds
    the same rows, in the same order, with the feature and sensitive columns (PII removed).
    ``history`` holds earlier reports, for the trend. With ``scorecard``, the reference PDs
    are banded with today's cut-offs, so band shares can be compared with the reference.
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
    pd_ref = _floats(reference.column(PD_COLUMN))
    score = _floats(scores.column("credit_score"))
    bands = pc.cast(scores.column("risk_band"), pa.string()).to_numpy(zero_copy_only=False)
    n_recs = pc.fill_null(pc.list_value_length(scores.column("recommendations")), 0).to_numpy(zero_copy_only=False)
    has_rec = n_recs > 0
    quarantine_rate = quarantine_rows / input_rows if input_rows else 0.0
    score_psi = psi_numeric(pd_ref, pd_cur)
    feat_psi = feature_psi(reference, features, schema)
    alerts = _alerts(score_psi, feat_psi, quarantine_rate, spec)
    levels = {a["level"] for a in alerts}
    ref_bands = None
    if scorecard is not None:
        finite = pd_ref[np.isfinite(pd_ref)]
        ref_bands = _shares(score_to_band(pd_to_score(finite, scorecard), scorecard), band_names)

    report: dict[str, Any] = {
        "date": date,
        "status": "alert" if "alert" in levels else "warn" if "warn" in levels else "ok",
        "input_rows": input_rows,
        "scored_rows": scored_rows,
        "quarantined_rows": quarantine_rows,
        "quarantine_rate": quarantine_rate,
        "mean_pd": _mean(pd_cur),
        "reference_mean_pd": _mean(pd_ref),
        "reference_rows": reference.num_rows,
        "score": _score_summary(score),
        "band_shares": _shares(bands, band_names),
        "reference_band_shares": ref_bands,
        "score_psi": score_psi,
        "feature_psi": feat_psi,
        "recommendation_coverage": _mean(has_rec),
        "mean_recommendations": _mean(n_recs),
        "fairness": {s.column: _fairness(s, features.column(s.column), score, bands, has_rec, band_names)
                     for s in spec.sensitive},
        "thresholds": {"psi_warn": spec.psi_warn, "psi_alert": spec.psi_alert,
                       "quarantine_alert": spec.quarantine_alert},
        "alerts": alerts,
    }
    report["trend"] = _trend(date, report, history, spec.history)
    return _jsonable(report)


# --------------------------------------------------------------------------- plots
def _png(fig: Figure) -> str:
    """Base64 PNG of a figure, rendered with Agg (no display, no pyplot global state)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _band_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn_r"]
    return [cmap(0.1 + 0.8 * i / max(n - 1, 1)) for i in range(n)]


def _plot_pd(ref_pd: np.ndarray, cur_pd: np.ndarray, report: dict[str, Any]) -> Figure:
    """Overlaid PD histograms on a log axis (PDs are skewed towards small values)."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    r, c = ref_pd[np.isfinite(ref_pd)], cur_pd[np.isfinite(cur_pd)]
    both = np.concatenate([r, c])
    positive = both[both > 0]
    if len(positive):
        lo, hi = max(positive.min(), 1e-5), max(min(both.max(), 1.0), max(positive.min(), 1e-5) * 10)
        edges = np.geomspace(lo, hi, 41)
        for values, kwargs in ((r, {"color": "#9e9e9e", "alpha": 0.6, "label": f"Reference (n={len(r):,})"}),
                               (c, {"histtype": "step", "linewidth": 2, "color": "#1565c0",
                                    "label": f"{report['date']} (n={len(c):,})"})):
            if len(values):
                ax.hist(np.clip(values, lo, hi), bins=edges, weights=np.full(len(values), 1 / len(values)), **kwargs)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log range
        ax.legend()
    else:
        _no_data(ax)
    psi = report["score_psi"]
    ax.set_title(f"12-month PD distribution: current vs reference (score PSI {_fmt(psi, '.3f')})")
    ax.set_xlabel("12-month probability of default (log scale)")
    ax.set_ylabel("Share of customers")
    return fig


def _plot_psi(report: dict[str, Any]) -> Figure:
    """Horizontal PSI bars, worst first, coloured by level, with the warn/alert thresholds."""
    t = report["thresholds"]
    items = [("Score (PD)", report["score_psi"])] + sorted(
        ((k, v) for k, v in report["feature_psi"].items()), key=lambda kv: -(kv[1] or 0.0))
    fig = Figure(figsize=(8, 1.5 + 0.28 * len(items)))
    ax = fig.add_subplot()
    values = [v or 0.0 for _, v in items]
    colours = [LEVEL_COLOURS["alert"] if v > t["psi_alert"] else LEVEL_COLOURS["warn"] if v > t["psi_warn"]
               else LEVEL_COLOURS["ok"] for v in values]
    y = np.arange(len(items))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, [k for k, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(t["psi_warn"], color=LEVEL_COLOURS["warn"], linestyle="--", label=f"warn ({t['psi_warn']:g})")
    ax.axvline(t["psi_alert"], color=LEVEL_COLOURS["alert"], linestyle="--", label=f"alert ({t['psi_alert']:g})")
    ax.set_xlim(0, max(max(values), t["psi_alert"]) * 1.15)
    ax.legend(loc="lower right")
    ax.set_title("Population stability index vs reference")
    ax.set_xlabel("PSI")
    ax.set_ylabel("Feature")
    return fig


def _plot_bands(report: dict[str, Any]) -> Figure:
    """Band shares today, beside the reference population's when known."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    names = list(report["band_shares"])
    x = np.arange(len(names))
    ref = report["reference_band_shares"]
    width = 0.4 if ref else 0.6
    if ref:
        ax.bar(x - width / 2, [ref[b] for b in names], width, color="#9e9e9e", label="Reference")
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
    ax_psi.axhline(t["psi_warn"], color=LEVEL_COLOURS["warn"], linestyle="--", label=f"warn ({t['psi_warn']:g})")
    ax_psi.axhline(t["psi_alert"], color=LEVEL_COLOURS["alert"], linestyle="--", label=f"alert ({t['psi_alert']:g})")
    ax_psi.set_ylim(0, max(np.nanmax(psi, initial=0.0), t["psi_alert"]) * 1.2)
    ax_psi.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_psi.set_title("Score PSI vs reference by date")
    ax_psi.set_ylabel("PSI")

    rate = np.array([p.get("quarantine_rate") if p.get("quarantine_rate") is not None else np.nan for p in points],
                    dtype=float)
    ax_q.plot(x, rate * 100, marker="o", color="#6a1b9a", label="Quarantine rate")
    ax_q.axhline(t["quarantine_alert"] * 100, color=LEVEL_COLOURS["alert"], linestyle="--",
                 label=f"alert ({t['quarantine_alert']:.1%})")
    ax_q.set_ylim(0, max(np.nanmax(rate, initial=0.0), t["quarantine_alert"]) * 120)
    ax_q.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_q.set_title("Quarantined input rows by date")
    ax_q.set_ylabel("Quarantined (% of input rows)")
    ax_q.set_xlabel("Snapshot date")
    step = max(1, len(points) // 15)  # keep date labels legible over a long history
    ax_q.set_xticks(x[::step], [p["date"] for p in points][::step], rotation=45, ha="right", fontsize=8)
    return fig


# --------------------------------------------------------------------------- HTML
def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1000px;
color:#212121;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.3rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.status{display:inline-block;color:#fff;font-weight:bold;padding:.2rem .8rem;border-radius:4px;font-size:1.1rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
td.warn{background:#fff3e0}td.alert{background:#ffebee}.note{color:#616161;font-size:.9rem}
img{max-width:100%;display:block;margin:.5rem 0}
"""


def _table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """HTML table; each cell is (text, css class). Text is escaped here, once."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{html.escape(v)}</td>' if c else f"<td>{html.escape(v)}</td>"
                                    for v, c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def _alert_format(alert: dict[str, Any]) -> str:
    return ".2%" if alert["metric"] == "quarantine_rate" else ".3f"


def _ratio_class(ratio: float | None) -> str:
    return "warn" if ratio is not None and ratio < FOUR_FIFTHS else ""


def _fairness_html(report: dict[str, Any]) -> str:
    if not report["fairness"]:
        return '<p class="note">No sensitive attributes configured (monitoring.sensitive).</p>'
    parts = [f'<p class="note">Ratios compare each group with the most favoured group (ratio 1); ratios below '
             f'{FOUR_FIFTHS:g} (the four-fifths rule of thumb) are highlighted.</p>']
    bands = list(report["band_shares"])
    for attr in report["fairness"].values():
        rows = []
        for name, g in attr["groups"].items():
            rows.append([(name, ""), (f"{g['n']:,}", ""), (_fmt(g["share"], ".1%"), ""),
                         (_fmt(g["mean_score"], ".1f"), ""),
                         (_fmt(g["score_ratio"], ".3f"), _ratio_class(g["score_ratio"])),
                         (_fmt(g["recommendation_rate"], ".1%"), ""),
                         (_fmt(g["recommendation_ratio"], ".3f"), _ratio_class(g["recommendation_ratio"]))]
                        + [(_fmt(g["band_shares"][b], ".1%"), "") for b in bands])
        parts.append(f"<h3>{html.escape(attr['label'])}</h3>")
        parts.append(_table(["Group", "Customers", "Share", "Mean score", "Score ratio", "Recommended",
                             "Rec. ratio"] + [f"Band {b}" for b in bands], rows))
    return "".join(parts)


def render_html(report: dict[str, Any], reference: pa.Table, scores_pd: ArrayLike) -> str:
    """The report as one self-contained page: inline CSS, plots as data-URI PNGs, no external links."""
    status = report["status"]
    s = report["score"]
    summary = [
        ("Input rows", f"{report['input_rows']:,}"),
        ("Scored rows", f"{report['scored_rows']:,}"),
        ("Quarantined rows", f"{report['quarantined_rows']:,} ({report['quarantine_rate']:.2%})"),
        ("Mean PD (reference)", f"{_fmt(report['mean_pd'], '.2%')} ({_fmt(report['reference_mean_pd'], '.2%')})"),
        ("Credit score mean / p5 / p50 / p95",
         " / ".join(_fmt(s[k], ".0f") for k in ("mean", "p5", "p50", "p95"))),
        ("Score PSI", _fmt(report["score_psi"], ".3f")),
        ("Customers with a recommendation", _fmt(report["recommendation_coverage"], ".1%")),
        ("Recommendations per customer", _fmt(report["mean_recommendations"], ".2f")),
    ]
    alert_rows = [[(a["metric"], ""), (_fmt(a["value"], _alert_format(a)), a["level"]),
                   (_fmt(a["threshold"], _alert_format(a)), ""), (a["level"], a["level"])] for a in report["alerts"]]
    alerts = (_table(["Metric", "Value", "Threshold", "Level"], alert_rows) if alert_rows
              else '<p class="note">No threshold crossed.</p>')
    plots = [
        _img(_png(_plot_pd(_floats(reference.column(PD_COLUMN)), _floats(scores_pd), report)), "PD histogram"),
        _img(_png(_plot_psi(report)), "PSI per feature"),
        _img(_png(_plot_bands(report)), "Risk band shares"),
        _img(_png(_plot_trend(report)), "Trends over recent dates"),
    ]
    date = html.escape(report["date"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nightscore monitoring {date}</title><style>{_CSS}</style></head>
<body>
<h1>nightscore monitoring report: {date}</h1>
<p><span class="status" style="background:{LEVEL_COLOURS[status]}">{html.escape(status.upper())}</span>
&nbsp;{len(report['alerts'])} threshold(s) crossed; PSI warn {report['thresholds']['psi_warn']:g},
alert {report['thresholds']['psi_alert']:g}; quarantine alert {report['thresholds']['quarantine_alert']:.1%}.</p>
<h2>Summary</h2>{_table(["Measure", "Value"], [[(k, ""), (v, "")] for k, v in summary])}
<h2>Alerts</h2>{alerts}
<h2>Score distribution</h2>{plots[0]}
<h2>Population stability</h2>{plots[1]}
<h2>Risk bands</h2>{plots[2]}
<h2>Trends (last {len(report['trend'])} date(s))</h2>{plots[3]}
<h2>Fairness</h2>{_fairness_html(report)}
</body></html>
"""


def write_report(report: dict[str, Any], reference: pa.Table, scores_pd: np.ndarray,
                 out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` (strict JSON) and the self-contained ``report.html``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report, reference, scores_pd), encoding="utf-8")
    return json_path, html_path
