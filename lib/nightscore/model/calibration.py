"""Calibration of the default probability on validation data (Platt or isotonic).

Stored as plain JSON beside the model so scoring applies exactly what training fitted.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def fit_platt(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Platt scaling: an unpenalised logistic regression of y on the raw logit (scikit-learn)."""
    lr = LogisticRegression(C=np.inf).fit(np.asarray(logits, dtype=np.float64).reshape(-1, 1), np.asarray(y) > 0.5)
    return {"method": "platt", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


def fit_isotonic(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Isotonic regression on the logit (scikit-learn), stored as its thresholds: applying it is
    linear interpolation between them, clipped at the ends, exactly as IsotonicRegression.predict."""
    eps = 1e-4  # a PD of exactly 0 or 1 is never credible
    iso = IsotonicRegression(y_min=eps, y_max=1 - eps, out_of_bounds="clip")
    iso.fit(np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return {"method": "isotonic", "x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}


def fit(method: str, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return fit_platt(logits, y) if method == "platt" else fit_isotonic(logits, y)


def apply(params: dict[str, Any], logits: np.ndarray) -> np.ndarray:
    """Calibrated probability of default for raw default logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if params["method"] == "platt":
        return _sigmoid(params["a"] * logits + params["b"])
    if params["method"] == "isotonic":
        return np.interp(logits, params["x"], params["y"])
    if params["method"] == "identity":
        return _sigmoid(logits)
    raise ValueError(f"unknown calibration method {params['method']!r}")
