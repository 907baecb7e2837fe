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

from . import backtest, challenger, monitoring, partition, promotion, storage
from .challenger import ABTest
from .config import Config, ConfigError, NightlySpec
from .model import store
from .scoring.outputs import SCHEMA as SCORES
from .scoring.pipeline import resolve_input, run as score
from .validate import InputFileError


def default_date(spec: NightlySpec, now: dt.datetime | None = None) -> dt.date:
    """Yesterday in the configured time zone (a 01:00 UTC run in Sydney is already 'today')."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.astimezone(zoneinfo.ZoneInfo(spec.timezone)).date() - dt.timedelta(days=1)


def model_uri(spec: NightlySpec, cfg: Config) -> str:
    """The model to use: configured directly, or named by the approved-model pointer (see
    promotion), after checking the model's manifest still has the sha256 the pointer pins."""
    if spec.model:
        return spec.model
    pointer = spec.model_pointer
    pinned = promotion.read_pointer(pointer, cfg.storage.s3)
    if pinned is None:
        raise store.ModelError(f"model pointer {pointer} does not exist")
    if store.manifest_sha256(pinned["model"], cfg.storage.s3) != pinned["manifest_sha256"]:
        raise store.ModelError(
            f"model pointer {pointer}: the manifest.json of {pinned['model']} does not have the sha256 the pointer "
            "pins: the model directory changed after it was approved; review it and promote it again")
    return pinned["model"]


def _history(fs: pafs.FileSystem, root: str, before: dt.date, n: int) -> list[dict[str, Any]]:
    """Earlier reports (oldest first) for the trend plots."""
    dates = [d for d in partition.dates(fs, root)
             if d < before and storage.exists(fs, storage.join(partition.date_dir(root, d), "report.json"))]
    return [storage.read_json(fs, storage.join(partition.date_dir(root, d), "report.json")) for d in dates[-n:]]


def _outcome_trend(fs: pafs.FileSystem, root: str, upto: dt.date, n: int) -> list[dict[str, Any]]:
    """Realised AUC and calibration of every back-tested date up to `upto` (oldest first, last n)."""
    points = []
    for d in partition.dates(fs, root):
        path = storage.join(partition.date_dir(root, d), backtest.JSON_NAME)
        if d > upto or not storage.exists(fs, path):
            continue
        r = storage.read_json(fs, path)
        default = r.get("default") or {}
        challenger = (r.get("challenger") or {}).get("default") or {}
        points.append({"date": r["date"], "status": r["status"],
                       "auc": (default.get("metrics") or {}).get("auc"), "mean_pd": default.get("mean_pd"),
                       "default_rate": default.get("default_rate"),
                       "failed_band_share": default.get("failed_band_share"),
                       "challenger_auc": (challenger.get("metrics") or {}).get("auc")})
    return points[-n:]


def backtest_landed(cfg: Config) -> list[dict[str, Any]]:
    """Back-test every committed date whose outcomes have landed and that has no back-test of its
    committed run yet (a forced rescore makes the old one stale). Idempotent: a rerun finds
    nothing to do. A date whose back-test cannot run is reported with its error, not raised: the
    scores are committed either way."""
    spec, s3 = cfg.nightly, cfg.storage.s3
    out_fs, out_root = storage.filesystem(spec.output, s3)
    o_fs, o_root = storage.filesystem(spec.outcomes, s3)
    rep_fs, rep_root = storage.filesystem(spec.reports, s3)
    sh_fs, sh_root = storage.filesystem(spec.shadow, s3)
    done = []
    for d in partition.dates(out_fs, out_root):
        committed = partition.manifest(out_fs, out_root, d)
        outcome_dir = partition.date_dir(o_root, d)
        if committed is None or not storage.exists(o_fs, outcome_dir) or not storage.list_files(o_fs, outcome_dir):
            continue
        path = storage.join(partition.date_dir(rep_root, d), backtest.JSON_NAME)
        if storage.exists(rep_fs, path) and \
                (storage.read_json(rep_fs, path).get("model") or {}).get("scores_run_id") == committed["run_id"]:
            continue
        shadow = spec.shadow if partition.manifest(sh_fs, sh_root, d) else None
        try:
            done.append(backtest.run(cfg, spec.output, spec.outcomes, d, spec.reports, shadow))
        except (InputFileError, storage.StorageError, ConfigError, OSError) as exc:
            done.append({"date": d.isoformat(), "error": str(exc)})
    return done


def model_reference(model: str, cfg: Config) -> dict[str, Any]:
    """The population the nightly report compares each day against: binned distributions stored with the model."""
    reference = store.load_reference(store.fetch(model, cfg.storage.s3))
    if reference is None:
        raise store.ModelError(
            f"model {model} has no reference population ({store.REFERENCE_FILE}) for the nightly report to compare "
            "against: a products-only model has none (score it with jobs/score.py); retrain a model with a "
            "default head to get one")
    return reference


