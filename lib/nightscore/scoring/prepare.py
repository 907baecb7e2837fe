"""Validated, tokenised rows for the inference actors, and the quarantine beside them.

Ray Data's preparation workers import this module, so it stays free of torch and
transformers: those take seconds to import, and every run starts fresh workers.
"""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..config import Config
from ..model.tokens import tokenize, tokenize_with_fields, tokenizer_for
from ..serialize import field_spans, serialize
from ..validate import batch_source, conform, split


def valid_rows(batch: pa.Table, cfg: Config, model_cfg: Config, tokenizer_dir: str, date: dt.date,
               duplicate_ids: pa.Array) -> pa.Table:
    """Validated rows, with the model's text as token ids and (for reason codes) each token's field index."""
    table = conform(batch, cfg.schema, batch_source(batch))
    valid = split(table, cfg.schema, date, duplicate_ids).valid
    texts, tokenizer = serialize(valid, model_cfg.schema, model_cfg.serialize), tokenizer_for(tokenizer_dir)
    keep = valid.select([c for c in carried_columns(cfg) if c in valid.column_names])
    if not cfg.scorecard.reason_codes:  # each token's field serves only the reason codes (~1/3 of tokenising)
        return keep.append_column("input_ids", tokenize(texts, tokenizer, model_cfg.model.max_length))
    ids, fields = tokenize_with_fields(texts, field_spans(valid, model_cfg.schema, model_cfg.serialize),
                                       tokenizer, model_cfg.model.max_length)
    return keep.append_column("input_ids", ids).append_column("token_field", fields)


def write_quarantine(in_fs, files: list[str], cfg: Config, date: dt.date, duplicate_ids: pa.Array,
                     out_fs, folder: str) -> None:
    """Quarantined rows of every input file, streamed batch by batch into one file per input
    file that has any (files may differ in their extra columns, so they never share one)."""
    for i, path in enumerate(files):
        writer = None
        try:
            for batch in pq.ParquetFile(path, filesystem=in_fs).iter_batches(batch_size=cfg.score.prep_rows):
                table = conform(pa.Table.from_batches([batch]), cfg.schema, path)
                bad = split(table, cfg.schema, date, duplicate_ids).quarantine
                if bad.num_rows == 0:
                    continue
                if writer is None:
                    out_fs.create_dir(folder, recursive=True)
                    writer = pq.ParquetWriter(storage.join(folder, f"part-{i:05d}.parquet"), bad.schema,
                                              filesystem=out_fs, compression="zstd")
                writer.write_table(bad)
        finally:
            if writer is not None:
                writer.close()


def carried_columns(cfg: Config) -> list[str]:
    """Columns the actor needs besides tokens: id, date, and what suitability reads."""
    cols = [cfg.schema.id] + ([cfg.schema.date] if cfg.schema.date else [])
    return cols + [c for c in cfg.products.suitability.columns.model_dump().values() if c]
