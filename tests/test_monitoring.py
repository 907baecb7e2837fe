import datetime as dt
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from conftest import LOCAL_CONFIG
from nightscore.config import (ConfigError, MonitoringSpec, SchemaSpec, ScorecardSpec, SensitiveSpec, apply_overrides,
                               load_config)
from nightscore.monitoring import (PD_COLUMN, build_reference, build_report, categorical_distribution, feature_psi,
                                   numeric_distribution, psi, reference_band_shares, with_alerts, write_report)
from nightscore.scorecard import pd_to_score, score_to_band
from nightscore.synth import catalog_product_ids, generate

SCORECARD = ScorecardSpec()
BANDS = [b.name for b in SCORECARD.bands]
SPEC = MonitoringSpec(sensitive=[SensitiveSpec(column="age", bins=[18, 30, 50, 121], label="Age band"),
                                 SensitiveSpec(column="region")])
K = SPEC.min_group_size
SCHEMA = SchemaSpec(
    id="cid",
    pii=["email"],
    features=[
        {"name": "age", "kind": "numeric", "label": "Age", "integer": True},
        {"name": "income", "kind": "numeric", "label": "Income", "nullable": True},
        {"name": "segment", "kind": "categorical", "label": "Segment"},
        {"name": "region", "kind": "categorical", "label": "Region", "in_model": False},
        {"name": "flag", "kind": "boolean", "label": "Flag"},
        {"name": "held", "kind": "list", "label": "Held"},
        {"name": "notes", "kind": "text", "label": "Notes", "nullable": True},
    ],
)


