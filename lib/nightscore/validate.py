"""Arrow batch -> (valid rows, quarantined rows + reason), vectorised with pyarrow.compute.

Two kinds of failure: a whole-file problem (unreadable, missing required column, a
column that cannot be cast to its configured type) raises `InputFileError` naming file,
column and row, before anything is written; a row problem sends that row to quarantine
with a readable reason. Neither message ever quotes a cell's value (it may be personal
data). `valid + quarantined == input`, always.

Quarantine keeps every input column unchanged except PII columns, which are dropped,
and free-text columns, which are scrubbed: no PII value may reach any output.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import SchemaSpec
from .schema import required_columns
from .encode import scrub

REASON = "reason"
PATH_COLUMN = "path"  # added by ray.data.read_parquet(include_paths=True)


class InputFileError(Exception):
    """A whole input file is unusable; nothing may be committed."""


@dataclass(frozen=True)
class Split:
    valid: pa.Table
    quarantine: pa.Table


def batch_source(batch: pa.Table) -> str:
    """The file(s) a Ray Data batch came from, for error messages."""
    if PATH_COLUMN not in batch.column_names:
        return "input"
    return ",".join(sorted(set(batch.column(PATH_COLUMN).to_pylist())))


def conform(table: pa.Table, schema: SchemaSpec, source: str, with_labels: bool = False) -> pa.Table:
    """Check required columns exist and cast them to their configured types; NaN in a numeric
    feature becomes null (missing), so `nullable` decides whether the row is kept.

    Raises InputFileError naming `source` and the column when a column is missing or
    cannot be cast as a whole (e.g. text in a numeric column), with the first row (counted
    from the start of `table`) that does not convert, never its value.
    """
    wanted = required_columns(schema, with_labels)
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise InputFileError(f"{source}: missing required column(s) {', '.join(missing)}")
    numeric = {f.name for f in schema.features if f.kind == "numeric"}
    for name, typ in wanted.items():
        col = original = table.column(name)
        if name in numeric and pa.types.is_floating(col.type) and pc.any(pc.is_nan(col)).as_py():
            # pandas writes a missing number as NaN (an integer column with gaps too, as float): the
            # null it means, before the cast, so that an `integer: true` column still casts
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        if col.type != typ:
            try:
                col = _cast_column(col, typ, name, source)
            except InputFileError as err:
                if name != schema.labels.default:
                    raise
                raise InputFileError(f"{err}; a label coded otherwise than true/false or 0/1 needs the values "
                                     "that mean defaulted in schema.labels.default_values") from None
        if col is not original:
            table = table.set_column(table.schema.get_field_index(name), name, col)
    return table


def _cast_column(col: pa.ChunkedArray, typ: pa.DataType, name: str, source: str) -> pa.ChunkedArray:
    """The column cast to `typ`, or InputFileError naming source, column and the first bad row.

    Arrow's own message quotes the offending value, and an input value may be personal
    data, so the message is ours and names where the value is, never what it is.
    """
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_boolean(typ) and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        # Arrow reads any non-zero number as true: a 2 ("indeterminate") would silently become a default
        other = pc.and_(pc.is_valid(col), pc.invert(pc.is_in(col, value_set=pa.array([0, 1], col.type))))
        if pc.any(other).as_py():
            row = int(np.flatnonzero(other.to_numpy(zero_copy_only=False))[0])
            raise InputFileError(f"{source}: column {name!r} has type {col.type} and values other than 0 and 1, "
                                 f"which cannot be read as {typ}: first at row {row} (0-based; value not shown)")
    try:
        return pc.cast(col, typ, safe=True)
    except pa.ArrowNotImplementedError:
        raise InputFileError(f"{source}: column {name!r} has type {col.type}, which cannot be read as {typ}") from None
    except pa.ArrowInvalid:
        raise InputFileError(
            f"{source}: column {name!r} has type {col.type}, which cannot be read as {typ}: row "
            f"{_first_uncastable(col, typ)} (0-based) holds a value that does not convert (value not shown)"
        ) from None


def _first_uncastable(col: pa.ChunkedArray, typ: pa.DataType) -> int:
    """Index of the first value that fails to cast, by halving the rows (about log2(n) casts)."""
    lo, hi = 0, len(col)  # the first failure lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(col.slice(lo, mid - lo), typ, safe=True)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def _mask(x: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow boolean -> numpy bool with null as False."""
    return pc.fill_null(x, False).to_numpy(zero_copy_only=False).astype(bool)


