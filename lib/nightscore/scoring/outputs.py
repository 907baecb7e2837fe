"""Model outputs -> the scores table of SPEC §4 (scorecard, reason codes, suitable products)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import Config
from ..schema import model_features
from ..scorecard import needs_reasons, pd_to_score, reason_codes, score_to_band
from ..suitability import Catalog, inputs_from_table, recommend, suitable_mask

RECOMMENDATION = pa.struct([("product_id", pa.string()), ("rank", pa.int32()), ("propensity", pa.float32())])
SCHEMA = pa.schema([
    ("customer_id", pa.string()),
    ("snapshot_date", pa.date32()),
    ("pd_12m", pa.float64()),
    ("credit_score", pa.int32()),
    ("risk_band", pa.string()),
    ("reason_codes", pa.list_(pa.string())),
    ("recommendations", pa.list_(RECOMMENDATION)),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
    ("recommendation_arm", pa.string()),  # "champion", or "challenger" for an A/B test's share (nightly)
])


def reason_fields(model_cfg: Config) -> tuple[list[str], dict[str, str]]:
    """Model-text field names in text order, and the reason text of those that have one."""
    feats = model_features(model_cfg.schema)
    return [f.name for f in feats], {f.name: f.reason for f in feats if f.reason}


def credit(pd: np.ndarray | None, cfg: Config, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(credit_score, risk_band), or (None, None) for a model without a default head."""
    if pd is None:
        return None, None
    score = pd_to_score(pd, cfg.scorecard)
    return score, score_to_band(score, cfg.scorecard)


def scores_table(rows: pa.Table, *, cfg: Config, catalog: Catalog, product_index: np.ndarray,
                 pd: np.ndarray | None, propensity: np.ndarray | None, reasons: list[list[str]],
                 model_version: str, run_id: str) -> pa.Table:
    """Assemble the output rows. `propensity` columns follow the model's products; `product_index`
    picks the catalog's products out of them."""
    n = rows.num_rows
    score, band = credit(pd, cfg, n)
    if propensity is not None and len(product_index):
        prop = propensity[:, product_index]
        inputs = inputs_from_table(rows, cfg.products.suitability)
        credit_score = score.astype(np.float64) if score is not None else np.full(n, np.nan)
        ok = suitable_mask(catalog, cfg.products.suitability, credit_score=credit_score, **inputs)
        recs = recommend(prop, ok, catalog, cfg.products.top_k)
    else:
        recs = [[] for _ in range(n)]
    id_col, date_col = cfg.schema.id, cfg.schema.date
    return pa.table({
        "customer_id": rows.column(id_col).cast(pa.string()),
        "snapshot_date": rows.column(date_col) if date_col else pa.nulls(n, pa.date32()),
        "pd_12m": pa.array(pd, pa.float64()) if pd is not None else pa.nulls(n, pa.float64()),
        "credit_score": pa.array(score, pa.int32()) if score is not None else pa.nulls(n, pa.int32()),
        "risk_band": pa.array(band, pa.string()) if band is not None else pa.nulls(n, pa.string()),
        "reason_codes": pa.array(reasons, pa.list_(pa.string())),
        "recommendations": pa.array(recs, pa.list_(RECOMMENDATION)),
        "model_version": pa.array([model_version] * n, pa.string()),
        "run_id": pa.array([run_id] * n, pa.string()),
        "recommendation_arm": pa.array(["champion"] * n, pa.string()),
    }, schema=SCHEMA)


def explain_mask(pd: np.ndarray, cfg: Config) -> np.ndarray:
    """Rows whose band is at or below the configured reason band (none when reason codes are off)."""
    if not cfg.scorecard.reason_codes:
        return np.zeros(len(pd), dtype=bool)
    _, band = credit(pd, cfg, len(pd))
    return needs_reasons(band, cfg.scorecard)


def reasons_for(preds, model_cfg: Config, cfg: Config, n: int) -> list[list[str]]:
    """Reason codes for the rows the predictor explained; empty lists elsewhere."""
    if preds.explained is None or not preds.explained.any():
        return [[] for _ in range(n)]
    names, texts = reason_fields(model_cfg)
    return reason_codes(preds.contrib, names, texts, preds.explained, cfg.scorecard.max_reasons)
