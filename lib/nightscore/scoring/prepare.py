"""Validated, encoded rows for the inference actors, and the quarantine beside them.

Ray Data's preparation workers import this module, so it stays free of torch and
transformers: those take seconds to import, and every run starts fresh workers.
"""
from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..config import Config
from ..encode import Counts, Encoders, encode
from ..model.store import BACKBONE_DIR, load_encoders
from ..model.tokens import tokenizer_for
from ..validate import batch_source, conform, split


@functools.lru_cache(maxsize=4)
def encoders_for(model_dir: str) -> Encoders:
    """One copy of a (verified) model directory's encoders per process."""
    return load_encoders(Path(model_dir))


def model_input(valid: pa.Table, model_cfg: Config, model_dir: str) -> tuple[pa.Table, Counts]:
    """Encoded rows, exactly as the model directory defines them."""
    return encode(valid, encoders_for(model_dir), model_cfg.schema, tokenizer_for(str(Path(model_dir) / BACKBONE_DIR)))


def valid_rows(batch: pa.Table, cfg: Config, model_cfg: Config, model_dir: str, date: dt.date,
               duplicate_ids: pa.Array) -> pa.Table:
    """Validated rows: the columns the actor carries through, then the model's input columns."""
    table = conform(batch, cfg.schema, batch_source(batch))
    valid = split(table, cfg.schema, date, duplicate_ids).valid
    inputs, _ = model_input(valid, model_cfg, model_dir)
    out = valid.select([c for c in carried_columns(cfg) if c in valid.column_names])
    for name in inputs.column_names:
        out = out.append_column(name, inputs.column(name))
    return out


def write_quarantine(in_fs, files: list[str], cfg: Config, model_cfg: Config, model_dir: str, date: dt.date,
                     duplicate_ids: pa.Array, out_fs, folder: str) -> Counts:
    """Quarantined rows of every input file, streamed batch by batch into one file per input
    file that has any (files may differ in their extra columns, so they never share one).
    Returns what the model's encoders had not seen in the valid rows (counted, not stored)."""
    counts = Counts()
    for i, path in enumerate(files):
        writer = None
        try:
            for batch in pq.ParquetFile(path, filesystem=in_fs).iter_batches(batch_size=cfg.score.prep_rows):
                table = conform(pa.Table.from_batches([batch]), cfg.schema, path)
                parts = split(table, cfg.schema, date, duplicate_ids)
                counts.add(model_input(parts.valid, model_cfg, model_dir)[1])
                bad = parts.quarantine
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
    return counts


def carried_columns(cfg: Config) -> list[str]:
    """Columns the actor needs besides the model input: id, date, and what suitability reads."""
    cols = [cfg.schema.id] + ([cfg.schema.date] if cfg.schema.date else [])
    return cols + [c for c in cfg.products.suitability.columns.model_dump().values() if c]