def row_problems(
    table: pa.Table,
    schema: SchemaSpec,
    date: dt.date | None = None,
    duplicate_ids: pa.Array | None = None,
) -> list[tuple[np.ndarray, str]]:
    """Every row check as (failing-rows mask, reason). `table` must be conformed."""
    checks: list[tuple[np.ndarray, str]] = []
    ids = table.column(schema.id)
    id_missing = _mask(pc.or_kleene(pc.is_null(ids), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0)))
    checks.append((id_missing, f"missing {schema.id}"))
    counts = pc.value_counts(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    dup_values = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if duplicate_ids is not None and len(duplicate_ids):
        dup_values = pa.concat_arrays([dup_values.cast(pa.string()), duplicate_ids.cast(pa.string())])
    checks.append((_mask(pc.is_in(ids, value_set=dup_values)) & ~id_missing, f"duplicate {schema.id}"))
    if schema.date:
        d = table.column(schema.date)
        checks.append((_mask(pc.is_null(d)), f"missing {schema.date}"))
        if date is not None:
            checks.append((_mask(pc.not_equal(d, pa.scalar(date, pa.date32()))), f"{schema.date} is not {date}"))
    for f in schema.features:
        col = table.column(f.name)
        if not f.nullable:
            checks.append((_mask(pc.is_null(col)), f"{f.name} is missing"))
        if f.kind == "numeric":
            if pa.types.is_floating(col.type):
                checks.append((_mask(pc.invert(pc.is_finite(col))), f"{f.name} is not a finite number"))
            if f.min is not None:
                checks.append((_mask(pc.less(col, f.min)), f"{f.name} below minimum {f.min:g}"))
            if f.max is not None:
                checks.append((_mask(pc.greater(col, f.max)), f"{f.name} above maximum {f.max:g}"))
        elif f.kind == "categorical" and f.values is not None:
            allowed = pa.array(f.values, pa.string())
            checks.append((_mask(pc.invert(pc.is_in(col, value_set=allowed))) & _mask(pc.is_valid(col)),
                           f"{f.name} has a value outside {f.values}"))
        elif f.kind == "list" and f.values is not None:
            flat = pc.list_flatten(col)
            bad_item = pc.invert(pc.is_in(flat, value_set=pa.array(f.values, pa.string())))
            parents = pc.list_parent_indices(col)
            bad_rows = np.zeros(table.num_rows, dtype=bool)
            bad_rows[pc.filter(parents, bad_item).to_numpy(zero_copy_only=False)] = True
            checks.append((bad_rows, f"{f.name} has an item outside {f.values}"))
    return checks


def split(
    table: pa.Table,
    schema: SchemaSpec,
    date: dt.date | None = None,
    duplicate_ids: pa.Array | None = None,
) -> Split:
    """Partition a conformed table into valid rows and quarantined rows with reasons."""
    n = table.num_rows
    reasons = np.full(n, "", dtype=object)
    bad = np.zeros(n, dtype=bool)
    for mask, text in row_problems(table, schema, date, duplicate_ids):
        if not mask.any():
            continue
        fresh = mask & ~bad
        reasons[fresh] = text
        again = mask & bad
        reasons[again] = reasons[again] + "; " + text
        bad |= mask
    valid = table.filter(pa.array(~bad))
    quarantine = redact(table.filter(pa.array(bad)), schema)
    quarantine = quarantine.append_column(REASON, pa.array(reasons[bad].tolist(), pa.string()))
    return Split(valid=valid, quarantine=quarantine)


def redact(table: pa.Table, schema: SchemaSpec) -> pa.Table:
    """Drop PII columns and scrub free text, for anything written outside the model."""
    keep = [c for c in table.column_names if c not in set(schema.pii)]
    table = table.select(keep)
    for f in schema.features:
        if f.kind == "text" and f.name in table.column_names:
            i = table.schema.get_field_index(f.name)
            table = table.set_column(i, f.name, scrub(pc.cast(table.column(f.name), pa.string())))
    return table


def preflight(fs, files: list[str], schema: SchemaSpec, with_labels: bool = False) -> pa.Array:
    """Whole-file checks on every input file before any work starts.

    Reads footers (unreadable file, missing column) and, only where a column's stored
    type differs from the configured one, that column (un-castable values). Returns the
    ids that occur more than once across all files, so per-batch validation can
    quarantine cross-file duplicates.
    """
    import pyarrow.parquet as pq

    wanted = required_columns(schema, with_labels)
    if not files:
        raise InputFileError("no Parquet files found in the input")
    ids = []
    for path in files:
        try:
            pf = pq.ParquetFile(path, filesystem=fs)
            arrow_schema = pf.schema_arrow
        except (OSError, pa.ArrowException) as exc:
            raise InputFileError(f"{path}: unreadable Parquet file ({exc})") from None
        missing = [c for c in wanted if c not in arrow_schema.names]
        if missing:
            raise InputFileError(f"{path}: missing required column(s) {', '.join(missing)}")
        differing = [c for c, t in wanted.items() if arrow_schema.field(c).type != t]
        try:
            table = pf.read(columns=sorted({schema.id, *differing}))
        except (OSError, pa.ArrowException) as exc:
            raise InputFileError(f"{path}: unreadable Parquet file ({exc})") from None
        for name in differing:
            _cast_column(table.column(name), wanted[name], name, path)
        ids.append(pc.cast(table.column(schema.id), pa.string()))
    all_ids = pa.chunked_array([c for col in ids for c in col.chunks], pa.string()).combine_chunks()
    counts = pc.value_counts(all_ids)
    return pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1)).drop_null()


def check_partition(fs, files: list[str], schema: SchemaSpec, date: dt.date | None,
                    with_labels: bool = False) -> dict[str, object]:
    """Validate a whole partition in this process (no Ray): counts and reasons, for quick checks."""
    import collections

    import pyarrow.parquet as pq

    dups = preflight(fs, files, schema, with_labels)
    totals = {"files": len(files), "input_rows": 0, "valid_rows": 0, "quarantined_rows": 0}
    reasons: collections.Counter[str] = collections.Counter()
    for path in files:
        result = split(conform(pq.read_table(path, filesystem=fs), schema, path, with_labels), schema, date, dups)
        totals["input_rows"] += result.valid.num_rows + result.quarantine.num_rows
        totals["valid_rows"] += result.valid.num_rows
        totals["quarantined_rows"] += result.quarantine.num_rows
        for text in result.quarantine.column(REASON).to_pylist():
            reasons.update(text.split("; "))
    return {**totals, "reasons": dict(reasons.most_common())}
