"""Write a synthetic customer snapshot partition (and its ground truth) for one date.

    python jobs/make_snapshots.py --out runs/snapshots --date 2024-01-31 --customers 100000 --labels

Writes <out>/date=YYYY-MM-DD/part-NNNNN.parquet and <out>/_truth/date=YYYY-MM-DD/truth.parquet,
replacing that date if it exists. Rows are generated in chunks so memory stays flat for any N.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from nightscore import storage, synth
from nightscore.config import ConfigError, load_config

CHUNK_ROWS = 250_000


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date in YYYY-MM-DD form") from None


def _bounded(kind: type, low: float, high: float = math.inf) -> Callable[[str], float]:
    """argparse type: a number of ``kind`` within [low, high]."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} must be between {low} and {high}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="snapshot root (local path or s3://bucket/prefix)")
    p.add_argument("--date", required=True, type=_date, help="snapshot date, YYYY-MM-DD")
    p.add_argument("--customers", required=True, type=_bounded(int, 1), help="number of customers")
    p.add_argument("--labels", action="store_true", help="add default_12m and products_acquired_90d")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drift", type=_bounded(float, 0.0), default=0.0, help="population shift, 0 = reference")
    p.add_argument("--corrupt-fraction", type=_bounded(float, 0.0, 1.0), default=0.0,
                   help="fraction of rows damaged in ways the validator must catch")
    p.add_argument("--files", type=_bounded(int, 1), default=None, help="Parquet files in the partition")
    p.add_argument("--config", default=str(Path(__file__).parent / "configs/local.yaml"))
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return p.parse_args(argv)


def split(total: int, parts: int) -> list[int]:
    """``total`` rows as ``parts`` near-equal counts."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        product_ids = synth.catalog_product_ids(cfg.products.catalog)
    except ConfigError as exc:
        print(f"make_snapshots: error: {exc}", file=sys.stderr)
        return 2

    n = args.customers
    files = args.files or max(1, math.ceil(n / CHUNK_ROWS), 2 if n >= 1000 else 1)
    files = min(files, n)
    day = args.date.isoformat()
    fs, root = storage.filesystem(args.out, cfg.storage.s3)
    part_dir = storage.join(root, f"date={day}")
    truth_path = storage.join(root, "_truth", f"date={day}", "truth.parquet")
    storage.delete_dir(fs, part_dir)
    storage.delete_dir(fs, truth_path.rsplit("/", 1)[0])
    fs.create_dir(part_dir, recursive=True)
    fs.create_dir(truth_path.rsplit("/", 1)[0], recursive=True)

    # One writer per file, each file filled by one or more chunks: memory stays flat for any N.
    plan = [(i, rows) for i, file_rows in enumerate(split(n, files))
            for rows in split(file_rows, math.ceil(file_rows / CHUNK_ROWS))]
    start = time.perf_counter()
    offset, current = 0, -1
    snap_writer = truth_writer = None
    for chunk, (file_index, rows) in enumerate(plan):
        seed, corrupt_seed = (int(x) for x in np.random.SeedSequence([args.seed, chunk]).generate_state(2))
        snap, truth = synth.generate(rows, args.date, seed, product_ids, labels=args.labels,
                                     drift=args.drift, id_offset=offset)
        if args.corrupt_fraction:
            snap = synth.corrupt(snap, cfg.schema, args.corrupt_fraction, corrupt_seed)
        if file_index != current:
            if snap_writer is not None:
                snap_writer.close()
            path = storage.join(part_dir, f"part-{file_index:05d}.parquet")
            snap_writer = pq.ParquetWriter(path, snap.schema, filesystem=fs, compression="zstd")
            current = file_index
        if truth_writer is None:
            # Unique ids and dense floats: dictionaries only cost time, byte-stream-split compresses floats.
            floats = [f.name for f in truth.schema if f.type == "double"]
            truth_writer = pq.ParquetWriter(truth_path, truth.schema, filesystem=fs, compression="zstd",
                                            use_dictionary=False, use_byte_stream_split=floats)
        snap_writer.write_table(snap)
        truth_writer.write_table(truth)
        offset += rows
    snap_writer.close()
    truth_writer.close()
    elapsed = time.perf_counter() - start
    print(f"wrote {n:,} rows in {files} files to {storage.to_uri(fs, part_dir)} "
          f"({n / elapsed:,.0f} rows/s); truth: {storage.to_uri(fs, truth_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
