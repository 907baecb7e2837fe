"""Product catalog, suitability rules and the top-k suitable recommendations (SPEC §3).

Suitability is a regulatory gate, not a model output: every recommendation must pass
every active rule, and a missing (null) customer attribute must never open a product
up, so nulls are read in the most protective way.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from .config import S3Spec, SuitabilitySpec
from .storage import filesystem

BUILTIN_PREFIX = "builtin:"

# A rule input: NumPy array (object arrays may hold None), Arrow array, or plain sequence.
Column = np.ndarray | pa.Array | pa.ChunkedArray | Sequence[Any]


class CatalogError(ValueError):
    """The product catalog is unreadable or invalid; the message names the file and product."""


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    risk_level: int  # 1 (lowest) .. 5
    is_credit: bool
    complex: bool  # needs informed/advanced investment experience
    min_credit_score: int | None = None  # required for credit products
    min_age: int | None = None
    max_age: int | None = None


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]

    @property
    def ids(self) -> list[str]:
        """Product ids in catalog order: the column order of propensity and suitability matrices."""
        return [p.product_id for p in self.products]

    def __len__(self) -> int:
        return len(self.products)


# --------------------------------------------------------------------------- loading
_REQUIRED: dict[str, type] = {
    "product_id": str,
    "name": str,
    "category": str,
    "risk_level": int,
    "is_credit": bool,
    "complex": bool,
}
_OPTIONAL: dict[str, type] = {"min_credit_score": int, "min_age": int, "max_age": int}
_EXPECTED = {str: "a non-empty string", int: "an integer", bool: "true or false"}


def _read_bytes(uri: str, s3: S3Spec | None) -> bytes:
    if uri.startswith(BUILTIN_PREFIX):
        name = uri[len(BUILTIN_PREFIX):]
        data_dir = resources.files("nightscore") / "data"
        resource = data_dir / name
        if not name or "/" in name or not resource.is_file():
            available = sorted(p.name for p in data_dir.iterdir() if p.name.endswith((".yaml", ".yml", ".parquet")))
            raise CatalogError(f"catalog {uri}: no built-in catalog named {name!r}; available: {available}")
        return resource.read_bytes()
    try:
        fs, path = filesystem(uri, s3)
        with fs.open_input_file(path) as f:
            return f.read()
    except (OSError, ValueError) as exc:  # pyarrow raises FileNotFoundError/OSError, ArrowInvalid (ValueError)
        raise CatalogError(f"catalog {uri} cannot be read: {exc}") from None


def _records(uri: str, data: bytes) -> list[Any]:
    """Raw product records from YAML (top-level `products:` list) or Parquet (one row each)."""
    lower = uri.lower()
    if lower.endswith(".parquet"):
        try:
            table = pq.read_table(io.BytesIO(data))
        except (OSError, ValueError) as exc:
            raise CatalogError(f"catalog {uri} is not a readable Parquet file: {exc}") from None
        return table.to_pylist()
    if not lower.endswith((".yaml", ".yml")):
        raise CatalogError(f"catalog {uri}: unsupported file type; use .yaml, .yml or .parquet")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {uri} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or "products" not in doc:
        raise CatalogError(f"catalog {uri}: expected a mapping with a top-level 'products:' list")
    unknown = sorted(set(doc) - {"products"})
    if unknown:
        raise CatalogError(f"catalog {uri}: unknown top-level keys {unknown}")
    if not isinstance(doc["products"], list):
        raise CatalogError(f"catalog {uri}: 'products' must be a list")
    return doc["products"]


def _typed(value: Any, typ: type) -> Any:
    """The value as `typ`, or None when it has the wrong type (integral floats count as int)."""
    if typ is bool:
        return value if isinstance(value, bool) else None
    if typ is int:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None
    return value if isinstance(value, str) and value.strip() else None


def _product(uri: str, index: int, record: Any) -> Product:
    if not isinstance(record, dict):
        raise CatalogError(f"catalog {uri}: product #{index + 1} is not a mapping")
    pid = record.get("product_id")
    where = f"catalog {uri}: product {pid if isinstance(pid, str) and pid else f'#{index + 1}'}"
    fields = {k: v for k, v in record.items() if v is not None}  # null = absent (Parquet, explicit ~)
    unknown = sorted(set(fields) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CatalogError(f"{where}: unknown keys {unknown}")
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise CatalogError(f"{where}: missing required keys {missing}")
    values: dict[str, Any] = {}
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key in fields:
            values[key] = _typed(fields[key], typ)
            if values[key] is None:
                raise CatalogError(f"{where}: {key} must be {_EXPECTED[typ]}, got {fields[key]!r}")
    product = Product(**values)
    if not 1 <= product.risk_level <= 5:
        raise CatalogError(f"{where}: risk_level must be 1-5, got {product.risk_level}")
    if product.is_credit and product.min_credit_score is None:
        raise CatalogError(f"{where}: credit products need min_credit_score")
    if not product.is_credit and product.min_credit_score is not None:
        raise CatalogError(f"{where}: min_credit_score only applies to credit products (is_credit: true)")
    for key in ("min_age", "max_age"):
        if (getattr(product, key) or 0) < 0:
            raise CatalogError(f"{where}: {key} must be >= 0")
    if product.min_age is not None and product.max_age is not None and product.min_age > product.max_age:
        raise CatalogError(f"{where}: min_age {product.min_age} > max_age {product.max_age}")
    return product


def load_catalog(uri: str, s3: S3Spec | None = None) -> Catalog:
    """Load and validate a catalog from `builtin:NAME`, a local path or s3:// (YAML or Parquet)."""
    records = _records(uri, _read_bytes(uri, s3))
    if not records:
        raise CatalogError(f"catalog {uri} has no products")
    products = tuple(_product(uri, i, r) for i, r in enumerate(records))
    ids = [p.product_id for p in products]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CatalogError(f"catalog {uri}: duplicate product_id {dup}")
    return Catalog(products)


