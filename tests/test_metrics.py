"""Metrics and calibration fits against reference implementations (scipy, scikit-learn) on fixed
data; ranking metrics by hand, held products ranked out."""
import numpy as np
import pytest

from nightscore import metrics as M
from nightscore.metrics import product_metrics
from nightscore.model import calibration


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


@pytest.fixture(scope="module")
def scored():
    """Fixed scores with ties (rounded) and a known logistic link."""
    rng = np.random.default_rng(7)
    z = np.round(rng.normal(size=3000), 2)
    y = rng.random(3000) < 1 / (1 + np.exp(-(1.5 * z - 1)))
    return z, y, 1 / (1 + np.exp(-(1.5 * z - 1)))


def test_auc_and_ks_match_rank_and_two_sample_statistics(scored):
    from scipy import stats

    z, y, _ = scored
    u = stats.mannwhitneyu(z[y], z[~y]).statistic  # ties counted half, like the ROC
    assert M.auc(y, z) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)
    assert M.ks(y, z) == pytest.approx(stats.ks_2samp(z[y], z[~y]).statistic, abs=1e-12)
    assert np.isnan(M.auc(np.ones(5), np.arange(5))) and np.isnan(M.ks(np.zeros(5), np.arange(5)))


def test_brier_log_loss_and_calibration_table_match_their_formulas(scored):
    from sklearn.calibration import calibration_curve

    _, y, p = scored
    assert M.brier(y, p) == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert M.log_loss(y, p) == pytest.approx(-np.mean(np.where(y, np.log(p), np.log(1 - p))), abs=1e-12)
    table = M.calibration_table(y, p, bins=10)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    assert np.allclose(table["observed"], observed) and np.allclose(table["predicted"], predicted)
    assert sum(table["count"]) == len(y)


def test_platt_fit_is_the_logistic_maximum_likelihood(scored):
    from scipy.optimize import minimize

    z, y, _ = scored

    def nll(ab):
        t = ab[0] * z + ab[1]
        return np.sum(np.logaddexp(0, t) - y * t)

    ref = minimize(nll, [1.0, 0.0], method="BFGS", options={"gtol": 1e-8}).x
    fit = calibration.fit("platt", z, y)
    assert [fit["a"], fit["b"]] == pytest.approx(ref, abs=1e-3)
    assert [fit["a"], fit["b"]] == pytest.approx([1.5, -1.0], abs=0.2)  # the generating link


def test_isotonic_fit_applies_as_scikit_learn_predicts(scored):
    from sklearn.isotonic import IsotonicRegression

    z, y, _ = scored
    fit = calibration.fit("isotonic", z, y)
    ref = IsotonicRegression(y_min=1e-4, y_max=1 - 1e-4, out_of_bounds="clip").fit(z, y)
    grid = np.linspace(-5, 5, 501)  # inside and beyond the fitted range
    assert np.allclose(calibration.apply(fit, grid), ref.predict(grid))
    assert np.all(np.diff(calibration.apply(fit, grid)) >= 0)
