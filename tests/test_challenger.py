"""Champion/challenger pieces without Ray: the A/B assignment, the published rows of an A/B
test, the comparison, and the back-test's per-arm test against statsmodels."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from scipy.stats import pearsonr, spearmanr
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from nightscore import backtest, challenger, partition, storage
from nightscore.challenger import ABTest, challenger_arm, compare, publish_ab
from test_backtest import CFG, DATE, PRODUCTS, population, scores_table, write_outcomes, write_scores  # noqa: F401

BANDS = [b.name for b in CFG.scorecard.bands]
OUTCOMES = ["customer_id", "default_12m", "products_acquired_90d"]


def test_arms_are_stable_keyed_by_salt_and_in_proportion():
    ids = pa.array([f"C{i:07d}" for i in range(40_000)])
    arm = challenger_arm(ids, 0.1, "salt-1")
    assert abs(arm.mean() - 0.1) < 0.006  # ~4 standard errors
    assert np.array_equal(arm, challenger_arm(ids, 0.1, "salt-1"))  # every night, every rerun
    perm = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(arm[perm], challenger_arm(ids.take(pa.array(perm)), 0.1, "salt-1"))  # not by position
    other = challenger_arm(ids, 0.1, "salt-2")
    assert 0.05 < (arm & other).sum() / arm.sum() < 0.15  # a new salt draws a new, independent share
    assert not challenger_arm(ids, 0.0, "s").any() and challenger_arm(ids, 1.0, "s").all()
    assert np.array_equal(challenger_arm(ids, 0.2, "salt-1") & arm, arm)  # a bigger share keeps its customers


def test_ab_publishes_challenger_recommendations_to_its_arm_only(tmp_path, population):
    features, labels = population
    ids = features.column("customer_id")
    rng = np.random.default_rng(1)
    n = len(ids)
    ours = scores_table(ids, labels.column("true_pd").to_numpy(), rng.random((n, len(PRODUCTS))))
    theirs = scores_table(ids, rng.random(n) * 0.2, rng.random((n, len(PRODUCTS))))
    theirs = theirs.filter(pa.array(np.arange(n) >= 10))  # the challenger missed ten customers
    shadow = write_scores(tmp_path / "shadow", theirs)
    fs, root = storage.filesystem(str(tmp_path / "scores"))
    staged = storage.join(partition.run_dir(root, DATE, "r2"), "scores")
    storage.write_parquet(ours.slice(0, 2000), fs, storage.join(staged, "a.parquet"))
    storage.write_parquet(ours.slice(2000), fs, storage.join(staged, "b.parquet"))

    record = publish_ab(fs, staged, DATE, ABTest(0.3, "s", shadow), None)
    out = pa.concat_tables(pq.read_table(f) for f in sorted(storage.list_files(fs, staged)))
    arm = challenger_arm(ids, 0.3, "s") & (np.arange(n) >= 10)
    assert out.column("recommendation_arm").to_pylist() == np.where(arm, "challenger", "champion").tolist()
    assert record["rows"] == {"champion": int((~arm).sum()), "challenger": int(arm.sum())}
    assert record["challenger_run_id"] == "r1" and record["share"] == 0.3 and record["salt"] == "s"
    recs, mine = out.column("recommendations").to_pylist(), ours.column("recommendations").to_pylist()
    by_id = dict(zip(theirs.column("customer_id").to_pylist(), theirs.column("recommendations").to_pylist()))
    for i in range(n):
        assert recs[i] == (by_id[ids[i].as_py()] if arm[i] else mine[i])
    for col in ("customer_id", "pd_12m", "credit_score", "risk_band", "reason_codes"):  # the champion's, always
        assert out.column(col).equals(ours.column(col))


def test_comparison_matches_scipy_and_counts_migrations(population):
    features, labels = population
    ids = features.column("customer_id")
    rng = np.random.default_rng(2)
    pd0 = labels.column("true_pd").to_numpy()
    pd1 = np.clip(pd0 * rng.lognormal(0, 0.3, len(pd0)), 1e-4, 0.99)
    props = rng.random((len(pd0), len(PRODUCTS)))
    a = scores_table(ids, pd0, props)
    b = scores_table(ids, pd1, props + rng.normal(0, 0.05, props.shape))
    cmp = compare(a, b.take(pa.array(rng.permutation(len(pd0)))), BANDS, 5)  # joined by id, not position
    assert cmp["customers"] == len(pd0) and cmp["champion_only"] == cmp["challenger_only"] == 0
    assert cmp["pd_pearson"] == pytest.approx(pearsonr(pd0, pd1).statistic)
    assert cmp["pd_spearman"] == pytest.approx(spearmanr(pd0, pd1).statistic)
    diff = b.column("credit_score").to_numpy() - a.column("credit_score").to_numpy()
    assert cmp["score_difference"]["mean"] == pytest.approx(diff.mean())
    assert sum(cmp["score_difference"]["counts"]) == len(pd0)
    m = np.array(cmp["band_migration"]["counts"])
    b0, b1 = a.column("risk_band").to_numpy(zero_copy_only=False), b.column("risk_band").to_numpy(zero_copy_only=False)
    assert m.sum() == len(pd0) and m[BANDS.index("C"), BANDS.index("D")] == ((b0 == "C") & (b1 == "D")).sum()
    assert cmp["band_migration"]["unchanged"] == pytest.approx(np.trace(m) / len(pd0))
    assert 0 < cmp["overlap@5"] < 1
    same = compare(a, a, BANDS, 5)
    assert same["overlap@5"] == pytest.approx(
        np.mean([len(r) / 5 for r in a.column("recommendations").to_pylist() if r]))
    assert same["band_migration"]["unchanged"] == 1.0 and same["score_difference"]["p95"] == 0
    assert "overlap@5" in challenger.summary(cmp)


def test_two_proportions_matches_statsmodels():
    got = backtest.two_proportions(130, 1000, 95, 600, 0.05)
    _, p = proportions_ztest([95, 130], [600, 1000])
    lo, hi = confint_proportions_2indep(95, 600, 130, 1000, method="wald", compare="diff", alpha=0.05)
    assert got["difference"] == pytest.approx(95 / 600 - 130 / 1000)
    assert got["p_value"] == pytest.approx(p)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi))


def test_backtest_reports_takeup_per_arm_and_the_challenger(tmp_path, population):
    """Customers in the challenger arm get recommendations that match what they take up; the
    back-test sees a higher take-up in that arm, and a better challenger passes its comparison."""
    features, labels = population
    ids = features.column("customer_id")
    n = len(ids)
    rng = np.random.default_rng(3)
    taken = np.zeros((n, len(PRODUCTS)))
    for i, row in enumerate(features.column("products_acquired_90d").to_pylist()):
        for p in row or []:
            taken[i, PRODUCTS.index(p)] = 1
    good = taken + rng.random(taken.shape) * 0.5  # ranks what was taken up first
    arm = challenger_arm(ids, 0.5, "s")
    props = np.where(arm[:, None], good, rng.random(taken.shape))
    true_pd = labels.column("true_pd").to_numpy()
    champion = scores_table(ids, np.clip(true_pd + rng.normal(0, 0.2, n), 1e-3, 0.99), props)
    champion = champion.set_column(champion.schema.get_field_index("recommendation_arm"), "recommendation_arm",
                                   pa.array(np.where(arm, "challenger", "champion")))
    scores = write_scores(tmp_path / "scores", champion)
    shadow = write_scores(tmp_path / "shadow", scores_table(ids, true_pd, good))
    outcomes = write_outcomes(tmp_path / "outcomes", features.select(OUTCOMES))

    report = backtest.run(CFG, scores, outcomes, DATE, str(tmp_path / "reports"), shadow)
    ab = report["ab_test"]
    assert ab["arms"]["challenger"]["customers"] == int(arm.sum())
    hit = lambda m: (taken[m] > 0)[np.arange(m.sum())[:, None], np.argsort(-good[m])[:, :5]].any(axis=1).mean()  # noqa: E731
    assert ab["arms"]["challenger"]["takeup_rate"] == pytest.approx(hit(arm))
    assert ab["test"]["difference"] > 0 and ab["test"]["p_value"] < 0.01 and ab["test"]["ci_low"] > 0
    ch = report["challenger"]
    assert ch["auc_gain"] > 0 and ch["status"] == "pass" and ch["model"]["scores_run_id"] == "r1"
    html = (tmp_path / "reports" / f"date={DATE}" / "backtest.html").read_text()
    assert "CHALLENGER PASS" in html and "two-proportion z-test" in html
    assert any(line.startswith("A/B: challenger arm take-up +") for line in backtest.summary(report))


def test_no_ab_section_without_two_arms(tmp_path, population):
    features, labels = population
    ids = features.column("customer_id")
    table = scores_table(ids, labels.column("true_pd").to_numpy(),
                         np.random.default_rng(4).random((len(ids), len(PRODUCTS))))
    report = backtest.build_report(table, features.select(OUTCOMES), CFG, DATE)
    assert report["ab_test"] is None and pc.all(pc.equal(table.column("recommendation_arm"), "champion")).as_py()
