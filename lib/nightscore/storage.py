"""One filesystem layer for local paths and s3:// URIs, plus atomic JSON commits.

S3 endpoint and region come from config or the standard AWS environment
(AWS_ENDPOINT_URL, AWS_REGION, credentials chain); credentials are never read,
printed or logged here, only passed through by the AWS SDK.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import S3Spec


class StorageError(Exception):
    """A path cannot be read or written; the message names the URI."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def s3_options(spec: S3Spec | None = None) -> dict[str, Any]:
    """Endpoint/region for S3 from config, falling back to the AWS environment variables."""
    spec = spec or S3Spec()
    endpoint = spec.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    opts: dict[str, Any] = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        opts["endpoint_override"] = host if host else endpoint
        opts["scheme"] = scheme if host else "https"
    return opts


def filesystem(uri: str, s3: S3Spec | None = None) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a local path or s3:// URI."""
    if is_s3(uri):
        fs = pafs.S3FileSystem(**s3_options(s3))
        return fs, uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(fs: pafs.FileSystem, path: str, suffix: str = ".parquet") -> list[str]:
    """Data files below `path`, sorted, skipping hidden/underscore files (Hive convention)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{to_uri(fs, path)} does not exist")
    if info.type == pafs.FileType.File:
        return [path]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = []
    for f in found:
        rel = f.path[len(path):].strip("/")
        if f.type != pafs.FileType.File or not f.path.endswith(suffix):
            continue
        if any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        files.append(f.path)
    return sorted(files)


def write_parquet(table: pa.Table, fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs, compression="zstd")


def read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_json_atomic(obj: dict[str, Any], fs: pafs.FileSystem, path: str) -> None:
    """Write JSON so readers see the old file or the new one, never a torn one."""
    write_bytes_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), fs, path)


def write_bytes_atomic(data: bytes, fs: pafs.FileSystem, path: str) -> None:
    """Readers see the old file or the new one. Local: write a temp file beside it, fsync and
    rename. S3: a single PUT is atomic."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def delete_dir(fs: pafs.FileSystem, path: str) -> None:
    if exists(fs, path):
        fs.delete_dir(path)


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive flock on a local folder itself (no lock file to leave behind); the
    kernel releases it when the holder dies."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