def score_challenger(cfg: Config, date: dt.date, force: bool, wait: float) -> tuple[dict[str, Any] | None, str | None]:
    """Score the challenger into its shadow root: (manifest, None), or (None, why it failed). A
    failure is returned, never raised: the challenger must not block or alter the champion."""
    spec = cfg.nightly
    try:
        return score(cfg, spec.snapshots, spec.challenger, spec.shadow, date, force=force, wait=wait), None
    except Exception as exc:  # noqa: BLE001 - whatever broke the shadow run, the champion's run goes on
        return None, f"{type(exc).__name__}: {exc}"


def monitor(cfg: Config, date: dt.date, record: dict[str, Any], reference: dict[str, Any],
            challenger_error: str | None = None, backtests: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Build and write the monitoring report of a committed date against the reference
    population of the model that scored it, with the model in force, the challenger comparison
    and the outcome trend of the back-tests. Returns the report."""
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
    band_names = [b.name for b in cfg.scorecard.bands]
    report = monitoring.build_report(
        date=date.isoformat(), scores=scores,
        quarantine_rows=record["quarantined_rows"], input_rows=record["input_rows"], features=features,
        reference=reference, schema=cfg.schema, spec=cfg.monitoring, band_names=band_names,
        history=_history(rep_fs, rep_root, date, cfg.monitoring.history), scorecard=cfg.scorecard)
    report["run_id"] = record["run_id"]
    report["model_version"] = record["model_version"]
    report["model_in_force"] = (promotion.in_force(spec.model_pointer, cfg.storage.s3) if spec.model_pointer
                                else {"model": spec.model, "since": None})
    report["ab_test"] = record.get("ab_test")
    alerts = []
    if spec.challenger:
        if challenger_error:
            report["challenger"] = {"error": challenger_error}
            alerts.append({"metric": "challenger run failed", "value": None, "threshold": None, "level": "warn"})
        else:
            theirs = partition.read(spec.shadow, date, "scores", cfg.storage.s3)
            report["challenger"] = challenger.compare(scores, theirs if theirs.num_columns else SCORES.empty_table(),
                                                      band_names, cfg.products.top_k)
    for b in backtests:
        if "error" in b:
            alerts.append({"metric": f"back-test of {b['date']} could not run", "value": None, "threshold": None,
                           "level": "warn"})
        alerts += [{"metric": f"back-test of {b['date']}: {x['metric']}", "value": x["value"],
                    "threshold": x["threshold"], "level": "alert"} for x in b.get("breaches", [])]
    report["outcomes"] = _outcome_trend(rep_fs, rep_root, date, cfg.monitoring.history)
    report = monitoring.with_alerts(report, alerts)
    with tempfile.TemporaryDirectory() as tmp:
        paths = monitoring.write_report(report, reference, scores.column("pd_12m").to_numpy(), Path(tmp))
        for p in reversed(paths):  # the JSON last: a reader polling for report.json finds the page beside it
            storage.write_bytes_atomic(p.read_bytes(), rep_fs, storage.join(rep_root, f"date={date}", p.name))
    report["report_html"] = storage.to_uri(rep_fs, storage.join(rep_root, f"date={date}", "report.html"))
    return report


def _report_of(cfg: Config, date: dt.date, run_id: str) -> dict[str, Any] | None:
    """The date's written report, if it reports the committed run."""
    fs, root = storage.filesystem(cfg.nightly.reports, cfg.storage.s3)
    path = storage.join(root, f"date={date}", "report.json")
    report = storage.read_json(fs, path) if storage.exists(fs, path) else None
    if report is None or report.get("run_id") != run_id:
        return None
    return {**report, "backtests": [],
            "report_html": storage.to_uri(fs, storage.join(root, f"date={date}", "report.html"))}


def run(cfg: Config, date: dt.date | None = None, force: bool = False,
        wait: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score (the challenger too, when configured) then back-test what has landed, then monitor one
    date; returns (manifest, report). An A/B test needs the challenger's scores before the
    champion's commit; otherwise the champion commits first."""
    spec = cfg.nightly
    if spec is None:
        raise ConfigError("nightly: section is missing (snapshots, output, reports and model or model_pointer)")
    date = date or default_date(spec)
    model = model_uri(spec, cfg)
    reference = model_reference(model, cfg)  # the report needs it: fail before scoring, not after the commit
    ab_first = bool(spec.challenger and spec.challenger_share)
    shadow, error = score_challenger(cfg, date, force, wait) if ab_first else (None, None)
    ab = ABTest(spec.challenger_share, spec.assignment_salt, spec.shadow) if shadow else None
    record = score(cfg, spec.snapshots, model, spec.output, date, force=force, wait=wait, ab=ab)
    if spec.challenger and not ab_first:
        shadow, error = score_challenger(cfg, date, force, wait)
    backtests = backtest_landed(cfg) if spec.outcomes else []
    nothing_new = record.get("skipped") and not backtests and not error and (shadow or {"skipped": 1}).get("skipped")
    kept = _report_of(cfg, date, record["run_id"]) if nothing_new else None
    if kept:  # a rerun: the date's report stands, exit status included
        return record, kept
    scored_by = record.get("model_uri", model)  # a date committed earlier may have been scored by another model
    if scored_by != model:
        reference = model_reference(scored_by, cfg)
    report = monitor(cfg, date, record, reference, error, backtests)
    report["backtests"] = backtests
    return record, report
