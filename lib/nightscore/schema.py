"""The feature schema read from config: which columns exist and what Arrow type each has."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .config import FeatureSpec, SchemaSpec


def feature_type(f: FeatureSpec) -> pa.DataType:
    """The Arrow type a feature column is cast to for validation and serialisation."""
    if f.kind == "numeric":
        return pa.int64() if f.integer else pa.float64()
    if f.kind == "boolean":
        return pa.bool_()
    if f.kind == "list":
        return pa.list_(pa.string())
    return pa.string()


def required_columns(schema: SchemaSpec, with_labels: bool = False) -> dict[str, pa.DataType]:
    """Columns every snapshot must have, with the type each must cast to."""
    cols: dict[str, pa.DataType] = {schema.id: pa.string()}
    if schema.date:
        cols[schema.date] = pa.date32()
    for f in schema.features:
        cols[f.name] = feature_type(f)
    if with_labels:
        cols.update(label_columns(schema))
    return cols


def label_columns(schema: SchemaSpec) -> dict[str, pa.DataType]:
    cols: dict[str, pa.DataType] = {}
    if schema.labels.default:
        cols[schema.labels.default] = pa.string() if schema.labels.default_values else pa.bool_()
    if schema.labels.products:
        cols[schema.labels.products] = pa.list_(pa.string())
    return cols


def default_label(table: pa.Table, schema: SchemaSpec) -> pa.Array:
    """The default label as bool (null where unknown), whether stored as bool or as text values."""
    import pyarrow.compute as pc

    col = table.column(schema.labels.default)
    if schema.labels.default_values:
        col = pc.if_else(pc.is_null(col), pa.scalar(None, pa.bool_()),
                         pc.is_in(col, value_set=pa.array(schema.labels.default_values, pa.string())))
    col = pc.cast(col, pa.bool_())
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def model_features(schema: SchemaSpec) -> list[FeatureSpec]:
    """Features that enter model text, in the configured (stable) order."""
    return [f for f in schema.features if f.in_model]


def id_hash(ids: pa.Array | pa.ChunkedArray, salt: str | None = None) -> np.ndarray:
    """A stable 64-bit hash per customer id (pandas' siphash), for splits and assignments that must
    not depend on row order. A salt keys the hash, so assignments drawn with different salts are
    independent of one another."""
    key = hashlib.sha256(salt.encode()).hexdigest()[:16] if salt is not None else None
    values = pc.cast(ids, pa.string()).to_numpy(zero_copy_only=False)
    return pd.util.hash_array(values, categorize=False, **({"hash_key": key} if key else {}))
