"""Model-quality metrics a credit-risk team reads: ranking, calibration and top-k products."""
from __future__ import annotations

import numpy as np


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via the rank-sum statistic, ties averaged."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over ties (vectorised by unique groups)
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ks(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov–Smirnov: largest gap between the bad and good cumulative score distributions."""
    y = np.asarray(y).astype(bool)
    if y.all() or (~y).all():
        return float("nan")
    order = np.argsort(-np.asarray(score), kind="mergesort")
    yb = y[order]
    tpr = np.cumsum(yb) / yb.sum()
    fpr = np.cumsum(~yb) / (~yb).sum()
    s = np.asarray(score)[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    return float(np.max(np.abs(tpr - fpr)[last_of_tie]))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    yb = y[order]
    tpr = np.r_[0, np.cumsum(yb) / max(yb.sum(), 1)]
    fpr = np.r_[0, np.cumsum(~yb) / max((~yb).sum(), 1)]
    return fpr, tpr


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted vs observed default rate per quantile bin of p."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    out = {"predicted": [], "observed": [], "count": []}
    for b in range(max(len(edges) - 1, 1)):
        m = idx == b
        if m.any():
            out["predicted"].append(float(p[m].mean()))
            out["observed"].append(float(y[m].mean()))
            out["count"].append(int(m.sum()))
    return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    t = calibration_table(y, p, bins)
    n = sum(t["count"])
    return float(sum(c * abs(a - b) for a, b, c in zip(t["predicted"], t["observed"], t["count"])) / max(n, 1))


def default_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    a = auc(y, p)
    return {
        "default_auc": a,
        "default_gini": 2 * a - 1,
        "default_ks": ks(y, p),
        "default_brier": brier(y, p),
        "default_logloss": log_loss(y, p),
        "default_ece": expected_calibration_error(y, p),
    }


def product_aucs(relevant: np.ndarray, score: np.ndarray, held: np.ndarray | None = None) -> list[float]:
    """Each product's take-up AUC over the customers who do not already hold it (NaN where its
    take-up is all one outcome): a propensity model judged like a default model."""
    relevant = np.asarray(relevant) > 0.5
    eligible = ~(np.asarray(held) > 0.5) if held is not None else np.ones_like(relevant)
    return [auc(relevant[eligible[:, j], j], np.asarray(score)[eligible[:, j], j]) for j in range(relevant.shape[1])]


def product_metrics(relevant: np.ndarray, score: np.ndarray, k: int,
                    held: np.ndarray | None = None) -> dict[str, float]:
    """product_auc (the mean of product_aucs), then recall@k, NDCG@k and MAP@k over customers
    with at least one relevant product.

    relevant: (n, P) 0/1 matrix of products taken up; score: (n, P) predicted propensities;
    held: (n, P) 0/1 matrix of products already held, ranked last (they are never recommended).
    """
    aucs = [a for a in product_aucs(relevant, score, held) if not np.isnan(a)]
    mean_auc = {"product_auc": float(np.mean(aucs)) if aucs else float("nan")}
    relevant = np.asarray(relevant) > 0.5
    if held is not None:
        score = np.where(np.asarray(held) > 0.5, -np.inf, np.asarray(score, dtype=np.float64))
    keep = relevant.any(axis=1)
    if not keep.any():
        return {**mean_auc, f"recall@{k}": float("nan"), f"ndcg@{k}": float("nan"), f"map@{k}": float("nan")}
    rel, sc = relevant[keep], np.asarray(score)[keep]
    k = min(k, rel.shape[1])
    top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(rel, top, axis=1)
    n_rel = rel.sum(axis=1)
    recall = hits.sum(axis=1) / n_rel
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.array([discounts[: min(int(r), k)].sum() for r in n_rel])
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = (precision_at * hits).sum(axis=1) / np.minimum(n_rel, k)
    return {**mean_auc, f"recall@{k}": float(recall.mean()), f"ndcg@{k}": float((dcg / ideal).mean()),
            f"map@{k}": float(ap.mean())}
