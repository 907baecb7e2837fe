"""A per-date lease: at most one run scores and commits a snapshot date at a time.

The lease is one small object, `<output>/date=YYYY-MM-DD/_lease.json`, naming its holder
(run id, host, pid, start) and an expiry. It is taken and renewed with compare-and-swap
writes, so of two runs that race for it exactly one wins:

- local disk: an exclusive create (a hard link of a complete temp file); a renewal or take-over replaces the file under
  an fcntl lock on the date's folder, after checking it still holds what the writer last read;
- S3: a conditional PUT, `If-None-Match: *` to create and `If-Match: <etag>` to renew or take
  over, which S3 (and moto) refuse with 412 when another writer got there first.

The holder renews it from a background thread while the run lives; a crashed run's lease
expires and the next run takes it over. A run that finds it lost its lease (expired while it
was stalled, then taken) stops before committing.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow.fs as pafs

from . import storage
from .config import S3Spec

LEASE = "_lease.json"


class LeaseHeld(Exception):
    """Another live run holds the date's lease; the message names it."""


class LeaseLost(Exception):
    """This run's lease expired and another run took it over: it must not commit."""


# --------------------------------------------------------------------------- compare-and-swap
class _Local:
    """Compare-and-swap on a local file; the tag of a version is the sha256 of its bytes."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return None
        return body, hashlib.sha256(body).hexdigest()

    def _staged(self, body: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, body: bytes) -> str | None:
        """Hard-link a complete temp file into place: atomic, and fails when the lease exists
        (an O_EXCL create would let a reader see the file before its content)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self._staged(body)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)
        return hashlib.sha256(body).hexdigest()

    def replace(self, body: bytes, tag: str) -> str | None:
        with storage.locked_dir(os.path.dirname(self.path)):
            now = self.read()
            if now is None or now[1] != tag:
                return None
            os.replace(self._staged(body), self.path)
        return hashlib.sha256(body).hexdigest()

    def delete(self, tag: str) -> None:
        with storage.locked_dir(os.path.dirname(self.path)):
            now = self.read()
            if now is not None and now[1] == tag:
                os.remove(self.path)


class _S3:
    """Compare-and-swap on an S3 object with conditional PUTs; the tag is the ETag."""

    def __init__(self, path: str, s3: S3Spec | None):
        import s3fs

        opts = storage.s3_options(s3)
        endpoint = f"{opts['scheme']}://{opts['endpoint_override']}" if "endpoint_override" in opts else None
        self.fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint, "region_name": opts["region"]})
        self.path = f"s3://{path}"
        self.bucket, _, self.key = path.partition("/")

    def read(self) -> tuple[bytes, str] | None:
        """Body and ETag from one GET, so the tag is the version whose body we judge."""
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str]:
            out = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with out["Body"] as stream:
                return await stream.read(), out["ETag"]

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def _put(self, body: bytes, **condition: str) -> str | None:
        try:
            return self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
        except (FileExistsError, FileNotFoundError):  # 412 Precondition Failed; If-Match on a deleted object
            return None
        except OSError as exc:  # 409 ConditionalRequestConflict: a concurrent conditional write won
            if exc.errno in (errno.EINVAL, errno.EBUSY):
                return None
            raise

    def create(self, body: bytes) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def replace(self, body: bytes, tag: str) -> str | None:
        return self._put(body, IfMatch=tag)

    def delete(self, tag: str) -> None:
        now = self.read()  # S3 has no conditional delete everywhere: a lease released by its holder is
        if now is not None and now[1] == tag:  # not expired, so nobody else can have taken it meanwhile
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)


# --------------------------------------------------------------------------- the lease
@dataclass
class Lease:
    """A lease this process holds; `check()` before committing, `release()` when done."""

    store: Any
    holder: dict[str, Any]
    seconds: float
    tag: str
    lost: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def renew(self) -> None:
        with self._lock:
            if self.lost:
                raise LeaseLost(_describe(self.holder, "this run's lease was taken over by another run"))
            holder = {**self.holder, "expires_at": _stamp(time.time() + self.seconds)}
            tag = self.store.replace(_encode(holder), self.tag)
            if tag is None:
                self.lost = True
                raise LeaseLost(f"run {self.holder['run_id']} lost its lease on {self.store.path} "
                                "(it expired and another run took it over); nothing committed")
            self.holder, self.tag = holder, tag

    def check(self) -> None:
        """Renew once more and fail if the lease is no longer ours (called right before commit)."""
        self.renew()

    def release(self) -> None:
        with self._lock:
            if not self.lost:
                self.store.delete(self.tag)
                self.lost = True


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _encode(holder: dict[str, Any]) -> bytes:
    return json.dumps(holder, sort_keys=True).encode()


def _describe(holder: dict[str, Any], what: str) -> str:
    return (f"{what}: run {holder.get('run_id')} on host {holder.get('host')} (pid {holder.get('pid')}), "
            f"started {holder.get('started_at')}, lease expires {holder.get('expires_at')}")


def compare_and_swap(fs: pafs.FileSystem, path: str, s3: S3Spec | None) -> "_Local | _S3":
    """The object at `path` with read / create-if-absent / replace-if-unchanged, on disk or S3."""
    return _Local(path) if isinstance(fs, pafs.LocalFileSystem) else _S3(path, s3)


def acquire(fs: pafs.FileSystem, date_dir: str, run_id: str, seconds: float, wait: float = 0.0,
            s3: S3Spec | None = None) -> Lease:
    """Take the lease of one date's folder, waiting up to `wait` seconds for a live holder.

    Raises LeaseHeld naming the live holder when it is still held after `wait`.
    """
    store = compare_and_swap(fs, storage.join(date_dir, LEASE), s3)
    deadline = time.monotonic() + wait
    while True:
        holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                  "started_at": _stamp(time.time()), "expires_at": _stamp(time.time() + seconds)}
        tag = store.create(_encode(holder))
        if tag is not None:
            return Lease(store, holder, seconds, tag)
        current = store.read()
        if current is None:
            continue  # released between our create and our read: try again at once
        theirs = json.loads(current[0])
        if dt.datetime.fromisoformat(theirs["expires_at"]).timestamp() < time.time():
            tag = store.replace(_encode(holder), current[1])  # a crashed run's lease: take it over
            if tag is not None:
                print(_describe(theirs, f"[lease] took over the expired lease of {storage.to_uri(fs, date_dir)}"),
                      flush=True)
                return Lease(store, holder, seconds, tag)
        if time.monotonic() >= deadline:
            raise LeaseHeld(_describe(theirs, f"{storage.to_uri(fs, date_dir)} is being scored by another run; "
                                      "wait for it (--wait SECONDS) or retry later"))
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


@contextlib.contextmanager
def held(fs: pafs.FileSystem, date_dir: str, run_id: str, seconds: float, wait: float = 0.0,
         s3: S3Spec | None = None) -> Iterator[Lease]:
    """The lease for the body of a run, renewed every third of its life, released at the end."""
    lease = acquire(fs, date_dir, run_id, seconds, wait, s3)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(seconds / 3):
            try:
                lease.renew()
            except LeaseLost:
                return  # check() before the commit reports it
            except OSError:
                continue  # storage briefly unreachable: try again; the lease outlives a few misses

    renewer = threading.Thread(target=keep, name="lease-renewer", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        lease.release()
