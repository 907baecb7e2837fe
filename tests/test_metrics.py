"""Ranking metrics: hand-checked values and held products ranked out."""
import numpy as np
import pytest

from nightscore.metrics import product_metrics


def test_ndcg_recall_map_by_hand():
    rel = np.array([[1, 0, 0, 1], [0, 0, 0, 0]])  # the second customer took nothing up: not counted
    score = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    m = product_metrics(rel, score, k=2)
    # top-2 = products 0 and 1: one hit at rank 1 of two relevant products
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1.0 / (1.0 + 1.0 / np.log2(3)))
    assert m["map@2"] == pytest.approx(0.5)


def test_held_products_are_ranked_last():
    rel = np.array([[0, 1, 0]])
    score = np.array([[0.9, 0.5, 0.1]])
    held = np.array([[1, 0, 0]])
    assert product_metrics(rel, score, k=1)["ndcg@1"] == 0.0
    assert product_metrics(rel, score, k=1, held=held)["ndcg@1"] == 1.0


def test_product_auc_per_product_matches_sklearn_over_customers_not_holding_it():
    from sklearn.metrics import roc_auc_score

    from nightscore.metrics import product_aucs

    rng = np.random.default_rng(0)
    rel = (rng.random((400, 3)) < [0.1, 0.3, 0.0]).astype(float)  # product 2: nobody took it up
    score = rel * 0.3 + rng.random((400, 3))
    held = (rng.random((400, 3)) < 0.2).astype(float)
    got = product_aucs(rel, score, held)
    for j in range(2):
        keep = held[:, j] == 0
        assert got[j] == pytest.approx(roc_auc_score(rel[keep, j], score[keep, j]))
    assert np.isnan(got[2])
    assert product_metrics(rel, score, k=2, held=held)["product_auc"] == pytest.approx(np.mean(got[:2]))
