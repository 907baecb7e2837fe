"""Synthetic snapshots: contract columns, determinism, known truth, corruption and the CLI."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nightscore import synth
from nightscore.config import ConfigError, SchemaSpec, load_config
from nightscore.schema import required_columns

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "jobs" / "configs" / "local.yaml"
DATE = dt.date(2024, 1, 31)
N = 20_000


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def products() -> list[str]:
    return synth.catalog_product_ids("builtin:catalog.yaml")


@pytest.fixture(scope="module")
def labelled(products):
    return synth.generate(N, DATE, 11, products, labels=True)


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False)


def _psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    edges = np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1]
    p = np.bincount(np.searchsorted(edges, ref), minlength=bins) / len(ref) + 1e-6
    q = np.bincount(np.searchsorted(edges, cur), minlength=bins) / len(cur) + 1e-6
    return float(np.sum((q - p) * np.log(q / p)))


def test_columns_and_types_match_config(cfg, products, labelled):
    snap, _ = synth.generate(500, DATE, 1, products)
    expected = {"customer_id", "snapshot_date", *cfg.schema.pii, *(f.name for f in cfg.schema.features)}
    assert set(snap.column_names) == expected
    for name, typ in required_columns(cfg.schema).items():
        assert snap.schema.field(name).type == typ, name
    for pii in cfg.schema.pii:
        assert snap.schema.field(pii).type == pa.string()

    labelled_snap, _ = labelled
    assert set(labelled_snap.column_names) == expected | {"default_12m", "products_acquired_90d"}
    for name, typ in required_columns(cfg.schema, with_labels=True).items():
        assert labelled_snap.schema.field(name).type == typ, name


def test_truth_layout(products, labelled):
    snap, truth = labelled
    assert truth.column_names == ["customer_id", "true_pd", *(f"p_{p}" for p in products)]
    assert truth["customer_id"].equals(snap["customer_id"])
    assert all(truth.schema.field(c).type == pa.float64() for c in truth.column_names[1:])
    held = snap["products_held"].to_pylist()
    for j, p in enumerate(products):
        prop = _np(truth[f"p_{p}"])
        assert ((prop >= 0) & (prop <= 1)).all()
        holds = np.array([p in h for h in held])
        assert (prop[holds] == 0).all()


def test_deterministic_and_seed_sensitive(products):
    a = synth.generate(3_000, DATE, 5, products, labels=True, drift=0.3)
    b = synth.generate(3_000, DATE, 5, products, labels=True, drift=0.3)
    c = synth.generate(3_000, DATE, 6, products, labels=True, drift=0.3)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[0].drop_columns(["customer_id"]).equals(c[0].drop_columns(["customer_id"]))
    assert a[0]["customer_id"].equals(c[0]["customer_id"])  # ids depend on id_offset only


def test_ids_unique_and_offset(products):
    snap, _ = synth.generate(1_000, DATE, 1, products, id_offset=123_000)
    ids = snap["customer_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    assert ids[0] == "C000123000" and ids[-1] == "C000123999"
    assert snap["snapshot_date"].unique().to_pylist() == [DATE]
    empty, truth = synth.generate(0, DATE, 1, products, labels=True)
    assert empty.num_rows == 0 and truth.num_rows == 0


def test_values_within_config(cfg, products, labelled):
    snap, _ = labelled
    for f in cfg.schema.features:
        col = snap[f.name]
        if not f.nullable:
            assert col.null_count == 0, f.name
        if f.kind == "numeric":
            values = _np(col.drop_null())
            if f.min is not None:
                assert values.min() >= f.min, f.name
            if f.max is not None:
                assert values.max() <= f.max, f.name
        if f.kind == "categorical" and f.values:
            assert set(col.unique().to_pylist()) <= set(f.values), f.name
    assert set(pc.list_flatten(snap["products_held"]).to_pylist()) <= set(products)
    age = _np(snap["age"])
    assert age.min() >= 18 and age.max() <= 85
    assert 0 < snap["months_since_last_delinquency"].null_count < N
    assert 0 < snap["employment_years"].null_count < N
    assert (_np(snap["avg_monthly_balance"]) < 0).any()
    limit, balance, util = (_np(snap[c]) for c in ("total_credit_limit", "revolving_balance", "credit_utilization"))
    has = limit > 0
    np.testing.assert_allclose(util[has], balance[has] / limit[has])
    assert (util[~has] == 0).all()
    emp, ages = np.array(snap["employment_status"].to_pylist()), age
    assert ages[emp == "retired"].mean() > 60 and ages[emp == "student"].mean() < 30


def test_notes_share_signal_and_contacts(labelled):
    snap, truth = labelled
    notes = snap["interaction_notes"]
    assert 0.55 < 1 - notes.null_count / N < 0.65
    written = notes.drop_null()
    contact = _np(pc.match_substring_regex(written, r"07700 900\d{3}|@example\.(com|org|net)"))
    assert 0.05 < contact.mean() < 0.15
    hardship = _np(pc.match_substring_regex(notes, "payday|lost their job|hardship|missed payment").fill_null(False))
    pd_ = _np(truth["true_pd"])
    assert pd_[hardship].mean() > 1.5 * pd_[~hardship].mean()
    mortgage_talk = _np(pc.match_substring(notes, "mortgage").fill_null(False))
    ftb = _np(truth["p_MORTGAGE_FTB"])
    assert ftb[mortgage_talk].mean() > 3 * ftb[~mortgage_talk].mean()


def test_default_rate_and_truth_signal(labelled):
    snap, truth = labelled
    y = _np(snap["default_12m"])
    pd_ = _np(truth["true_pd"])
    assert 0.06 < y.mean() < 0.10
    assert abs(pd_.mean() - y.mean()) < 0.01
    ranks = pd_.argsort().argsort()
    auc = (ranks[y].mean() - (y.sum() - 1) / 2) / (~y).sum()
    assert auc > 0.75
    acquired = _np(pc.list_value_length(snap["products_acquired_90d"]))
    assert 0.1 < acquired.mean() < 2
    pairs = zip(snap["products_held"].to_pylist(), snap["products_acquired_90d"].to_pylist())
    assert not any(set(held) & set(acq) for held, acq in pairs)


def test_drift_shifts_population(products):
    ref, ref_truth = synth.generate(N, DATE, 1, products)
    same, same_truth = synth.generate(N, DATE, 2, products)
    drifted, drifted_truth = synth.generate(N, DATE, 2, products, drift=0.5)
    mean = lambda t, c: pc.mean(t[c]).as_py()  # noqa: E731
    assert mean(drifted, "annual_income") < 0.92 * mean(ref, "annual_income")
    assert mean(drifted, "credit_utilization") > 1.2 * mean(ref, "credit_utilization")
    assert mean(drifted, "age") < mean(ref, "age") - 2
    assert mean(drifted_truth, "true_pd") > 1.5 * mean(ref_truth, "true_pd")
    ref_pd = _np(ref_truth["true_pd"])
    assert _psi(ref_pd, _np(same_truth["true_pd"])) < 0.01
    assert _psi(ref_pd, _np(drifted_truth["true_pd"])) > 0.1


def _kinds_found(before: pa.Table, after: pa.Table, schema: SchemaSpec) -> dict[str, int]:
    """Count rows showing each corruption kind, judged only from the data and the schema."""
    found = {k: 0 for k in synth.CORRUPTION_KINDS}
    ids = after[schema.id]
    found["null_id"] = ids.null_count
    found["duplicate_id"] = len(ids) - ids.null_count - len(pc.unique(ids.drop_null()))
    if schema.date:
        found["wrong_date"] = int((~_np(pc.equal(after[schema.date], before[schema.date]))).sum())
    for f in schema.features:
        col = after[f.name]
        if not f.nullable:
            found["null_feature"] += col.null_count
        if f.kind == "numeric":
            v = _np(col.drop_null()).astype(float)
            found["out_of_range"] += int(((f.min is not None) & (v < (f.min or 0))).sum())
            found["out_of_range"] += int(((f.max is not None) & (v > (f.max or 0))).sum())
        if f.kind == "categorical" and f.values:
            found["bad_category"] += int((~_np(pc.is_in(col.drop_null(), pa.array(f.values)))).sum())
        if f.kind == "list" and f.values:
            found["bad_list_item"] += int((~_np(pc.is_in(pc.list_flatten(col), pa.array(f.values)))).sum())
    return found


def test_corrupt_hits_every_kind_evenly(cfg, products):
    schema = cfg.schema.model_copy(update={"features": [
        f.model_copy(update={"values": products}) if f.name == "products_held" else f for f in cfg.schema.features
    ]})
    snap, _ = synth.generate(7_000, DATE, 3, products)
    bad = synth.corrupt(snap, schema, 0.1, seed=9)
    assert bad.num_rows == snap.num_rows and bad.schema.equals(snap.schema)
    assert synth.corruption_kinds(snap, schema) == list(synth.CORRUPTION_KINDS)
    changed = np.zeros(snap.num_rows, dtype=bool)
    for name in snap.column_names:
        a, b = snap[name].combine_chunks(), bad[name].combine_chunks()
        changed |= np.array([x != y for x, y in zip(a.to_pylist(), b.to_pylist())])
    assert changed.sum() == 700
    found = _kinds_found(snap, bad, schema)
    assert all(100 <= count <= 120 for count in found.values()), found
    assert synth.corrupt(snap, schema, 0.1, seed=9).equals(bad)
    assert synth.corrupt(snap, schema, 0.0, seed=9).equals(snap)


def test_corrupt_is_generic():
    """Any schema: no date column, different feature names, int32 storage."""
    schema = SchemaSpec.model_validate({
        "id": "applicant",
        "features": [
            {"name": "duration", "kind": "numeric", "label": "Duration", "min": 4, "max": 72, "integer": True},
            {"name": "purpose", "kind": "categorical", "label": "Purpose", "values": ["car", "radio/tv"]},
            {"name": "comment", "kind": "text", "label": "Comment", "nullable": True},
        ],
    })
    n = 1_000
    table = pa.table({
        "applicant": pa.array([f"A{i}" for i in range(n)]),
        "duration": pa.array(np.full(n, 12, dtype=np.int32)),
        "purpose": pa.array(["car"] * n),
        "comment": pa.nulls(n, pa.string()),
    })
    kinds = synth.corruption_kinds(table, schema)
    assert kinds == ["null_id", "duplicate_id", "null_feature", "out_of_range", "bad_category"]
    bad = synth.corrupt(table, schema, 0.5, seed=1)
    assert bad.num_rows == n and bad.schema.equals(table.schema)
    found = _kinds_found(table, bad, schema)
    assert all(found[k] >= 90 for k in kinds), found


def test_catalog_product_ids(tmp_path):
    ids = synth.catalog_product_ids("builtin:catalog.yaml")
    assert 15 <= len(ids) <= 30 and ids[0] == "CUR_ACCOUNT"
    own = tmp_path / "cat.yaml"
    own.write_text("products:\n  - {product_id: SAVER_X}\n  - {product_id: WIDGET}\n")
    assert synth.catalog_product_ids(str(own)) == ["SAVER_X", "WIDGET"]
    snap, truth = synth.generate(200, DATE, 1, ["SAVER_X", "WIDGET"], labels=True)
    assert truth.column_names[2:] == ["p_SAVER_X", "p_WIDGET"]
    with pytest.raises(ConfigError, match="does not exist"):
        synth.catalog_product_ids(str(tmp_path / "missing.yaml"))
    own.write_text("products: 3\n")
    with pytest.raises(ConfigError, match="product_id"):
        synth.catalog_product_ids(str(own))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "make_snapshots.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_partition_and_truth(tmp_path):
    out = tmp_path / "snaps"
    (out / "date=2024-01-31").mkdir(parents=True)
    (out / "date=2024-01-31" / "part-00009.parquet").write_text("stale")
    res = _run("--out", str(out), "--date", "2024-01-31", "--customers", "3000", "--labels",
               "--seed", "4", "--corrupt-fraction", "0.05")
    assert res.returncode == 0, res.stderr
    files = sorted((out / "date=2024-01-31").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    snap = pa.concat_tables(pq.read_table(f) for f in files)
    truth = pq.read_table(out / "_truth" / "date=2024-01-31" / "truth.parquet")
    assert snap.num_rows == truth.num_rows == 3000
    assert "default_12m" in snap.column_names
    assert snap["customer_id"].null_count > 0  # corrupted rows are there
    assert str(out / "date=2024-01-31") in res.stdout and "rows/s" in res.stdout

    again = _run("--out", str(out), "--date", "2024-01-31", "--customers", "3000", "--labels",
                 "--seed", "4", "--corrupt-fraction", "0.05", "--files", "3")
    assert again.returncode == 0, again.stderr
    files3 = sorted((out / "date=2024-01-31").glob("*.parquet"))
    assert len(files3) == 3


@pytest.mark.parametrize("args, message", [
    (["--date", "2024-02-30"], "--date"),
    (["--date", "2024-01-31", "train.epochs=abc"], "train.epochs"),
    (["--date", "2024-01-31", "--config", "/nonexistent.yaml"], "does not exist"),
    (["--date", "2024-01-31", "--corrupt-fraction", "2"], "--corrupt-fraction"),
])
def test_cli_bad_usage_exits_2(tmp_path, args, message):
    res = _run("--out", str(tmp_path / "o"), "--customers", "10", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()