def population(n: int, seed: int, shift: float = 0.0) -> pa.Table:
    """Rows with every feature kind, id and PII; ``shift`` moves income, segment and flag."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.3 - shift, 0.5, n)
    return pa.table({
        "cid": [f"c{seed}-{i}" for i in range(n)],
        "email": [f"person{i}@example.com" for i in range(n)],
        "age": rng.integers(18, 90, n),
        "income": pa.array(income, mask=rng.random(n) < 0.05),
        "segment": rng.choice(["a", "b", "c"], n, p=[0.5 - 0.3 * shift, 0.3, 0.2 + 0.3 * shift]),
        "region": rng.choice(["North", "South", "East"], n),
        "flag": rng.random(n) < 0.2 + 0.4 * shift,
        "held": pa.array([["P1"]] * n),
        "notes": pa.array(["note"] * n),
    })


def proxy_pd(table: pa.Table) -> np.ndarray:
    income = pc.fill_null(table["income"], 30_000.0).to_numpy()
    return 1 / (1 + np.exp(-(-3.0 - 1.2 * (np.log(income) - 10.3))))


def scores_for(pd: np.ndarray, seed: int = 0, rec_rate: float = 0.8) -> pa.Table:
    rng = np.random.default_rng(seed)
    score = pd_to_score(pd, SCORECARD)
    recs = [[{"product_id": "P2", "rank": 1, "propensity": 0.3}] if rng.random() < rec_rate else []
            for _ in range(len(pd))]
    return pa.table({
        PD_COLUMN: pa.array(pd),
        "credit_score": pa.array(score),
        "risk_band": pa.array(score_to_band(score, SCORECARD).tolist(), pa.string()),
        "recommendations": pa.array(recs, pa.list_(pa.struct([("product_id", pa.string()), ("rank", pa.int32()),
                                                              ("propensity", pa.float32())]))),
    })


def reference_for(rows: pa.Table, pd: np.ndarray | None = None, schema=SCHEMA) -> dict:
    return build_reference(rows, schema, proxy_pd(rows) if pd is None else pd, SCORECARD, K)


def report_for(cur: pa.Table, ref_rows: pa.Table, quarantined: int = 0, history=(), spec=SPEC, date="2024-05-02"):
    reference = reference_for(ref_rows)
    pd = proxy_pd(cur)
    report = build_report(date=date, scores=scores_for(pd), quarantine_rows=quarantined,
                          input_rows=cur.num_rows + quarantined, features=cur.drop_columns(["email"]),
                          reference=reference, schema=SCHEMA, spec=spec, band_names=BANDS, history=list(history),
                          scorecard=SCORECARD)
    return report, reference, pd


# --------------------------------------------------------------------------- PSI
def psi_numeric(ref, cur) -> float:
    return psi(numeric_distribution(ref, K), cur)


def psi_categorical(ref, cur) -> float:
    return psi(categorical_distribution(ref, K), cur)


def raw_psi(ref, cur, numeric: bool) -> float:
    """PSI straight from raw reference rows, as monitoring computed it before references were
    binned: the oracle the binned reference must reproduce."""
    def counts(values):
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(
            np.asarray(values, dtype=object), from_pandas=True)
        return {row["values"]: row["counts"] for row in pc.value_counts(arr).to_pylist()}

    if numeric:
        r, c = (pc.cast(v, pa.float64()).to_numpy(zero_copy_only=False) for v in (ref, cur))
        r_ok, c_ok = np.isfinite(r), np.isfinite(c)
        cuts = np.unique(np.quantile(r[r_ok], np.linspace(0, 1, 11)[1:-1]))
        p, q = (np.append(np.bincount(np.searchsorted(cuts, x[ok], side="left"), minlength=len(cuts) + 1),
                          (~ok).sum()) for x, ok in ((r, r_ok), (c, c_ok)))
    else:
        rc, cc = counts(ref), counts(cur)
        keys = list(rc.keys() | cc.keys())
        p, q = np.array([rc.get(k, 0) for k in keys]), np.array([cc.get(k, 0) for k in keys])
    p, q = np.maximum(p / p.sum(), 1e-4), np.maximum(q / q.sum(), 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def test_psi_numeric_same_distribution_is_near_zero():
    rng = np.random.default_rng(0)
    assert psi_numeric(rng.normal(size=20_000), rng.normal(size=20_000)) < 0.01


def test_psi_numeric_shifted_distribution_is_large():
    rng = np.random.default_rng(1)
    assert psi_numeric(rng.normal(size=20_000), rng.normal(1.0, 1.0, 20_000)) > 0.25


def test_psi_numeric_ties_and_constant_reference():
    rng = np.random.default_rng(2)
    counts = rng.poisson(0.3, 20_000)  # ~74% zeros: most decile edges coincide
    assert psi_numeric(counts, rng.poisson(0.3, 20_000)) < 0.01
    assert psi_numeric(counts, rng.poisson(1.5, 20_000)) > 0.25
    assert psi_numeric(np.zeros(1000), np.zeros(1000)) == pytest.approx(0.0)
    assert psi_numeric(np.zeros(1000), np.ones(1000)) > 0.25  # values above a constant reference still count


def test_psi_numeric_nulls_are_their_own_bin():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=10_000), rng.normal(size=10_000)
    ref[:1000] = np.nan
    cur_same = cur.copy()
    cur_same[:1000] = np.nan
    cur_many = cur.copy()
    cur_many[:5000] = np.nan
    assert psi_numeric(ref, cur_same) < 0.01
    assert psi_numeric(ref, cur_many) > 0.25
    # Arrow nulls and NaN are the same thing
    arrow = pa.array(cur_many, from_pandas=True)
    assert arrow.null_count == 5000
    assert psi_numeric(pa.array(ref, from_pandas=True), arrow) == pytest.approx(psi_numeric(ref, cur_many))


def test_psi_empty_side_is_nan():
    assert np.isnan(psi_numeric(np.array([1.0, 2.0]), np.array([])))
    assert np.isnan(psi_categorical(["a"], []))


def test_psi_categorical():
    rng = np.random.default_rng(4)
    ref = rng.choice(["a", "b", "c"], 10_000, p=[0.6, 0.3, 0.1])
    assert psi_categorical(ref, rng.choice(["a", "b", "c"], 10_000, p=[0.6, 0.3, 0.1])) < 0.01
    assert psi_categorical(ref, rng.choice(["a", "b", "c"], 10_000, p=[0.2, 0.3, 0.5])) > 0.25
    # a category the reference never saw, and nulls, count as categories
    assert psi_categorical(ref, np.where(rng.random(10_000) < 0.3, "new", ref)) > 0.25
    with_nulls = np.where(rng.random(10_000) < 0.3, None, ref).astype(object)
    assert psi_categorical(ref, with_nulls) > 0.25
    flags = pa.array([True, False, None] * K)
    assert psi_categorical(flags, flags) == pytest.approx(0.0)
    assert psi_categorical(flags, np.array([True, False] * 30)) > 0.25  # null is a category of its own


# --------------------------------------------------------------------------- reference
def reference_counts(reference: dict) -> list[int]:
    """Every group count a reference.json publishes: bins, categories, "other", nulls, histogram."""
    dists = [*reference["features"].values(), reference["pd"], reference["credit_score"]]
    counts = [c for d in dists for c in (d["counts"] if d["kind"] == "numeric"
                                         else [*d["categories"].values(), d["other"]])]
    return counts + [d["nulls"] for d in dists] + reference["pd_histogram"]["counts"]


def test_build_reference_holds_binned_features_and_pd_only():
    rows = population(300, seed=1)
    ref = reference_for(rows)
    assert list(ref["features"]) == ["age", "income", "segment", "region", "flag"]  # no list, text, id or PII
    assert ref["rows"] == 300 and ref["min_group_size"] == K
    assert [d["kind"] for d in ref["features"].values()] == ["numeric", "numeric", "categorical", "categorical",
                                                               "categorical"]
    assert set(ref["features"]["flag"]["categories"]) == {"true", "false"}
    assert sum(ref["features"]["age"]["counts"]) == 300
    assert ref["pd"]["mean"] == pytest.approx(proxy_pd(rows).mean())
    text = json.dumps(ref, allow_nan=False)
    assert "c1-" not in text and "example.com" not in text
    assert all(c == 0 or c >= K for c in reference_counts(ref))
    with pytest.raises(ValueError, match="shape"):
        build_reference(rows, SCHEMA, np.zeros(3), SCORECARD, K)


def test_build_reference_on_synthetic_snapshot_drops_pii_ids_labels():
    cfg = load_config(LOCAL_CONFIG)
    table, _ = generate(500, dt.date(2024, 1, 1), seed=0, product_ids=catalog_product_ids(cfg.products.catalog),
                        labels=True)
    ref = build_reference(table, cfg.schema, np.full(500, 0.05), SCORECARD, cfg.monitoring.min_group_size)
    assert set(ref["features"]) == {f.name for f in cfg.schema.features
                                    if f.kind in ("numeric", "categorical", "boolean")}
    text = json.dumps(ref)
    for column in [*cfg.schema.pii, cfg.schema.id]:
        assert not any(str(v) in text for v in table.column(column).to_pylist()[:50])


@pytest.mark.parametrize("drift", [0.0, 0.5])
def test_binned_reference_reproduces_raw_row_psi(drift):
    """PSI per feature, score PSI, mean PD and band shares against the binned reference are
    those computed from the raw reference rows, except what a group under min_group_size hides."""
    cfg = load_config(LOCAL_CONFIG)
    ids = catalog_product_ids(cfg.products.catalog)
    ref_rows, truth = generate(5000, dt.date(2024, 1, 1), seed=1, product_ids=ids)
    cur, cur_truth = generate(4000, dt.date(2024, 1, 2), seed=2, product_ids=ids, drift=drift)
    pd_ref, pd_cur = truth["true_pd"].to_numpy(), cur_truth["true_pd"].to_numpy()
    ref = build_reference(ref_rows, cfg.schema, pd_ref, SCORECARD, cfg.monitoring.min_group_size)
    binned = feature_psi(ref, cur, cfg.schema)
    assert list(binned) == list(ref["features"]) and len(binned) >= 15
    for f in cfg.schema.features:
        if f.name in binned:
            assert binned[f.name] == pytest.approx(raw_psi(ref_rows[f.name], cur[f.name], f.kind == "numeric"),
                                                   abs=1e-9), f.name
    assert psi(ref["pd"], pd_cur) == pytest.approx(raw_psi(pa.array(pd_ref), pa.array(pd_cur), True), abs=1e-9)
    assert ref["pd"]["mean"] == pytest.approx(pd_ref.mean(), rel=1e-12)
    raw_bands = score_to_band(pd_to_score(pd_ref, SCORECARD), SCORECARD)
    assert (raw_bands == "B").sum() == 4  # too few to publish: B and the band it was merged with are unknown
    shares = reference_band_shares(ref, SCORECARD)
    assert [b for b, v in shares.items() if v is None] == ["B", "C"]
    assert {b: shares[b] for b in "ADE"} == pytest.approx({b: float(np.mean(raw_bands == b)) for b in "ADE"})


def test_numeric_bins_under_min_group_size_are_merged():
    rng = np.random.default_rng(5)
    x = rng.normal(size=60)  # deciles of 6 rows each
    dist = numeric_distribution(x, K)
    assert sum(dist["counts"]) == 60 and all(c >= K for c in dist["counts"])
    assert set(dist["cuts"]) <= set(np.quantile(x, np.linspace(0, 1, 11)[1:-1]).tolist())
    assert psi(dist, x) == pytest.approx(0.0)
    with_nulls = np.append(rng.normal(size=1000), np.full(10, np.nan))
    assert numeric_distribution(with_nulls, K)["nulls"] == 0  # 10 nulls: too few to publish
    assert numeric_distribution(np.append(with_nulls, np.full(20, np.nan)), K)["nulls"] == 30
    tiny = numeric_distribution(np.arange(K - 1), K)  # fewer rows than a group: nothing of them is kept
    assert tiny == {"kind": "numeric", "cuts": [], "counts": [0], "nulls": 0}
    assert np.isnan(psi(tiny, np.arange(100)))


def test_rare_and_surplus_categories_go_to_other():
    values = ["a"] * 500 + ["b"] * 300 + ["c"] * 15 + ["d"] * 3
    dist = categorical_distribution(values + [None] * 5, K)
    # c + d (18) are too few for "other" alone, so the smallest kept category joins them; 5 nulls are dropped
    assert dist == {"kind": "categorical", "categories": {"a": 500}, "other": 318, "nulls": 0}
    assert psi(dist, values) == pytest.approx(0.0)
    assert psi(dist, ["a"] * 500 + ["c"] * 318) == pytest.approx(0.0, abs=1e-3)  # merged ones count as "other"
    many = [f"v{i:02d}" for i in range(60) for _ in range(30)]
    capped = categorical_distribution(many, K, max_categories=50)
    assert len(capped["categories"]) == 50 and capped["other"] == 300
    assert categorical_distribution(["x"] * 5, K) == {"kind": "categorical", "categories": {}, "other": 0, "nulls": 0}


def test_reference_band_shares_hide_a_small_band_and_need_the_same_scaling():
    # 5 customers score in band A, 100 in each of B..E
    pd = np.repeat([1e-4, 1e-3, 1e-2, 0.05, 0.3], [5, 100, 100, 100, 100])
    assert list(score_to_band(pd_to_score(pd[[0, 5, 105, 205, 305]], SCORECARD), SCORECARD)) == BANDS
    rows = population(405, seed=1)
    ref = reference_for(rows, pd)
    shares = reference_band_shares(ref, SCORECARD)
    assert shares["A"] is None and shares["B"] is None  # A (5) merged with B: neither is known apart
    assert shares["C"] == shares["D"] == shares["E"] == pytest.approx(100 / 405)
    assert reference_band_shares(ref, ScorecardSpec(pdo=30)) is None  # other scores from the same PDs


# --------------------------------------------------------------------------- report
REPORT_KEYS = {
    "date", "status", "input_rows", "scored_rows", "quarantined_rows", "quarantine_rate", "mean_pd",
    "reference_mean_pd", "reference_rows", "score", "band_shares", "reference_band_shares", "score_psi",
    "feature_psi", "recommendation_coverage", "mean_recommendations", "fairness", "thresholds", "alerts", "trend",
}


def test_report_has_all_keys_and_consistent_numbers():
    report, _, _ = report_for(population(4000, seed=2), population(4000, seed=1), quarantined=10)
    assert set(report) == REPORT_KEYS
    assert report["input_rows"] == 4010 and report["scored_rows"] == 4000 and report["quarantined_rows"] == 10
    assert report["quarantine_rate"] == pytest.approx(10 / 4010)
    assert list(report["band_shares"]) == BANDS
    assert sum(report["band_shares"].values()) == pytest.approx(1.0)
    assert sum(report["reference_band_shares"].values()) == pytest.approx(1.0)
    assert set(report["score"]) == {"mean", "p5", "p50", "p95"}
    assert report["score"]["p5"] <= report["score"]["p50"] <= report["score"]["p95"]
    assert set(report["feature_psi"]) == {"age", "income", "segment", "region", "flag"}
    assert 0.7 < report["recommendation_coverage"] < 0.9
    assert report["mean_recommendations"] == pytest.approx(report["recommendation_coverage"])
    json.dumps(report, allow_nan=False)  # strict JSON


def test_empty_bands_are_listed_with_zero_share():
    report, _, _ = report_for(population(200, seed=2), population(200, seed=1))
    assert list(report["band_shares"]) == BANDS
    assert all(v >= 0 for v in report["band_shares"].values())


def test_status_ok_without_drift_and_alert_when_psi_crosses_threshold():
    ref = population(5000, seed=1)
    calm, _, _ = report_for(population(5000, seed=2), ref)
    assert calm["status"] == "ok" and calm["alerts"] == []
    assert calm["score_psi"] < SPEC.psi_warn

    drifted, _, _ = report_for(population(5000, seed=2, shift=1.0), ref)
    assert drifted["status"] == "alert"
    assert drifted["score_psi"] > SPEC.psi_alert
    alerted = {a["metric"]: a for a in drifted["alerts"]}
    assert alerted["score_psi"]["level"] == "alert" and alerted["score_psi"]["threshold"] == SPEC.psi_alert
    assert "feature_psi.income" in alerted and "feature_psi.age" not in alerted
    for a in drifted["alerts"]:
        assert a["value"] > a["threshold"]
        assert set(a) == {"metric", "value", "threshold", "level"}


def test_warn_level_between_thresholds():
    ref = population(5000, seed=1)
    report, _, _ = report_for(population(5000, seed=2), ref, spec=MonitoringSpec(psi_warn=1e-6, psi_alert=10.0))
    assert report["status"] == "warn"
    assert {a["level"] for a in report["alerts"]} == {"warn"}


def test_quarantine_rate_alert():
    ref = population(2000, seed=1)
    ok, _, _ = report_for(population(2000, seed=2), ref, quarantined=50)  # 2.4%
    assert ok["status"] == "ok"
    bad, _, _ = report_for(population(2000, seed=2), ref, quarantined=200)  # 9.1%
    assert bad["status"] == "alert"
    assert [a["metric"] for a in bad["alerts"]] == ["quarantine_rate"]


def test_fairness_ratios_relative_to_most_favoured_group():
    cur = population(3000, seed=2)
    cur = cur.set_column(cur.schema.get_field_index("age"), "age",
                         pa.array(np.where(np.arange(3000) == 0, 10, cur["age"].to_numpy())))  # one out of range
    report, _, _ = report_for(cur, population(3000, seed=1))
    age = report["fairness"]["age"]
    assert age["label"] == "Age band"
    assert list(age["groups"]) == ["18–29", "30–49", "50–120", "out of range"]
    # the one customer out of range is suppressed, and with them the smallest other group, which
    # the overall figures minus the rest would otherwise give away
    assert age["groups"]["out of range"] == {"n": None, "share": None, "mean_score": None, "score_ratio": None,
                                             "recommendation_rate": None, "recommendation_ratio": None,
                                             "band_shares": None, "suppressed": f"n < {K}"}
    assert age["groups"]["18–29"]["suppressed"] == f"would reveal a group with n < {K}"
    assert age["groups"]["18–29"]["mean_score"] is None
    assert sum(g["n"] for g in age["groups"].values() if not g["suppressed"]) < 3000
    for attr in report["fairness"].values():
        groups = {name: g for name, g in attr["groups"].items() if not g["suppressed"]}
        for key, favoured in (("score_ratio", attr["favoured"]["score"]),
                              ("recommendation_ratio", attr["favoured"]["recommendation_rate"])):
            assert all(g[key] <= 1.0 + 1e-12 for g in groups.values())
            assert groups[favoured][key] == pytest.approx(1.0)
        for g in groups.values():
            assert sum(g["band_shares"].values()) == pytest.approx(1.0)
    assert list(report["fairness"]["region"]["groups"]) == ["East", "North", "South"]


def test_fairness_suppresses_groups_under_min_group_size(tmp_path):
    cur = population(1000, seed=2)
    region = np.array(cur["region"].to_pylist(), dtype=object)
    region[:2] = "Tiny"  # a group of 2 must never show its outcomes
    region[2:17], region[17:32] = "Small1", "Small2"  # 15 + 15: suppressed, and together they hide each other
    cur = cur.set_column(cur.schema.get_field_index("region"), "region", pa.array(region.tolist()))
    report, reference, pd = report_for(cur, population(1000, seed=1))
    groups = report["fairness"]["region"]["groups"]
    assert {name for name, g in groups.items() if g["suppressed"]} == {"Tiny", "Small1", "Small2"}
    assert all(groups[name]["suppressed"] == f"n < {K}" and groups[name]["mean_score"] is None
               for name in ("Tiny", "Small1", "Small2"))
    assert all(g["n"] >= K for g in groups.values() if not g["suppressed"])
    assert report["fairness"]["region"]["favoured"]["score"] not in ("Tiny", "Small1", "Small2")
    _, html_path = write_report(report, reference, pd, tmp_path)
    page = html_path.read_text()
    assert page.count(f"suppressed (n &lt; {K})") == 3


def test_fairness_requires_sensitive_columns():
    cur = population(100, seed=2).drop_columns(["region"])
    with pytest.raises(ValueError, match="region"):
        report_for(cur, population(100, seed=1), spec=MonitoringSpec(sensitive=[SensitiveSpec(column="region")]))


def test_trend_from_history_keeps_last_n_dates_and_replaces_rerun_date():
    cur, ref = population(300, seed=2), population(300, seed=1)
    history = [{"date": f"2024-04-{d:02d}", "band_shares": {"A": 1.0}, "quarantine_rate": 0.01, "score_psi": 0.02,
                "mean_pd": 0.05, "status": "ok"} for d in range(1, 31)]
    history += [{"date": "2024-05-01"}, {"date": "2024-05-02", "status": "alert"}, {"date": "2024-05-03"}]
    report, _, _ = report_for(cur, ref, history=history, spec=MonitoringSpec(history=10), date="2024-05-02")
    trend = report["trend"]
    assert len(trend) == 10
    assert [p["date"] for p in trend][-3:] == ["2024-04-30", "2024-05-01", "2024-05-02"]
    assert trend[-1]["status"] == report["status"] and trend[-1]["band_shares"] == report["band_shares"]
    assert trend[-2]["band_shares"] is None  # an old report without the key is tolerated


def test_inconsistent_counts_are_rejected():
    cur, ref = population(100, seed=2), population(100, seed=1)
    reference = reference_for(ref)
    with pytest.raises(ValueError, match="input_rows"):
        build_report(date="2024-05-02", scores=scores_for(proxy_pd(cur)), quarantine_rows=1, input_rows=100,
                     features=cur, reference=reference, schema=SCHEMA, spec=SPEC, band_names=BANDS, history=[])


def test_feature_psi_needs_current_columns():
    ref = reference_for(population(100, seed=1), np.full(100, 0.1))
    with pytest.raises(ValueError, match="income"):
        feature_psi(ref, population(100, seed=2).drop_columns(["income"]), SCHEMA)


# --------------------------------------------------------------------------- HTML
def test_write_report_is_self_contained(tmp_path):
    report, reference, pd = report_for(population(2000, seed=2, shift=0.5), population(2000, seed=1), quarantined=5,
                                       history=[{"date": "2024-05-01", "band_shares": {"A": 0.5, "B": 0.5},
                                                 "quarantine_rate": 0.01, "score_psi": 0.05, "status": "ok"}])
    json_path, html_path = write_report(report, reference, pd, tmp_path / "out")
    assert json.loads(json_path.read_text()) == report
    page = html_path.read_text()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "<script" not in page and "<link" not in page
    assert page.count('<img src="data:image/png;base64,') >= 4
    assert report["status"].upper() in page
    assert "<h3>Age band</h3>" in page and "<h3>region</h3>" in page  # label, else the column name
    for a in report["alerts"]:
        assert a["metric"] in page
    assert "example.com" not in page  # no PII in the page


def test_report_html_escapes_group_names(tmp_path):
    cur = population(200, seed=2)
    cur = cur.set_column(cur.schema.get_field_index("region"), "region", pa.array(["<b>x</b>"] * 200))
    report, reference, pd = report_for(cur, population(200, seed=1))
    _, html_path = write_report(report, reference, pd, tmp_path)
    page = html_path.read_text()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_report_shows_model_outcomes_and_challenger_and_takes_outside_alerts(tmp_path):
    """The nightly extras: the model in force, the back-test trend, the champion/challenger
    comparison (or the challenger's failure), and alerts raised beside the report."""
    report, reference, pd = report_for(population(400, seed=2), population(400, seed=1))
    assert report["status"] == "ok"
    cmp = {"champion_model": ["m1"], "challenger_model": ["m2"], "customers": 400, "champion_only": 0,
           "challenger_only": 0, "pd_pearson": 0.9, "pd_spearman": 0.88, "top_k": 5, "overlap@5": 0.6,
           "score_difference": {"mean": 1.0, "p5": -20.0, "p25": -5.0, "p50": 0.0, "p75": 5.0, "p95": 22.0,
                                "share_moved_over_20": 0.1, "edges": [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0],
                                "counts": [5, 30, 150, 150, 50, 15]},
           "band_migration": {"bands": BANDS, "counts": np.eye(len(BANDS), dtype=int).tolist(), "unchanged": 1.0}}
    report = {**report, "challenger": cmp,
              "model_in_force": {"model": "models/m1", "manifest_sha256": "ab", "since": "2024-04-01T00:00:00+00:00",
                                 "by": "mrm", "why": "MV-17 <sign-off>"},
              "outcomes": [{"date": "2024-03-01", "status": "pass", "auc": 0.71, "mean_pd": 0.04, "default_rate": 0.05,
                            "failed_band_share": 0.0, "challenger_auc": 0.73}]}
    flagged = with_alerts(report, [{"metric": "back-test of 2024-03-01: auc", "value": 0.55, "threshold": 0.6,
                                    "level": "alert"}])
    assert flagged["status"] == "alert" and flagged["trend"][-1]["status"] == "alert" and report["status"] == "ok"
    _, html_path = write_report(flagged, reference, pd, tmp_path)
    page = html_path.read_text()
    assert "MV-17 &lt;sign-off&gt;" in page and "back-test of 2024-03-01: auc" in page
    assert "Recommendation overlap@5" in page and page.count('<img src="data:image/png;base64,') >= 6
    failed = with_alerts({**report, "challenger": {"error": "ModelError: broken"}},
                         [{"metric": "challenger run failed", "value": None, "threshold": None, "level": "warn"}])
    assert failed["status"] == "warn"
    _, html_path = write_report(failed, reference, pd, tmp_path / "failed")
    assert "The challenger run failed (ModelError: broken)" in html_path.read_text()


# --------------------------------------------------------------------------- config
def test_monitoring_config_section():
    cfg = load_config(LOCAL_CONFIG)
    sens = {s.column: s for s in cfg.monitoring.sensitive}
    assert sens["age"].bins == [18, 25, 35, 50, 65, 121] and sens["age"].label == "Age band"
    assert sens["region"].bins is None
    assert cfg.monitoring.psi_alert == 0.25


def test_monitoring_config_rejects_pii_and_bad_thresholds(tmp_path):
    import yaml

    raw = yaml.safe_load(LOCAL_CONFIG.read_text())
    for override, match in (("monitoring.psi_warn=0.5", "psi_warn"),
                            ("monitoring.sensitive=[{column: email}]", "PII"),
                            ("monitoring.sensitive=[{column: age, bins: [30, 18]}]", "increasing")):
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(apply_overrides(json.loads(json.dumps(raw)), [override])))
        with pytest.raises(ConfigError, match=match):
            load_config(path)
    with pytest.raises(ValidationError):
        SensitiveSpec(column="age", bins=[18])


