"""The back-test job on synthetic customers whose true PDs are known: no model is trained.

Scores are written through the real commit protocol from the generator's truth, so "a
perfect model" is the oracle PD (and recommends the truly likeliest products) and a
mis-calibrated one is that PD scaled.
"""
import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.stats import beta, ks_2samp
from sklearn.metrics import brier_score_loss, roc_auc_score

from conftest import LOCAL_CONFIG, REPO
from nightscore import backtest, partition, storage, synth
from nightscore.config import load_config
from nightscore.scoring.outputs import SCHEMA, credit

DATE = dt.date(2026, 11, 23)
CFG = load_config(LOCAL_CONFIG)
PRODUCTS = synth.catalog_product_ids(CFG.products.catalog)
K = CFG.products.top_k


@pytest.fixture(scope="module")
def population() -> tuple[pa.Table, pa.Table]:
    return synth.generate(4000, DATE, seed=7, product_ids=PRODUCTS, labels=True)


def scores_table(ids: pa.Array, pd: np.ndarray, propensity: np.ndarray, cfg=CFG) -> pa.Table:
    """What jobs/score.py would write for these PDs, recommending the k likeliest products not held."""
    score, band = credit(pd, cfg, len(pd))
    top = np.argsort(-propensity, axis=1, kind="stable")[:, :K]
    recs = [[{"product_id": PRODUCTS[j], "rank": r + 1, "propensity": float(propensity[i, j])}
             for r, j in enumerate(row) if propensity[i, j] > 0] for i, row in enumerate(top)]
    n = len(pd)
    return pa.table({"customer_id": ids, "snapshot_date": pa.array([DATE] * n, pa.date32()), "pd_12m": pd,
                     "credit_score": score.astype(np.int32), "risk_band": band, "reason_codes": [[]] * n,
                     "recommendations": recs, "model_version": ["oracle"] * n, "run_id": ["r1"] * n,
                     "recommendation_arm": ["champion"] * n}, schema=SCHEMA)


def write_scores(root, table: pa.Table, commit: bool = True) -> str:
    fs, path = storage.filesystem(str(root))
    rel = "run=r1/scores/part-0.parquet"
    storage.write_parquet(table, fs, storage.join(partition.date_dir(path, DATE), rel))
    if commit:
        partition.commit(fs, path, DATE, {"run_id": "r1", "files": {"scores": [rel], "quarantine": []}})
    return str(root)


def write_outcomes(root, table: pa.Table) -> str:
    fs, path = storage.filesystem(str(root))
    storage.write_parquet(table, fs, storage.join(partition.date_dir(path, DATE), "part-0.parquet"))
    return str(root)


def truth_arrays(truth: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return (truth.column("true_pd").to_numpy(),
            np.column_stack([truth.column(f"p_{p}").to_numpy() for p in PRODUCTS]))


def setup(tmp_path, population, scale: float = 1.0, commit: bool = True, outcome_columns=None) -> list[str]:
    """Scores (oracle PD x scale) and outcomes on disk; returns the job's path arguments."""
    snap, truth = population
    pd, propensity = truth_arrays(truth)
    scores = write_scores(tmp_path / "scores", scores_table(snap.column("customer_id"), np.minimum(pd * scale, 1.0),
                                                            propensity), commit)
    columns = outcome_columns or ["customer_id", "default_12m", "products_acquired_90d", "region"]
    outcomes = write_outcomes(tmp_path / "outcomes", snap.select(columns))
    return ["--scores", scores, "--outcomes", outcomes, "--date", str(DATE), "--out", str(tmp_path / "out")]


def job(args: list[str], *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "backtest.py"), "--config", str(LOCAL_CONFIG), *args, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def read_report(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / f"date={DATE}" / backtest.JSON_NAME).read_text())


def test_perfect_model_passes_and_metrics_match_sklearn(tmp_path, population):
    r = job(setup(tmp_path, population))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "status: PASS" in r.stdout
    report = read_report(tmp_path)
    snap, truth = population
    y = snap.column("default_12m").to_numpy(zero_copy_only=False).astype(bool)
    pd, _ = truth_arrays(truth)
    m = report["default"]["metrics"]
    assert abs(m["auc"] - roc_auc_score(y, pd)) < 1e-9
    assert abs(m["gini"] - (2 * roc_auc_score(y, pd) - 1)) < 1e-9
    assert abs(m["brier"] - brier_score_loss(y, pd)) < 1e-12
    assert abs(m["ks"] - ks_2samp(pd[y], pd[~y]).statistic) < 1e-9

    tested = [b for b in report["default"]["bands"] if b["tested"]]
    assert len(tested) >= 3 and all(b["passed"] for b in tested) and report["breaches"] == []
    _, bands = credit(pd, CFG, len(pd))
    for b in tested:  # each band's figures and p-value, recomputed from the rows
        rows = np.isin(bands, b["band"].split("+"))
        d = int(y[rows].sum())
        assert b["customers"] == rows.sum() and b["defaults"] == d
        assert b["p_value"] == pytest.approx(beta.cdf(pd[rows].mean(), d + 0.5, rows.sum() - d + 0.5), rel=1e-9)
    assert sum(d["customers"] for d in report["default"]["deciles"]) == len(y)

    recs = report["recommendations"]
    assert 0 < recs[f"ndcg@{K}"] <= 1 and 0 < recs[f"hit_rate@{K}"] <= 1
    uplifts = [p["uplift"] for p in recs["products"] if p["uplift"] is not None]
    assert uplifts and np.mean(uplifts) > 0  # the oracle recommends what customers then take up

    page = (tmp_path / "out" / f"date={DATE}" / backtest.HTML_NAME).read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "http" not in page
    for text in (page, json.dumps(report)):  # aggregates only: no customer id anywhere
        assert snap.column("customer_id")[0].as_py() not in text and "C000" not in text


