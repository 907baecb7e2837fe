"""Score a labelled snapshot with a model directory and measure it the way a credit-risk team does.

Writes metrics.json (AUC, KS, Gini, Brier, log loss, calibration error, top-k product
metrics where product labels exist), four PNG plots (ROC, KS curve, calibration curve,
score distribution by outcome) and an HTML page showing them.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import metrics as M
from . import storage
from .config import Config
from .model import store
from .schema import default_label
from .scorecard import pd_to_score
from .scoring.prepare import model_input
from .training.data import held_column, multi_hot, product_lists
from .validate import conform, preflight, split


def load_labelled(uri: str, cfg: Config, model_cfg: Config) -> tuple[pa.Table, int]:
    """Valid labelled rows of every file under `uri` (validated with the model's schema), and the input count."""
    fs, path = storage.filesystem(uri, cfg.storage.s3)
    files = storage.list_files(fs, path)
    dups = preflight(fs, files, model_cfg.schema, with_labels=True)
    parts, total = [], 0
    for f in files:
        table = conform(pq.read_table(f, filesystem=fs), model_cfg.schema, f, with_labels=True)
        total += table.num_rows
        parts.append(split(table, model_cfg.schema, None, dups).valid)
    return pa.concat_tables(parts), total


def evaluate(cfg: Config, model_uri: str, data_uri: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of a model on a labelled snapshot, plus the arrays the plots need."""
    from .scoring.inference import Predictor

    loaded = store.load(model_uri, cfg.storage.s3)
    mcfg = loaded.config
    rows, input_rows = load_labelled(data_uri, cfg, mcfg)
    inputs, counts = model_input(rows, mcfg, str(loaded.root))
    preds = Predictor(loaded, precision=cfg.score.precision, micro_batch=cfg.score.micro_batch,
                      threads=cfg.score.torch_threads, onednn=cfg.score.onednn,
                      compile=cfg.score.compiles(rows.num_rows), compiled_cache=cfg.score.compiled_cache).predict(inputs)
    result: dict[str, Any] = {"model_version": loaded.version, "data_uri": data_uri, "input_rows": input_rows,
                              "evaluated_rows": rows.num_rows, "quarantined_rows": input_rows - rows.num_rows,
                              "input_counts": counts.as_dict()}
    arrays: dict[str, np.ndarray] = {}
    labels = mcfg.schema.labels
    if labels.default and preds.pd is not None:
        y_col = default_label(rows, mcfg.schema)
        known = pc.is_valid(y_col).to_numpy(zero_copy_only=False)
        y = pc.fill_null(y_col, False).to_numpy(zero_copy_only=False).astype(bool)[known]
        pd_ = preds.pd[known]
        result.update({k.removeprefix("default_"): v for k, v in M.default_metrics(y, pd_).items()})
        result["default_rate"] = float(y.mean())
        result["calibration"] = M.calibration_table(y, pd_)
        arrays.update(y=y, pd=pd_, score=pd_to_score(pd_, cfg.scorecard))
    if labels.products and preds.propensity is not None:
        ids = loaded.meta["product_ids"]
        held_col = held_column(mcfg)
        held = multi_hot(product_lists(rows, held_col), ids) if held_col else None
        relevant = multi_hot(product_lists(rows, labels.products), ids)
        result.update(M.product_metrics(relevant, preds.propensity, cfg.products.top_k, held))
        result["product_auc_by_product"] = dict(zip(ids, M.product_aucs(relevant, preds.propensity, held)))
    return result, arrays


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plots(result: dict[str, Any], a: dict[str, np.ndarray]) -> dict[str, bytes]:
    """ROC, KS, calibration and score-by-outcome plots as PNG bytes (empty without default labels)."""
    if "y" not in a:
        return {}
    from matplotlib.figure import Figure

    y, pd_, score = a["y"], a["pd"], a["score"]
    out = {}
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    fpr, tpr = M.roc_curve(y, pd_)
    ax.plot(fpr, tpr, label=f"model (AUC {result['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(title="ROC curve", xlabel="false positive rate (goods flagged)", ylabel="true positive rate (bads caught)")
    ax.legend(loc="lower right")
    out["roc.png"] = _png(fig)

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    order = np.argsort(-pd_, kind="mergesort")
    share = np.arange(1, len(y) + 1) / len(y)
    bad = np.cumsum(y[order]) / max(y.sum(), 1)
    good = np.cumsum(~y[order]) / max((~y).sum(), 1)
    i = int(np.argmax(bad - good))
    ax.plot(share, bad, label="bads (cumulative)")
    ax.plot(share, good, label="goods (cumulative)")
    ax.vlines(share[i], good[i], bad[i], colors="red", label=f"KS {result['ks']:.3f}")
    ax.set(title="KS curve", xlabel="share of customers, riskiest first", ylabel="cumulative share")
    ax.legend(loc="lower right")
    out["ks.png"] = _png(fig)

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    cal = result["calibration"]
    lim = max(max(cal["predicted"]), max(cal["observed"])) * 1.1
    ax.plot([0, lim], [0, lim], "--", color="grey", label="perfect calibration")
    ax.plot(cal["predicted"], cal["observed"], "o-", label=f"model (ECE {result['ece']:.3f})")
    ax.set(title="Calibration (deciles of PD)", xlabel="mean predicted PD", ylabel="observed default rate")
    ax.legend(loc="upper left")
    out["calibration.png"] = _png(fig)

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    bins = np.linspace(score.min(), score.max() + 1, 30)
    ax.hist(score[~y], bins=bins, alpha=0.6, density=True, label="no default")
    ax.hist(score[y], bins=bins, alpha=0.6, density=True, label="default")
    ax.set(title="Credit score by outcome", xlabel="credit score", ylabel="density")
    ax.legend()
    out["score_by_outcome.png"] = _png(fig)
    return out


def render_html(result: dict[str, Any], images: dict[str, bytes]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float)
                   else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in result.items() if k not in ("calibration", "product_auc_by_product", "input_counts"))
    imgs = "".join(f'<img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   for n, b in images.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>nightscore evaluation</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 12px}img{width:420px;margin:6px}</style>"
            f"</head><body><h1>Model evaluation</h1><table>{rows}</table><div>{imgs}</div></body></html>")


def write(result: dict[str, Any], images: dict[str, bytes], out_uri: str, cfg: Config) -> str:
    """Write metrics.json, the PNGs and report.html to a local or s3:// folder; returns the HTML URI."""
    fs, root = storage.filesystem(out_uri, cfg.storage.s3)
    fs.create_dir(root, recursive=True)
    files = {"metrics.json": json.dumps(result, indent=2, default=float).encode(), **images,
             "report.html": render_html(result, images).encode()}
    for name, data in files.items():
        with fs.open_output_stream(storage.join(root, name)) as f:
            f.write(data)
    return storage.to_uri(fs, storage.join(root, "report.html"))
