"""Model-quality metrics a credit-risk team reads: ranking, calibration and top-k products."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as sk


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (scikit-learn); NaN where the labels hold one outcome only."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(sk.roc_auc_score(y, score))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score (scikit-learn)."""
    fpr, tpr, _ = sk.roc_curve(np.asarray(y).astype(bool), score, drop_intermediate=False)
    return fpr, tpr


def ks(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov–Smirnov: the largest gap between the bad and good cumulative score
    distributions, which is max(TPR − FPR) over the ROC's thresholds."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr = roc_curve(y, score)
    return float(np.max(tpr - fpr))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(sk.brier_score_loss(np.asarray(y).astype(int), p, labels=[0, 1]))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(sk.log_loss(np.asarray(y).astype(int), np.asarray(p, dtype=np.float64), labels=[0, 1]))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Mean predicted vs observed default rate per quantile bin of p, with each bin's count: the
    bins of scikit-learn's calibration_curve(strategy="quantile"), which gives the rates but not
    the counts ECE weighs by."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    edges = np.percentile(p, np.linspace(0, 100, bins + 1))
    idx = np.searchsorted(edges[1:-1], p)
    count = np.bincount(idx, minlength=bins)
    keep = count > 0
    return {"predicted": (np.bincount(idx, p, bins)[keep] / count[keep]).tolist(),
            "observed": (np.bincount(idx, y, bins)[keep] / count[keep]).tolist(),
            "count": count[keep].tolist()}


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