def test_underestimated_pd_fails_calibration_and_exits_3(tmp_path, population):
    r = job(setup(tmp_path, population, scale=1 / 3))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "threshold crossed" in r.stderr and "breach: failed_band_share" in r.stdout
    report = read_report(tmp_path)  # written before the exit
    assert report["status"] == "fail" and report["default"]["bands_failed"]
    assert (tmp_path / "out" / f"date={DATE}" / backtest.HTML_NAME).exists()


def test_overestimated_pd_fails_only_the_two_sided_test(tmp_path, population):
    args = setup(tmp_path, population, scale=3.0)
    one_sided = backtest.run(CFG, args[1], args[3], DATE, args[7])
    assert one_sided["status"] == "pass" and not one_sided["default"]["bands_failed"]
    cfg = load_config(LOCAL_CONFIG, ["backtest.calibration_test=two-sided"])
    two_sided = backtest.run(cfg, args[1], args[3], DATE, args[7])
    assert two_sided["status"] == "fail" and {"D", "E"} <= set(two_sided["default"]["bands_failed"])


def test_missing_and_unscored_outcomes_are_counted(tmp_path, population):
    snap, truth = population
    pd, propensity = truth_arrays(truth)
    scores = write_scores(tmp_path / "scores", scores_table(snap.column("customer_id"), pd, propensity))
    out = snap.select(["customer_id", "default_12m", "products_acquired_90d"])
    keep = np.arange(out.num_rows) >= 300  # 300 scored customers have no outcome row
    unknown = np.arange(out.num_rows) < 350  # ... and 50 more have a row with an unknown default
    out = out.set_column(1, "default_12m", pc.if_else(pa.array(unknown), pa.scalar(None, pa.bool_()),
                                                      out.column("default_12m"))).filter(pa.array(keep))
    strangers = pa.table({"customer_id": [f"X{i}" for i in range(30)] + [None] * 5, "default_12m": [False] * 35,
                          "products_acquired_90d": [[]] * 35}, schema=out.schema)
    outcomes = write_outcomes(tmp_path / "outcomes", pa.concat_tables([out, strangers]))
    report = backtest.run(CFG, scores, outcomes, DATE, str(tmp_path / "out"))
    c = report["coverage"]
    assert c == {"scored": 4000, "matched": 3700, "with_outcome": 3650, "without_outcome": 350,
                 "outcome_rows": 3735, "outcome_rows_without_id": 5, "outcome_rows_with_repeated_id": 0,
                 "outcomes_without_score": 30, "share_with_outcome": 3650 / 4000}
    assert report["default"]["customers"] == 3650
    assert report["recommendations"]["customers"] == 3700
    assert report["breaches"] == []  # 91.25 % covered: above the default 90 %
    strict = backtest.run(load_config(LOCAL_CONFIG, ["backtest.min_coverage=0.95"]), scores, outcomes, DATE,
                          str(tmp_path / "out"))
    assert strict["breaches"] == [{"metric": "coverage", "value": 3650 / 4000, "threshold": 0.95}]


def test_an_id_on_several_outcome_rows_is_left_out_and_counted(tmp_path, population):
    """Two rows for one customer (a data feed's duplicate) are ambiguous: neither is used."""
    snap, truth = population
    pd, propensity = truth_arrays(truth)
    scores = write_scores(tmp_path / "scores", scores_table(snap.column("customer_id"), pd, propensity))
    out = snap.select(["customer_id", "default_12m", "products_acquired_90d"])
    outcomes = write_outcomes(tmp_path / "outcomes", pa.concat_tables([out, out.slice(7, 1), out.slice(9, 1)]))
    c = backtest.run(CFG, scores, outcomes, DATE, str(tmp_path / "out"))["coverage"]
    assert (c["outcome_rows"], c["outcome_rows_with_repeated_id"], c["matched"], c["without_outcome"]) == \
        (4002, 4, 3998, 2)


