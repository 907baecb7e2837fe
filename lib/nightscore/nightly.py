"""The scheduled run: score yesterday's snapshot (idempotently), then write the monitoring report."""
from __future__ import annotations

import datetime as dt
import tempfile
import zoneinfo
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from . import monitoring, partition, storage
from .config import Config, ConfigError, NightlySpec, S3Spec
from .model import store
from .scoring.pipeline import resolve_input, run as score


def default_date(spec: NightlySpec, now: dt.datetime | None = None) -> dt.date:
    """Yesterday in the configured time zone (a 01:00 UTC run in Sydney is already 'today')."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.astimezone(zoneinfo.ZoneInfo(spec.timezone)).date() - dt.timedelta(days=1)


def pin_model(pointer: str, model: str, s3: S3Spec | None = None) -> None:
    """Approve a model: write the pointer file naming it and its manifest's sha256, so the nightly
    job scores with exactly the directory that was reviewed and refuses one changed since."""
    fs, path = storage.filesystem(pointer, s3)
    storage.write_json_atomic({"model": model, "manifest_sha256": store.manifest_sha256(model, s3)}, fs, path)


def model_uri(spec: NightlySpec, cfg: Config) -> str:
    """The model to use: configured directly, or named by the approved-model pointer file (see
    pin_model), after checking the model's manifest still has the sha256 the pointer pins."""
    if spec.model:
        return spec.model
    pointer = spec.model_pointer
    fs, path = storage.filesystem(pointer, cfg.storage.s3)
    if not storage.exists(fs, path):
        raise store.ModelError(f"model pointer {pointer} does not exist")
    try:
        pinned = storage.read_json(fs, path)
        model, digest = pinned["model"], pinned["manifest_sha256"]
    except (ValueError, TypeError, KeyError):
        raise store.ModelError(
            f"model pointer {pointer} is not a pinned pointer (JSON with model and manifest_sha256): pin the "
            "approved model again with nightscore.nightly.pin_model (deploy/README-sections.md, Promotion)") from None
    if store.manifest_sha256(model, cfg.storage.s3) != digest:
        raise store.ModelError(
            f"model pointer {pointer}: the manifest.json of {model} does not have the sha256 the pointer pins: "
            "the model directory changed after it was approved; review it and pin it again")
    return model


def _history(fs: pafs.FileSystem, root: str, before: dt.date, n: int) -> list[dict[str, Any]]:
    """Earlier reports (oldest first) for the trend plots."""
    if not storage.exists(fs, root):
        return []
    dates = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("date="):
            try:
                d = dt.date.fromisoformat(name[5:])
            except ValueError:
                continue
            if d < before and storage.exists(fs, f"{info.path}/report.json"):
                dates.append(d)
    return [storage.read_json(fs, storage.join(root, f"date={d}", "report.json")) for d in sorted(dates)[-n:]]


def model_reference(model: str, cfg: Config) -> dict[str, Any]:
    """The population the nightly report compares each day against: binned distributions stored with the model."""
    reference = store.load_reference(store.fetch(model, cfg.storage.s3))
    if reference is None:
        raise store.ModelError(
            f"model {model} has no reference population ({store.REFERENCE_FILE}) for the nightly report to compare "
            "against: a products-only model has none (score it with jobs/score.py); retrain a model with a "
            "default head to get one")
    return reference


def monitor(cfg: Config, date: dt.date, record: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Build and write the monitoring report of a committed date against the reference
    population of the model that scored it. Returns the report."""
    spec = cfg.nightly
    scores = partition.read(spec.output, date, "scores", cfg.storage.s3)

    in_fs, _, files = resolve_input(spec.snapshots, date, cfg.storage.s3)
    wanted = [f.name for f in cfg.schema.features if f.name in reference["features"]]
    wanted += [s.column for s in cfg.monitoring.sensitive if s.column not in wanted]
    rows = pads.dataset(files, filesystem=in_fs, format="parquet").to_table(
        columns=[cfg.schema.id, *wanted], filter=pc.field(cfg.schema.id).isin(scores.column("customer_id")))
    at = pc.index_in(scores.column("customer_id"), value_set=pc.cast(rows.column(0), pa.string()))
    features = rows.take(at).select(wanted)  # aligned to the scores by customer_id, never by position

    rep_fs, rep_root = storage.filesystem(spec.reports, cfg.storage.s3)
    report = monitoring.build_report(
        date=date.isoformat(), scores=scores,
        quarantine_rows=record["quarantined_rows"], input_rows=record["input_rows"], features=features,
        reference=reference, schema=cfg.schema, spec=cfg.monitoring,
        band_names=[b.name for b in cfg.scorecard.bands],
        history=_history(rep_fs, rep_root, date, cfg.monitoring.history), scorecard=cfg.scorecard)
    report["run_id"] = record["run_id"]
    report["model_version"] = record["model_version"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = monitoring.write_report(report, reference, scores.column("pd_12m").to_numpy(), Path(tmp))
        for p in paths:
            target = storage.join(rep_root, f"date={date}", p.name)
            rep_fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with rep_fs.open_output_stream(target) as out:
                out.write(p.read_bytes())
    report["report_html"] = storage.to_uri(rep_fs, storage.join(rep_root, f"date={date}", "report.html"))
    return report


def run(cfg: Config, date: dt.date | None = None, force: bool = False,
        wait: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score then monitor one date; returns (manifest, report)."""
    spec = cfg.nightly
    if spec is None:
        raise ConfigError("nightly: section is missing (snapshots, output, reports and model or model_pointer)")
    date = date or default_date(spec)
    model = model_uri(spec, cfg)
    reference = model_reference(model, cfg)  # the report needs it: fail before scoring, not after the commit
    record = score(cfg, spec.snapshots, model, spec.output, date, force=force, wait=wait)
    scored_by = record.get("model_uri", model)  # a date committed earlier may have been scored by another model
    if scored_by != model:
        reference = model_reference(scored_by, cfg)
    return record, monitor(cfg, date, record, reference)

