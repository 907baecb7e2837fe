"""Labelled snapshots -> encoded training rows, with the same validation and model input as scoring."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import Config
from ..encode import Encoders, encode
from ..model.tokens import tokenizer_for
from ..schema import default_label, id_hash
from ..validate import batch_source, conform, split

TRAIN, VALID, CALIBRATION = 0, 1, 2  # row roles


def roles(ids: pa.Array | pa.ChunkedArray, valid_fraction: float, calibration_fraction: float) -> np.ndarray:
    """Stable split by id hash: validation (metrics, early stopping), calibration (its fit alone)
    and training. The same customer takes the same role every run. Pass valid_fraction 0 to split
    a separate validation set into validation and calibration only."""
    h = id_hash(ids) % 10_000
    valid_end = int(round(valid_fraction * 10_000))
    calib_end = valid_end + int(round(calibration_fraction * 10_000))
    return np.where(h < valid_end, VALID, np.where(h < calib_end, CALIBRATION, TRAIN)).astype(np.int8)


def in_sample(ids: pa.Array | pa.ChunkedArray, fraction: float) -> np.ndarray:
    """A stable id-hash sample of about `fraction` of the rows, independent of their role."""
    h = (id_hash(ids) // 10_000) % 10_000  # other digits than roles' take: independent of the role
    return h < int(round(fraction * 10_000)) if fraction < 1 else np.ones(len(h), dtype=bool)


def multi_hot(lists: pa.ChunkedArray | pa.Array, product_ids: list[str]) -> np.ndarray:
    """list<string> of product ids -> (rows, products) 0/1 matrix; unknown ids are ignored."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    out = np.zeros((len(lists), len(product_ids)), dtype=np.float32)
    flat = pc.list_flatten(lists)
    rows = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    cols = pc.fill_null(pc.index_in(flat, value_set=pa.array(product_ids, pa.string())), -1)
    cols = cols.to_numpy(zero_copy_only=False)
    known = cols >= 0
    out[rows[known], cols[known]] = 1.0
    return out


def training_rows(table: pa.Table, cfg: Config, encoders: Encoders, tokenizer, product_ids: list[str]) -> pa.Table:
    """Valid labelled rows -> model input + the label columns the training loop reads."""
    labels = cfg.schema.labels
    inputs, _ = encode(table, encoders, cfg.schema, tokenizer)
    cols: dict[str, pa.Array] = {"customer_id": pc.cast(table.column(cfg.schema.id), pa.string())}
    cols.update({name: inputs.column(name) for name in inputs.column_names})
    if labels.default:
        y = default_label(table, cfg.schema)
        cols["has_default"] = pc.is_valid(y)
        cols["y_default"] = pc.fill_null(pc.cast(y, pa.float32()), 0.0)
    if labels.products:
        cols["y_products"] = _matrix(product_lists(table, labels.products), product_ids)
        if held := held_column(cfg):
            cols["held_products"] = _matrix(product_lists(table, held), product_ids)
    return pa.table(cols)


def held_column(cfg: Config) -> str | None:
    """The held-products column when held products are excluded from recommendations.

    Such products are never recommended, so they neither train the product head nor count
    in ranking metrics.
    """
    s = cfg.products.suitability
    return s.columns.held if s.exclude_held else None


def product_lists(table: pa.Table, column: str) -> pa.ChunkedArray:
    """A list<string> column of product ids with nulls read as empty lists."""
    return pc.fill_null(table.column(column), pa.scalar([], pa.list_(pa.string())))


def _matrix(lists: pa.ChunkedArray, product_ids: list[str]) -> pa.FixedSizeListArray:
    hot = multi_hot(lists, product_ids)
    return pa.FixedSizeListArray.from_arrays(pa.array(hot.reshape(-1)), len(product_ids))


def prepare_batch(batch: pa.Table, cfg: Config, encoders: Encoders, tokenizer_dir: str, product_ids: list[str],
                  duplicate_ids: pa.Array, valid_fraction: float, calibration_fraction: float) -> pa.Table:
    """One Ray Data batch: validate (invalid rows dropped, counted by the caller), encode, and give
    each row its role (`role`: training, validation or calibration; see roles)."""
    table = conform(batch, cfg.schema, batch_source(batch), with_labels=True)
    valid = split(table, cfg.schema, None, duplicate_ids).valid
    out = training_rows(valid, cfg, encoders, tokenizer_for(tokenizer_dir), product_ids)
    role = roles(valid.column(cfg.schema.id), valid_fraction, calibration_fraction)
    return out.append_column("role", pa.array(role))