def test_rerun_writes_the_same_report(tmp_path, population):
    args = setup(tmp_path, population)
    folder = tmp_path / "out" / f"date={DATE}"
    backtest.run(CFG, args[1], args[3], DATE, args[7])
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    backtest.run(CFG, args[1], args[3], DATE, args[7])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first
    assert sorted(first) == [backtest.HTML_NAME, backtest.JSON_NAME]  # no temp files left behind


def test_reads_and_writes_s3(s3_bucket, population):
    snap, truth = population
    pd, propensity = truth_arrays(truth)
    base = f"s3://{s3_bucket}"
    scores = write_scores(f"{base}/scores", scores_table(snap.column("customer_id"), pd, propensity))
    outcomes = write_outcomes(f"{base}/outcomes", snap.select(["customer_id", "default_12m", "products_acquired_90d"]))
    report = backtest.run(CFG, scores, outcomes, DATE, f"{base}/backtests")
    assert report["report_html"] == f"{base}/backtests/date={DATE}/{backtest.HTML_NAME}"
    fs, path = storage.filesystem(report["report_json"])
    assert storage.read_json(fs, path)["coverage"]["with_outcome"] == 4000
    assert fs.get_file_info(path.replace(backtest.JSON_NAME, backtest.HTML_NAME)).size > 10_000


def test_uncommitted_scores_date_fails_with_exit_1(tmp_path, population):
    r = job(setup(tmp_path, population, commit=False))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no committed manifest" in r.stderr and str(DATE) in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_outcome_column_fails_naming_it(tmp_path, population):
    r = job(setup(tmp_path, population, outcome_columns=["customer_id", "products_acquired_90d"]))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "missing outcome column(s) default_12m" in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_threshold_is_a_config_error(tmp_path):
    r = job(["--scores", "s", "--outcomes", "o", "--date", str(DATE), "--out", str(tmp_path)], "backtest.alpha=2")
    assert r.returncode == 2 and "backtest.alpha" in r.stderr


def test_small_bands_are_merged_with_a_neighbour_and_tested_together(population):
    snap, truth = population
    pd, propensity = truth_arrays(truth)
    scores = scores_table(snap.column("customer_id"), pd, propensity)
    bands = np.array(scores.column("risk_band").to_pylist(), dtype=object)
    bands[:5], bands[5:30] = "A", "B"  # 5 < 20 customers in A; its only neighbour B holds 25
    scores = scores.set_column(4, "risk_band", pa.array(bands, pa.string()))
    rows = backtest.build_report(scores, snap, CFG, DATE)["default"]["bands"]
    assert [b["band"] for b in rows] == ["A+B", "C", "D", "E"]
    assert rows[0]["customers"] == np.isin(bands, ["A", "B"]).sum() and rows[0]["tested"]
    assert sum(b["customers"] for b in rows) == 4000 and min(b["customers"] for b in rows) >= 20


def test_ranking_metrics_on_a_hand_worked_case():
    cfg = load_config(LOCAL_CONFIG, ["monitoring.min_group_size=1"])
    p = PRODUCTS
    recommended = [[p[0], p[1]], [p[2]], [], [p[4], p[5], p[6], p[7], p[8]]]
    taken = [[p[1]], [p[3]], [], [p[8], p[9]]]
    scores = pa.table({"customer_id": ["a", "b", "c", "d"], "pd_12m": [0.1, 0.2, 0.3, 0.4],
                       "risk_band": ["D"] * 4, "model_version": ["m"] * 4, "run_id": ["r"] * 4,
                       "recommendations": [[{"product_id": x, "rank": r + 1, "propensity": 0.5}
                                            for r, x in enumerate(row)] for row in recommended]},
                      schema=pa.schema([SCHEMA.field(n) for n in ("customer_id", "pd_12m", "risk_band", "model_version",
                                                                  "run_id", "recommendations")]))
    outcomes = pa.table({"customer_id": ["a", "b", "c", "d"], "default_12m": [False, True, False, False],
                         "products_acquired_90d": taken})
    recs = backtest.build_report(scores, outcomes, cfg, DATE)["recommendations"]
    # a: hit at rank 2; b: a one-item list, its take-up never shown (the empty slots earn nothing);
    # c: took nothing up, so not counted; d: hit at rank 5 of two take-ups
    ndcg = [1 / np.log2(3), 0.0, (1 / np.log2(6)) / (1 + 1 / np.log2(3))]
    assert recs["customers_with_takeup"] == 3
    assert recs[f"hit_rate@{K}"] == pytest.approx(2 / 3)
    assert recs[f"ndcg@{K}"] == pytest.approx(np.mean(ndcg), rel=1e-12)
    by_id = {x["product_id"]: x for x in recs["products"]}
    assert by_id[p[1]]["takeup_recommended"] == 1.0 and by_id[p[1]]["takeup_not_recommended"] == 0.0
    assert by_id[p[3]]["recommended"] == 0 and by_id[p[3]]["takeup_recommended"] is None