# --------------------------------------------------------------------------- rules
def _arrow(values: Column) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(values, from_pandas=True)  # NaN and None both become null


def _attr(catalog: Catalog, name: str, fill: Any = None) -> np.ndarray:
    """One product attribute as an array over the catalog (None replaced by `fill`)."""
    values = [getattr(p, name) for p in catalog.products]
    return np.array([fill if v is None else v for v in values])


def _held_matrix(held: Column, catalog: Catalog, n: int) -> np.ndarray:
    """n x P bool: customer holds product. Null lists and ids outside the catalog hold nothing."""
    if isinstance(held, (pa.Array, pa.ChunkedArray)):
        lists = pc.cast(_arrow(held), pa.list_(pa.string()))
    else:
        lists = pa.array(held, type=pa.list_(pa.string()))
    rows = pc.list_parent_indices(lists).to_numpy()
    cols = pc.index_in(pc.list_flatten(lists), value_set=pa.array(catalog.ids, type=pa.string()))
    known = pc.is_valid(cols)
    out = np.zeros((n, len(catalog)), dtype=bool)
    out[rows[known.to_numpy(zero_copy_only=False)], cols.filter(known).to_numpy()] = True
    return out


def rule_masks(
    catalog: Catalog,
    spec: SuitabilitySpec,
    *,
    credit_score: np.ndarray,
    risk_tolerance: Column | None = None,
    experience: Column | None = None,
    vulnerable: Column | None = None,
    age: Column | None = None,
    held: Column | None = None,
) -> dict[str, np.ndarray]:
    """One n x P pass/fail mask per active rule, keyed by its SuitabilitySpec switch name.

    A rule is active when switched on in config and its input column is given (mapped).
    """
    score = np.asarray(credit_score, dtype=np.float64)
    n = score.shape[0]
    inputs = {"risk_tolerance": risk_tolerance, "experience": experience, "vulnerable": vulnerable, "age": age, "held": held}
    for key, values in inputs.items():
        if values is not None and len(values) != n:
            raise ValueError(f"{key} has {len(values)} rows; credit_score has {n}")
    risk = _attr(catalog, "risk_level")
    is_credit = _attr(catalog, "is_credit").astype(bool)
    masks: dict[str, np.ndarray] = {}

    if spec.risk_tolerance and risk_tolerance is not None:
        tolerance = pc.fill_null(pc.cast(_arrow(risk_tolerance), pa.float64()), 1.0).to_numpy()  # null: lowest
        investment = np.isin(_attr(catalog, "category"), spec.investment_categories)
        masks["risk_tolerance"] = ~investment[None, :] | (risk[None, :] <= tolerance[:, None])

    if spec.complex_needs_experience and experience is not None:
        levels = pa.array(spec.experienced_levels, type=pa.string())
        experienced = pc.fill_null(pc.is_in(pc.cast(_arrow(experience), pa.string()), value_set=levels), False)
        complex_ = _attr(catalog, "complex").astype(bool)
        masks["complex_needs_experience"] = ~complex_[None, :] | experienced.to_numpy(zero_copy_only=False)[:, None]

    if spec.credit_min_score:
        min_score = _attr(catalog, "min_credit_score", fill=-np.inf).astype(np.float64)
        masks["credit_min_score"] = ~is_credit[None, :] | (score[:, None] >= min_score[None, :])

    if spec.vulnerable_protection and vulnerable is not None:
        flagged = pc.fill_null(pc.cast(_arrow(vulnerable), pa.bool_()), True)  # null: protect
        allowed = ~is_credit & (risk <= spec.vulnerable_max_risk)
        masks["vulnerable_protection"] = ~flagged.to_numpy(zero_copy_only=False)[:, None] | allowed[None, :]

    if spec.age_bounds and age is not None:
        years = pc.cast(_arrow(age), pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN fails any bound
        low = _attr(catalog, "min_age", fill=-np.inf).astype(np.float64)
        high = _attr(catalog, "max_age", fill=np.inf).astype(np.float64)
        bounded = np.isfinite(low) | np.isfinite(high)
        within = (years[:, None] >= low[None, :]) & (years[:, None] <= high[None, :])
        masks["age_bounds"] = ~bounded[None, :] | within

    if spec.exclude_held and held is not None:
        masks["exclude_held"] = ~_held_matrix(held, catalog, n)

    return masks


def suitable_mask(catalog: Catalog, spec: SuitabilitySpec, *, credit_score: np.ndarray,
                  **inputs: Column | None) -> np.ndarray:
    """n x P bool: product j may be recommended to customer i (passes every active rule).

    Takes the same keyword inputs as `rule_masks`.
    """
    out = np.ones((len(credit_score), len(catalog)), dtype=bool)
    for mask in rule_masks(catalog, spec, credit_score=credit_score, **inputs).values():
        out &= mask
    return out


def inputs_from_table(table: pa.Table, spec: SuitabilitySpec) -> dict[str, Any]:
    """The mapped suitability columns of a snapshot as keyword arguments for suitable_mask."""
    out: dict[str, Any] = {}
    for key, column in spec.columns.model_dump().items():
        if column is None:
            out[key] = None
        elif column not in table.column_names:
            raise KeyError(f"suitability column {column!r} (products.suitability.columns.{key}) is not in the table")
        elif key == "held":
            out[key] = table.column(column).combine_chunks()
        else:
            out[key] = table.column(column).to_numpy()
    return out


# --------------------------------------------------------------------------- ranking
def recommend(propensity: np.ndarray, suitable: np.ndarray, catalog: Catalog, k: int) -> list[list[dict[str, Any]]]:
    """Per row, up to k suitable products by descending propensity: {product_id, rank, propensity}."""
    propensity = np.asarray(propensity, dtype=np.float64)
    suitable = np.asarray(suitable, dtype=bool)
    expected = (propensity.shape[0], len(catalog))
    if propensity.shape != expected or suitable.shape != expected:
        raise ValueError(f"propensity {propensity.shape} and suitable {suitable.shape} must both be {expected}")
    if not np.all(np.isfinite(propensity)):
        raise ValueError("propensity contains NaN or infinite values")
    ranked = np.where(suitable, propensity, -np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    keep = np.take_along_axis(suitable, order, axis=1)  # suitable ones sort first, so a prefix
    ranks = np.broadcast_to(np.arange(1, order.shape[1] + 1, dtype=np.int64), order.shape)
    items = pa.StructArray.from_arrays(
        [
            pa.array(np.array(catalog.ids, dtype=object)[order[keep]], type=pa.string()),
            pa.array(ranks[keep]),
            pa.array(np.take_along_axis(propensity, order, axis=1)[keep]),
        ],
        names=["product_id", "rank", "propensity"],
    )
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), items).to_pylist()


def recommended_ranks(recs: pa.ChunkedArray, product_ids: list[str], top_k: int) -> np.ndarray:
    """The recommendations column -> (customers, products) rank of each product recommended in
    the top k (1 = first), 0 where not."""
    recs = pc.fill_null(recs, pa.scalar([], recs.type)).combine_chunks()
    flat = recs.flatten()
    rows = pc.list_parent_indices(recs).to_numpy(zero_copy_only=False)
    cols = pc.fill_null(pc.index_in(flat.field("product_id"), value_set=pa.array(product_ids, pa.string())), -1)
    cols = cols.to_numpy(zero_copy_only=False)
    rank = flat.field("rank").to_numpy(zero_copy_only=False)
    keep = (cols >= 0) & (rank <= top_k)
    out = np.zeros((len(recs), len(product_ids)), dtype=np.int64)
    out[rows[keep], cols[keep]] = rank[keep]
    return out
