"""Output partitions and their commit protocol.

Layout under an output root, one partition per snapshot date:

    <root>/date=YYYY-MM-DD/_manifest.json            the commit point, written last
    <root>/date=YYYY-MM-DD/run=<run_id>/scores/*.parquet
    <root>/date=YYYY-MM-DD/run=<run_id>/quarantine/*.parquet

A run writes only inside its own `run=<run_id>/` folder (its staging area), checks the
invariants, then publishes by writing the manifest, which names the run and lists its
files. Writing one small object is atomic on local disk (rename) and on S3 (single PUT),
so a reader sees the old partition or the new one, never a mix; a folder whose run no
manifest names is not committed and readers ignore it. A run stages and commits while it
holds the date's lease (`lease`, `<root>/date=…/_lease.json`), so no other live run writes
under the date when it commits, and the superseded and crashed runs' folders it then
deletes belong to no live run.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from . import storage
from .config import S3Spec

MANIFEST = "_manifest.json"
KINDS = ("scores", "quarantine")


def date_dir(root: str, date: dt.date) -> str:
    return storage.join(root, f"date={date.isoformat()}")


def dates(fs: pafs.FileSystem, root: str) -> list[dt.date]:
    """The dates with a date=YYYY-MM-DD/ folder under a root, oldest first."""
    if not storage.exists(fs, root):
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("date="):
            try:
                found.append(dt.date.fromisoformat(name[5:]))
            except ValueError:
                continue
    return sorted(found)


def run_dir(root: str, date: dt.date, run_id: str) -> str:
    return storage.join(date_dir(root, date), f"run={run_id}")


def manifest(fs: pafs.FileSystem, root: str, date: dt.date) -> dict[str, Any] | None:
    """The committed manifest of a date, or None when the date is not (completely) committed."""
    path = storage.join(date_dir(root, date), MANIFEST)
    return storage.read_json(fs, path) if storage.exists(fs, path) else None


def commit(fs: pafs.FileSystem, root: str, date: dt.date, record: dict[str, Any]) -> None:
    """Publish a run (its caller holds the date's lease): write the manifest (atomic), then
    remove every other run's folder."""
    storage.write_json_atomic(record, fs, storage.join(date_dir(root, date), MANIFEST))
    keep = f"run={record['run_id']}"
    for info in fs.get_file_info(pafs.FileSelector(date_dir(root, date))):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("run=") and name != keep:
            fs.delete_dir(info.path)


def read(uri: str, date: dt.date, kind: str = "scores", s3: S3Spec | None = None) -> pa.Table:
    """Committed rows of one date (`scores` or `quarantine`); raises if the date is not committed."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    fs, root = storage.filesystem(uri, s3)
    record = manifest(fs, root, date)
    if record is None:
        raise storage.StorageError(f"{uri}: date {date} has no committed manifest")
    files = [storage.join(date_dir(root, date), rel) for rel in record["files"][kind]]
    if not files:
        return pa.table({})
    return pads.dataset(files, filesystem=fs, format="parquet").to_table()
