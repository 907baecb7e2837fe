"""Calibration of the default probability on validation data (Platt or isotonic).

Stored as plain JSON beside the model so scoring applies exactly what training fitted.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def fit_platt(logits: np.ndarray, y: np.ndarray, iters: int = 100) -> dict[str, Any]:
    """Logistic regression of y on the raw logit (Newton's method, Platt's smoothed targets)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    X = np.stack([logits, np.ones_like(logits)], axis=1)
    for _ in range(iters):
        p = _sigmoid(a * logits + b)
        grad = X.T @ (p - t)
        w = p * (1 - p) + 1e-12
        hess = (X * w[:, None]).T @ X + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return {"method": "platt", "a": float(a), "b": float(b)}


def fit_isotonic(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Pool-adjacent-violators on the logit order; applied by linear interpolation."""
    order = np.argsort(logits, kind="stable")
    x = np.asarray(logits, dtype=np.float64)[order]
    v = np.asarray(y, dtype=np.float64)[order]
    vals, weights, xs = [], [], []
    for xi, vi in zip(x, v):
        vals.append(vi)
        weights.append(1.0)
        xs.append(xi)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = weights[-2] + weights[-1]
            vals[-2] = (vals[-2] * weights[-2] + vals[-1] * weights[-1]) / w
            weights[-2] = w
            vals.pop(), weights.pop(), xs.pop()  # merged block keeps its first x
    eps = 1e-4
    return {"method": "isotonic", "x": [float(a) for a in xs], "y": [float(min(max(b, eps), 1 - eps)) for b in vals]}


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
