"""From calibrated PD to the numbers a credit officer reads: score, band, reason codes.

Points-to-double-odds scaling keeps the score interpretable and stable across model
versions: a fixed number of points always means the same change in good:bad odds.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .config import ScorecardSpec

# Keeps log-odds finite at PD 0 or 1; the clip to [min_score, max_score] bounds the result anyway.
_EPS = 1e-12


def pd_to_score(pd: np.ndarray, spec: ScorecardSpec) -> np.ndarray:
    """Scale PDs to integer scores: base_score at base_odds good:bad, +pdo points per doubling."""
    p = np.asarray(pd, dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("pd contains NaN or infinite values; a broken model must not produce scores")
    p = np.clip(p, _EPS, 1.0 - _EPS)
    factor = spec.pdo / np.log(2.0)
    offset = spec.base_score - factor * np.log(spec.base_odds)
    score = offset + factor * np.log((1.0 - p) / p)
    return np.clip(np.rint(score), spec.min_score, spec.max_score).astype(np.int64)


def score_to_band(score: np.ndarray, spec: ScorecardSpec) -> np.ndarray:
    """Band name per score: the best band whose min_score the score reaches (else the worst band)."""
    names = np.array([b.name for b in spec.bands], dtype=object)
    ascending_mins = np.array([b.min_score for b in reversed(spec.bands)])
    # Position of the highest threshold <= score in ascending order; below all thresholds -> worst band.
    pos = np.searchsorted(ascending_mins, np.asarray(score), side="right") - 1
    idx = len(names) - 1 - np.clip(pos, 0, None)
    return names[idx]


def needs_reasons(bands: np.ndarray, spec: ScorecardSpec) -> np.ndarray:
    """True where the band is spec.reason_band or worse: those customers get reason codes."""
    names = [b.name for b in spec.bands]
    return np.isin(np.asarray(bands, dtype=object), np.array(names[names.index(spec.reason_band):], dtype=object))


def reason_codes(
    contrib: np.ndarray,
    field_names: list[str],
    reason_texts: dict[str, str],
    mask: np.ndarray,
    max_reasons: int,
) -> list[list[str]]:
    """Top adverse reason texts per masked row, strongest first; [] for unmasked rows.

    contrib[i, j] > 0 means field j pushed row i's PD up. Fields without a reason text
    never appear. Fields sharing a text count once, with their strongest contribution,
    so a customer never sees the same reason twice.
    """
    contrib = np.asarray(contrib, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if contrib.ndim != 2 or contrib.shape[1] != len(field_names):
        raise ValueError(f"contrib has shape {contrib.shape}; expected (rows, {len(field_names)})")
    if mask.shape != (contrib.shape[0],):
        raise ValueError(f"mask has shape {mask.shape}; expected ({contrib.shape[0]},)")
    texts = list(dict.fromkeys(reason_texts[f] for f in field_names if f in reason_texts))
    # One column per distinct text holding the strongest contribution among its fields.
    by_text = np.full((contrib.shape[0], len(texts)), -np.inf)
    for j, field in enumerate(field_names):
        if field in reason_texts:
            t = texts.index(reason_texts[field])
            by_text[:, t] = np.fmax(by_text[:, t], contrib[:, j])  # fmax: NaN never wins
    by_text[~mask] = -np.inf
    order = np.argsort(-by_text, axis=1, kind="stable")[:, :max_reasons]
    keep = np.take_along_axis(by_text, order, axis=1) > 0  # a prefix of each row: sorted descending
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    flat = pa.array(np.array(texts, dtype=object)[order[keep]], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), flat).to_pylist()
