"""Product catalog loading, each suitability rule on its own, and top-k recommendations (SPEC §3)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from nightscore.config import SuitabilityColumns, SuitabilitySpec
from nightscore.suitability import (
    Catalog,
    CatalogError,
    Product,
    inputs_from_table,
    load_catalog,
    recommend,
    rule_masks,
    suitable_mask,
)

# --------------------------------------------------------------------------- fixtures
CATALOG = Catalog(
    (
        Product("SAVER", "Saver", "deposit", 1, is_credit=False, complex=False),
        Product("CARD", "Card", "credit_card", 2, is_credit=True, complex=False, min_credit_score=650),
        Product("FUND_HI", "High-risk fund", "fund", 4, is_credit=False, complex=False),
        Product("FUND_CX", "Complex fund", "fund", 2, is_credit=False, complex=True),
        Product("YOUTH", "Youth saver", "deposit", 1, is_credit=False, complex=False, max_age=25),
        Product("INS_RISKY", "Risky insurance", "insurance", 4, is_credit=False, complex=False),
    )
)
COL = {pid: j for j, pid in enumerate(CATALOG.ids)}


def customer(**changes: Any) -> dict[str, Any]:
    """Keyword arguments for one customer whom every rule lets through to every product."""
    kw: dict[str, Any] = {
        "credit_score": np.array([800]),
        "risk_tolerance": np.array([5]),
        "experience": np.array(["advanced"], dtype=object),
        "vulnerable": np.array([False]),
        "age": np.array([22]),
        "held": [[]],
    }
    kw.update(changes)
    return kw


def test_permissive_customer_passes_everything() -> None:
    assert suitable_mask(CATALOG, SuitabilitySpec(), **customer()).all()


# (rule switch, customer change, products only that rule blocks)
RULE_CASES = [
    ("risk_tolerance", {"risk_tolerance": np.array([3])}, ["FUND_HI"]),
    ("complex_needs_experience", {"experience": np.array(["basic"], dtype=object)}, ["FUND_CX"]),
    ("credit_min_score", {"credit_score": np.array([649])}, ["CARD"]),
    ("vulnerable_protection", {"vulnerable": np.array([True])}, ["CARD", "FUND_HI", "INS_RISKY"]),
    ("age_bounds", {"age": np.array([26])}, ["YOUTH"]),
    ("exclude_held", {"held": [["SAVER"]]}, ["SAVER"]),
]


@pytest.mark.parametrize("rule, change, blocked", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_each_rule_alone_blocks_and_can_be_switched_off(rule: str, change: dict, blocked: list[str]) -> None:
    kw = customer(**change)
    masks = rule_masks(CATALOG, SuitabilitySpec(), **kw)
    for name, mask in masks.items():
        expect = [pid not in blocked for pid in CATALOG.ids] if name == rule else [True] * len(CATALOG)
        assert mask[0].tolist() == expect, name
    suitable = suitable_mask(CATALOG, SuitabilitySpec(), **kw)[0]
    assert [pid for pid in CATALOG.ids if not suitable[COL[pid]]] == blocked

    off = SuitabilitySpec(**{rule: False})
    assert rule not in rule_masks(CATALOG, off, **kw)
    assert suitable_mask(CATALOG, off, **kw).all()


UNMAPPABLE = [c[:2] for c in RULE_CASES if c[0] != "credit_min_score"]  # credit_score is always given


@pytest.mark.parametrize("rule, change", UNMAPPABLE, ids=[c[0] for c in UNMAPPABLE])
def test_rule_is_skipped_when_its_column_is_not_mapped(rule: str, change: dict) -> None:
    (key,) = change
    kw = customer(**{key: None})
    assert rule not in rule_masks(CATALOG, SuitabilitySpec(), **kw)
    assert suitable_mask(CATALOG, SuitabilitySpec(), **kw).all()


def test_boundaries_are_inclusive() -> None:
    kw = customer(credit_score=np.array([650]), risk_tolerance=np.array([4]), age=np.array([25]))
    assert suitable_mask(CATALOG, SuitabilitySpec(), **kw).all()


def test_vulnerable_max_risk_is_configurable() -> None:
    kw = customer(vulnerable=np.array([True]))
    mask = rule_masks(CATALOG, SuitabilitySpec(vulnerable_max_risk=4), **kw)["vulnerable_protection"][0]
    assert [pid for pid in CATALOG.ids if not mask[COL[pid]]] == ["CARD"]


def test_investment_categories_are_configurable() -> None:
    kw = customer(risk_tolerance=np.array([1]))
    mask = rule_masks(CATALOG, SuitabilitySpec(investment_categories=["insurance"]), **kw)["risk_tolerance"][0]
    assert [pid for pid in CATALOG.ids if not mask[COL[pid]]] == ["INS_RISKY"]


# --------------------------------------------------------------------------- nulls
def test_nulls_are_protective() -> None:
    n = 2  # row 0: all nulls; row 1: the most restrictive explicit values
    kw = {
        "credit_score": np.array([800, 800]),
        "risk_tolerance": np.array([np.nan, 1.0]),
        "experience": np.array([None, "none"], dtype=object),
        "vulnerable": np.array([None, True], dtype=object),
        "age": np.array([np.nan, 200.0]),
        "held": [None, []],
    }
    masks = rule_masks(CATALOG, SuitabilitySpec(), **kw)
    for name, mask in masks.items():
        assert mask.shape == (n, len(CATALOG))
        assert mask[0].tolist() == mask[1].tolist(), name
    allowed = suitable_mask(CATALOG, SuitabilitySpec(), **kw)[0]
    assert [pid for pid in CATALOG.ids if allowed[COL[pid]]] == ["SAVER"]


def test_arrow_nulls_are_protective() -> None:
    kw = {
        "credit_score": np.array([800]),
        "risk_tolerance": pa.array([None], pa.int64()),
        "experience": pa.array([None], pa.string()),
        "vulnerable": pa.array([None], pa.bool_()),
        "age": pa.array([None], pa.int64()),
        "held": pa.array([None], pa.list_(pa.string())),
    }
    allowed = suitable_mask(CATALOG, SuitabilitySpec(), **kw)[0]
    assert [pid for pid in CATALOG.ids if allowed[COL[pid]]] == ["SAVER"]


def test_input_length_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="age has 2 rows"):
        rule_masks(CATALOG, SuitabilitySpec(), **customer(age=np.array([30, 40])))


# --------------------------------------------------------------------------- table inputs
COLUMNS = SuitabilityColumns(risk_tolerance="rt", experience="exp", vulnerable="vuln", age="age", held="held")


def snapshot() -> pa.Table:
    return pa.table(
        {
            "rt": pa.array([5, None, 2], pa.int64()),
            "exp": pa.array(["advanced", None, "basic"]),
            "vuln": pa.array([False, None, True]),
            "age": pa.array([22, 40, None], pa.int64()),
            "held": pa.array([["SAVER", "NOT_IN_CATALOG"], None, ["CARD"]], pa.list_(pa.string())),
        }
    )


def test_inputs_from_table_feed_the_rules() -> None:
    spec = SuitabilitySpec(columns=COLUMNS)
    kw = inputs_from_table(snapshot(), spec)
    assert set(kw) == {"risk_tolerance", "experience", "vulnerable", "age", "held"}
    mask = suitable_mask(CATALOG, spec, credit_score=np.array([800, 800, 800]), **kw)
    allowed = [[pid for pid in CATALOG.ids if row[COL[pid]]] for row in mask]
    assert allowed == [["CARD", "FUND_HI", "FUND_CX", "YOUTH", "INS_RISKY"], ["SAVER"], ["SAVER"]]


def test_inputs_from_table_unmapped_is_none() -> None:
    spec = SuitabilitySpec(columns=SuitabilityColumns(age="age"))
    kw = inputs_from_table(snapshot(), spec)
    assert kw["age"] is not None
    assert all(kw[k] is None for k in ("risk_tolerance", "experience", "vulnerable", "held"))


def test_inputs_from_table_missing_column_is_named() -> None:
    spec = SuitabilitySpec(columns=SuitabilityColumns(vulnerable="is_vulnerable"))
    with pytest.raises(KeyError, match="is_vulnerable"):
        inputs_from_table(snapshot(), spec)


# --------------------------------------------------------------------------- recommend
def test_recommend_orders_by_propensity_with_ranks() -> None:
    propensity = np.array([[0.1, 0.9, 0.5, 0.7, 0.3, 0.2]])
    out = recommend(propensity, np.ones_like(propensity, bool), CATALOG, k=3)
    assert out == [
        [
            {"product_id": "CARD", "rank": 1, "propensity": 0.9},
            {"product_id": "FUND_CX", "rank": 2, "propensity": 0.7},
            {"product_id": "FUND_HI", "rank": 3, "propensity": 0.5},
        ]
    ]


def test_recommend_skips_unsuitable_and_returns_fewer_or_none() -> None:
    propensity = np.tile([0.1, 0.9, 0.5, 0.7, 0.3, 0.2], (3, 1))
    suitable = np.zeros_like(propensity, bool)
    suitable[0, [0, 4]] = True  # two suitable, k = 3
    suitable[2] = True
    suitable[2, 1] = False  # best one unsuitable
    out = recommend(propensity, suitable, CATALOG, k=3)
    assert [[r["product_id"] for r in row] for row in out] == [["YOUTH", "SAVER"], [], ["FUND_CX", "FUND_HI", "YOUTH"]]
    assert [[r["rank"] for r in row] for row in out] == [[1, 2], [], [1, 2, 3]]


def test_recommend_shape_and_value_checks() -> None:
    with pytest.raises(ValueError, match="must both be"):
        recommend(np.zeros((2, 3)), np.ones((2, 3), bool), CATALOG, k=2)
    with pytest.raises(ValueError, match="NaN"):
        recommend(np.full((1, len(CATALOG)), np.nan), np.ones((1, len(CATALOG)), bool), CATALOG, k=2)


def test_recommendations_are_suitable_never_held_and_at_most_k() -> None:
    catalog = load_catalog("builtin:catalog.yaml")
    rng = np.random.default_rng(7)
    n, k = 2_000, 5
    held = [list(rng.choice(catalog.ids, size=rng.integers(0, 6), replace=False)) for _ in range(n)]
    kw = {
        "credit_score": rng.integers(300, 851, n),
        "risk_tolerance": rng.integers(1, 6, n).astype(float),
        "experience": rng.choice(np.array(["none", "basic", "informed", "advanced", None], dtype=object), n),
        "vulnerable": rng.random(n) < 0.2,
        "age": rng.integers(18, 90, n),
        "held": held,
    }
    spec = SuitabilitySpec()
    suitable = suitable_mask(catalog, spec, **kw)
    out = recommend(rng.random((n, len(catalog))), suitable, catalog, k=k)
    col = {pid: j for j, pid in enumerate(catalog.ids)}
    assert len(out) == n
    for i, row in enumerate(out):
        assert len(row) == min(k, int(suitable[i].sum()))
        assert [r["rank"] for r in row] == list(range(1, len(row) + 1))
        props = [r["propensity"] for r in row]
        assert props == sorted(props, reverse=True)
        for r in row:
            assert suitable[i, col[r["product_id"]]]
            assert r["product_id"] not in held[i]
    assert any(len(row) == k for row in out)


# --------------------------------------------------------------------------- catalog loading
def builtin_records() -> list[dict[str, Any]]:
    from importlib import resources

    return yaml.safe_load((resources.files("nightscore") / "data" / "catalog.yaml").read_text())["products"]


def test_builtin_catalog() -> None:
    catalog = load_catalog("builtin:catalog.yaml")
    assert 15 <= len(catalog) <= 30
    assert len(set(catalog.ids)) == len(catalog.ids)
    assert all(p.min_credit_score is not None for p in catalog.products if p.is_credit)
    assert {p.category for p in catalog.products} >= {"deposit", "credit_card", "personal_loan", "mortgage", "fund", "insurance", "pension"}


def test_unknown_builtin_catalog() -> None:
    with pytest.raises(CatalogError, match="no built-in catalog named 'nope.yaml'"):
        load_catalog("builtin:nope.yaml")


def write_yaml(tmp_path: Path, products: Any) -> str:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"products": products}))
    return str(path)


def _mutate(fn):  # type: ignore[no-untyped-def]
    def apply(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fn(records)
        return records

    return apply


def _by_id(records: list[dict[str, Any]], pid: str) -> dict[str, Any]:
    return next(r for r in records if r["product_id"] == pid)


BAD_CATALOGS = {
    "unknown_key": (_mutate(lambda r: _by_id(r, "EASY_SAVER").update(colour="red")), r"product EASY_SAVER: unknown keys \['colour'\]"),
    "missing_key": (_mutate(lambda r: _by_id(r, "EASY_SAVER").pop("category")), r"product EASY_SAVER: missing required keys \['category'\]"),
    "duplicate_id": (_mutate(lambda r: _by_id(r, "EASY_SAVER").update(product_id="CUR_ACCOUNT")), r"duplicate product_id \['CUR_ACCOUNT'\]"),
    "risk_too_high": (_mutate(lambda r: _by_id(r, "FUND_EM").update(risk_level=6)), r"product FUND_EM: risk_level must be 1-5, got 6"),
    "risk_too_low": (_mutate(lambda r: _by_id(r, "FUND_EM").update(risk_level=0)), r"product FUND_EM: risk_level must be 1-5, got 0"),
    "risk_not_int": (_mutate(lambda r: _by_id(r, "FUND_EM").update(risk_level="high")), r"product FUND_EM: risk_level must be an integer"),
    "credit_no_min_score": (_mutate(lambda r: _by_id(r, "CC_BASIC").pop("min_credit_score")), r"product CC_BASIC: credit products need min_credit_score"),
    "min_score_on_non_credit": (_mutate(lambda r: _by_id(r, "EASY_SAVER").update(min_credit_score=600)), r"product EASY_SAVER: min_credit_score only applies"),
    "age_bounds_inverted": (_mutate(lambda r: _by_id(r, "INS_LIFE").update(min_age=60, max_age=30)), r"product INS_LIFE: min_age 60 > max_age 30"),
    "bool_not_bool": (_mutate(lambda r: _by_id(r, "INS_LIFE").update(is_credit="no")), r"product INS_LIFE: is_credit must be true or false"),
    "missing_id": (_mutate(lambda r: r[2].pop("product_id")), r"product #3: missing required keys \['product_id'\]"),
    "empty": (lambda r: [], r"has no products"),
}


@pytest.mark.parametrize("kind", list(BAD_CATALOGS))
def test_bad_catalog_raises_naming_the_problem(tmp_path: Path, kind: str) -> None:
    mutate, message = BAD_CATALOGS[kind]
    uri = write_yaml(tmp_path, mutate(builtin_records()))
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(uri)
    assert uri in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text, message",
    [
        ("products: [", "not valid YAML"),
        ("- a\n- b\n", "top-level 'products:' list"),
        ("products: {a: 1}\n", "'products' must be a list"),
        ("products: []\nversion: 2\n", r"unknown top-level keys \['version'\]"),
    ],
)
def test_bad_catalog_file_shape(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "catalog.yml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(str(path))


def test_missing_or_unsupported_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot be read"):
        load_catalog(str(tmp_path / "absent.yaml"))
    csv = tmp_path / "catalog.csv"
    csv.write_text("product_id\nX\n")
    with pytest.raises(CatalogError, match="unsupported file type"):
        load_catalog(str(csv))


def test_parquet_catalog_loads(tmp_path: Path) -> None:
    records = builtin_records()
    columns = ["product_id", "name", "category", "risk_level", "is_credit", "complex", "min_credit_score", "min_age", "max_age"]
    table = pa.table({c: [r.get(c) for r in records] for c in columns})  # absent optional keys -> nulls
    path = tmp_path / "catalog.parquet"
    pq.write_table(table, path)
    assert load_catalog(str(path)) == load_catalog("builtin:catalog.yaml")


def test_parquet_catalog_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"product_id": ["X"], "name": ["X"], "category": ["fund"], "risk_level": [9], "is_credit": [False], "complex": [False]}), path)
    with pytest.raises(CatalogError, match="product X: risk_level must be 1-5"):
        load_catalog(str(path))
