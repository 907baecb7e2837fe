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
