"""Labelled snapshots -> tokenised training rows, with the same validation and text as scoring."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..config import Config
from ..model.tokens import tokenize, tokenizer_for
from ..schema import default_label
from ..serialize import serialize
from ..validate import batch_source, conform, split



def in_validation(ids: pa.Array | pa.ChunkedArray, fraction: float) -> np.ndarray:
    """Stable split by customer_id hash: the same customer lands on the same side every run."""
    values = np.asarray(pc.cast(ids, pa.string()).to_pylist(), dtype=object)
    h = pd.util.hash_array(values, categorize=False)
    return (h % 10_000) < int(round(fraction * 10_000))


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


def encode(table: pa.Table, cfg: Config, tokenizer, product_ids: list[str]) -> pa.Table:
    """Valid labelled rows -> input_ids + label columns used by the training loop."""
    labels = cfg.schema.labels
    cols: dict[str, pa.Array] = {
        "customer_id": pc.cast(table.column(cfg.schema.id), pa.string()),
        "input_ids": tokenize(serialize(table, cfg.schema, cfg.serialize), tokenizer, cfg.model.max_length),
    }
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


def prepare_batch(batch: pa.Table, cfg: Config, tokenizer_dir: str, product_ids: list[str],
                  duplicate_ids: pa.Array, split_valid: bool) -> pa.Table:
    """One Ray Data batch: validate (invalid rows dropped, counted by the caller), encode.

    Adds `is_valid_split` when the validation split is taken from the same data.
    """
    table = conform(batch, cfg.schema, batch_source(batch), with_labels=True)
    valid = split(table, cfg.schema, None, duplicate_ids).valid
    out = encode(valid, cfg, tokenizer_for(tokenizer_dir), product_ids)
    if split_valid:
        out = out.append_column("is_valid_split", pa.array(in_validation(valid.column(cfg.schema.id), cfg.train.valid_fraction)))
    return out
