"""Arrow batch -> model text. The one place a row becomes text, for training and scoring.

Text is "Label: value; Label: value; …" in the configured feature order. PII columns are
never read; free-text fields are scrubbed of e-mail addresses, phone numbers and ID-like
digit runs, then truncated. Numbers are short and human ("52.3k") because shorter text
means faster scoring.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import FeatureSpec, SchemaSpec, SerializeSpec
from .schema import feature_type, model_features

# RE2 patterns, applied in this order.
_SCRUB = [
    (r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}", "[email]"),
    (r"\+?\(?\d[\d ().\-]{6,}\d", "[phone]"),
    (r"\b[A-Za-z]{0,3}\d{5,}[A-Za-z]?\b", "[id]"),
]


def scrub(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Remove e-mail addresses, phone numbers and ID-like digit runs from free text."""
    out = texts
    for pattern, token in _SCRUB:
        out = pc.replace_substring_regex(out, pattern=pattern, replacement=token)
    return out


def _compact_number(values: pa.ChunkedArray | pa.Array, f: FeatureSpec) -> pa.Array:
    """52347.8 -> "52.3k", 1250000 -> "1.25m", 0.4567 (2 decimals) -> "0.46", 12 -> "12"."""
    x = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    a = np.abs(np.nan_to_num(x))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log10(np.where(a > 0, a, 1.0)))
    a3 = np.round(a / 10.0 ** (e - 2)) * 10.0 ** (e - 2)  # three significant digits decide the unit
    big = a3 >= 1e6
    mid = (a3 >= 1e4) & ~big
    scaled = np.where(big, x / 1e6, np.where(mid, x / 1e3, x))
    with np.errstate(divide="ignore"):
        mag = np.floor(np.log10(np.maximum(np.abs(scaled), 1.0)))
    digits = np.where(big | mid, np.clip(2 - mag, 0, 2), f.decimals)
    rounded = np.round(scaled * 10.0**digits) / 10.0**digits  # shortest repr prints cleanly
    text = pc.cast(pa.array(rounded), pa.string())
    suffix = np.where(big, "m", np.where(mid, "k", f" {f.unit}" if f.unit else ""))
    return pc.binary_join_element_wise(text, pa.array(suffix, pa.string()), "")


def _values_text(col: pa.ChunkedArray, f: FeatureSpec, spec: SerializeSpec) -> pa.Array:
    """Text of one feature's values (nulls still null; the caller fills them)."""
    col = pc.cast(col, feature_type(f))
    if f.kind == "numeric":
        if f.integer:
            text = pc.cast(col, pa.string())
            return pc.binary_join_element_wise(text, f" {f.unit}", "") if f.unit else text
        return pc.if_else(pc.is_null(col), pa.scalar(None, pa.string()), _compact_number(col, f))
    if f.kind == "boolean":
        return pc.if_else(col, "yes", "no")
    if f.kind == "categorical":
        return pc.replace_substring(col, "_", " ")
    if f.kind == "list":
        joined = pc.binary_join(col, spec.list_separator)
        empty = pc.equal(pc.list_value_length(col), 0)
        return pc.if_else(empty, spec.empty_list, joined)
    text = scrub(pc.utf8_trim_whitespace(col))
    if f.max_chars is not None:
        text = pc.utf8_slice_codeunits(text, 0, f.max_chars)
    return pc.if_else(pc.equal(pc.utf8_length(text), 0), pa.scalar(None, pa.string()), text)


def segments(table: pa.Table, schema: SchemaSpec, spec: SerializeSpec) -> list[pa.Array]:
    """One "Label: value" string array per model feature, in text order.

    Exposed so scoring can map tokens back to fields (reason codes) without a second
    serialiser.
    """
    out = []
    for f in model_features(schema):
        null = f.null_text if f.null_text is not None else spec.null_token
        values = pc.fill_null(_values_text(table.column(f.name), f, spec), null)
        out.append(pc.binary_join_element_wise(f"{f.label}: ", values, ""))
    return out


def serialize(table: pa.Table, schema: SchemaSpec, spec: SerializeSpec) -> pa.Array:
    """Model text for every row of `table`."""
    segs = segments(table, schema, spec)
    text = pc.binary_join_element_wise(*segs, spec.separator)
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def field_spans(table: pa.Table, schema: SchemaSpec, spec: SerializeSpec) -> np.ndarray:
    """Character start offset of each field in each row's text: shape (rows, fields + 1).

    Column j holds where field j starts; the last column is the text length.
    """
    segs = segments(table, schema, spec)
    lengths = np.stack([pc.utf8_length(s).to_numpy(zero_copy_only=False) for s in segs], axis=1)
    sep = len(spec.separator)
    starts = np.zeros((table.num_rows, len(segs) + 1), dtype=np.int64)
    starts[:, 1:] = np.cumsum(lengths + sep, axis=1)
    starts[:, -1] -= sep
    return starts
