"""Promotion: the approved-model pointer moves only on evidence, and every attempt is on record.

The pointer is a small JSON file naming the approved model and pinning its manifest's sha256,
so the nightly job scores exactly the directory that was reviewed. A candidate is promoted
when its latest back-test passed its thresholds: as the champion, or as the challenger scored
beside it (whose thresholds include beating the champion's realised AUC). Without passing
evidence a promotion is refused unless it is an explicit override with a reason. Every
attempt, refused or done, appends who, when, from which model to which, the evidence and the
reason to ``promotions.jsonl`` beside the pointer: one JSON object per line, appended with a
compare-and-swap write, so two promoters never lose each other's line.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from typing import Any

from . import lease, partition, storage
from .backtest import JSON_NAME as BACKTEST_JSON
from .config import S3Spec
from .model import store

AUDIT_LOG = "promotions.jsonl"


class PromotionRefused(Exception):
    """No passing evidence for the candidate and no override."""


def audit_log(pointer: str) -> str:
    return f"{pointer.rstrip('/').rsplit('/', 1)[0]}/{AUDIT_LOG}" if "/" in pointer else AUDIT_LOG


def read_pointer(pointer: str, s3: S3Spec | None = None) -> dict[str, str] | None:
    """The pointer's {"model", "manifest_sha256"}, or None when it does not exist yet."""
    fs, path = storage.filesystem(pointer, s3)
    if not storage.exists(fs, path):
        return None
    try:
        pinned = storage.read_json(fs, path)
        return {"model": pinned["model"], "manifest_sha256": pinned["manifest_sha256"]}
    except (ValueError, TypeError, KeyError):
        raise store.ModelError(
            f"model pointer {pointer} is not a pinned pointer (JSON with model and manifest_sha256): promote the "
            "approved model again with jobs/promote.py") from None


def append(uri: str, entry: dict[str, Any], s3: S3Spec | None = None, tries: int = 20) -> None:
    """Append one JSON line to `uri`, on disk or S3, without losing a concurrent writer's line."""
    fs, path = storage.filesystem(uri, s3)
    obj = lease.compare_and_swap(fs, path, s3)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    for _ in range(tries):
        now = obj.read()
        if (obj.create(line) if now is None else obj.replace(now[0] + line, now[1])) is not None:
            return
    raise storage.StorageError(f"{uri}: could not append after {tries} concurrent updates")


def history(pointer: str, s3: S3Spec | None = None) -> list[dict[str, Any]]:
    """Every recorded promotion attempt, oldest first."""
    fs, path = storage.filesystem(audit_log(pointer), s3)
    if not storage.exists(fs, path):
        return []
    with fs.open_input_stream(path) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def in_force(pointer: str, s3: S3Spec | None = None) -> dict[str, Any] | None:
    """The pointer's model and the promotion that put it there (when, by whom, why)."""
    pinned = read_pointer(pointer, s3)
    if pinned is None:
        return None
    done = [e for e in history(pointer, s3)
            if e.get("promoted") and (e.get("to") or {}).get("manifest_sha256") == pinned["manifest_sha256"]]
    last = done[-1] if done else {}
    return {**pinned, "since": last.get("at"), "by": last.get("user"), "why": last.get("why")}


def latest_backtest(reports: str, manifest_sha256: str, s3: S3Spec | None = None) -> dict[str, Any] | None:
    """The newest back-test of the model with this manifest, as champion or challenger."""
    fs, root = storage.filesystem(reports, s3)
    for date in reversed(partition.dates(fs, root)):
        path = storage.join(partition.date_dir(root, date), BACKTEST_JSON)
        if not storage.exists(fs, path):
            continue
        report = storage.read_json(fs, path)
        for role, part in (("champion", report), ("challenger", report.get("challenger") or {})):
            if (part.get("model") or {}).get("manifest_sha256") == manifest_sha256:
                return {"file": storage.to_uri(fs, path), "date": report["date"], "role": role,
                        "passed": part["status"] == "pass", "breaches": part["breaches"]}
    return None


def _previous(pointer: str, s3: S3Spec | None) -> dict[str, Any] | None:
    """What the pointer held before; a legacy plain-URI pointer is replaced, not a dead end."""
    try:
        return read_pointer(pointer, s3)
    except store.ModelError:
        return {"model": None, "manifest_sha256": None, "note": "not a pinned pointer"}


def promote(pointer: str, model: str, why: str, reports: str | None = None, override: bool = False,
            s3: S3Spec | None = None) -> dict[str, Any]:
    """Point `pointer` at `model` if its latest back-test under `reports` passed (or `override`);
    record the attempt either way. Returns the audit entry; raises PromotionRefused."""
    if not why.strip():
        raise ValueError("a promotion needs a reason (--why)")
    store.fetch(model, s3)  # verifies every file: a damaged or incomplete directory is never approved
    digest = store.manifest_sha256(model, s3)
    evidence = latest_backtest(reports, digest, s3) if reports else None
    passed = bool(evidence and evidence["passed"])
    entry = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "user": getpass.getuser(),
             "host": socket.gethostname(), "from": _previous(pointer, s3),
             "to": {"model": model, "manifest_sha256": digest}, "evidence": evidence, "evidence_passed": passed,
             "override": override, "why": why, "promoted": passed or override}
    append(audit_log(pointer), entry, s3)  # on record before the pointer moves: no move goes unlogged
    if not entry["promoted"]:
        found = (f"its latest back-test ({evidence['file']}) failed: "
                 + ", ".join(b["metric"] for b in evidence["breaches"]) if evidence
                 else f"no back-test of it under {reports}" if reports else "no reports root to look for evidence in")
        raise PromotionRefused(f"not promoted: {found}; the refusal is recorded in {audit_log(pointer)} "
                               "(--override --why '...' promotes anyway, on record)")
    fs, path = storage.filesystem(pointer, s3)
    storage.write_json_atomic(entry["to"], fs, path)
    return entry