# --------------------------------------------------------------------------- synthetic drift end to end
@pytest.fixture(scope="module")
def synthetic():
    cfg = load_config(LOCAL_CONFIG)
    ids = catalog_product_ids(cfg.products.catalog)
    day = dt.date(2024, 1, 1)
    ref_rows, _ = generate(5000, day, seed=1, product_ids=ids)
    cols = ["credit_utilization", "debt_to_income", "n_late_payments_12m"]
    stats = {c: (np.mean(ref_rows[c].to_numpy()), np.std(ref_rows[c].to_numpy())) for c in cols}

    def pd(t: pa.Table) -> np.ndarray:
        z = sum((t[c].to_numpy() - m) / s for c, (m, s) in stats.items())
        return 1 / (1 + np.exp(-(-3.0 + 0.5 * z)))

    reference = build_reference(ref_rows, cfg.schema, pd(ref_rows), SCORECARD, cfg.monitoring.min_group_size)
    return cfg, ids, reference, pd


@pytest.mark.parametrize("drift", [0.0, 1.0])
def test_synthetic_drift_trips_alerts(synthetic, drift):
    cfg, ids, reference, pd = synthetic
    cur, _ = generate(5000, dt.date(2024, 1, 2), seed=2, product_ids=ids, drift=drift)
    p = pd(cur)
    report = build_report(date="2024-01-02", scores=scores_for(p), quarantine_rows=0, input_rows=cur.num_rows,
                          features=cur.drop_columns(cfg.schema.pii), reference=reference, schema=cfg.schema,
                          spec=cfg.monitoring, band_names=BANDS, history=[], scorecard=SCORECARD)
    top_feature_psi = max(report["feature_psi"].values())
    if drift == 0.0:
        assert report["score_psi"] < cfg.monitoring.psi_warn
        assert top_feature_psi < cfg.monitoring.psi_warn
        assert report["status"] == "ok"
    else:
        assert report["score_psi"] > cfg.monitoring.psi_alert
        assert top_feature_psi > cfg.monitoring.psi_alert
        assert report["status"] == "alert"
    assert set(report["fairness"]) == {"age", "region"}
