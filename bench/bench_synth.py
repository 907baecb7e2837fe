"""Generation throughput: ``synth.generate`` with labels, chunked as jobs/make_snapshots.py does.

    python bench/bench_synth.py [--rows 1000000] [--chunk 250000]

The target is >= 100k rows/s on a 2-core machine; Parquet writing is not included.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np

from nightscore import synth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--chunk", type=int, default=250_000)
    args = p.parse_args()
    products = synth.catalog_product_ids("builtin:catalog.yaml")
    synth.generate(1_000, dt.date(2024, 1, 31), 0, products, labels=True)  # warm imports and caches

    start = time.perf_counter()
    done = chunk = 0
    while done < args.rows:
        rows = min(args.chunk, args.rows - done)
        seed = int(np.random.SeedSequence([0, chunk]).generate_state(1)[0])
        synth.generate(rows, dt.date(2024, 1, 31), seed, products, labels=True, id_offset=done)
        done += rows
        chunk += 1
    elapsed = time.perf_counter() - start
    print(f"generate: {done:,} rows with labels in {elapsed:.2f}s = {done / elapsed:,.0f} rows/s "
          f"({chunk} chunks of <= {args.chunk:,})")


if __name__ == "__main__":
    main()
