"""One snapshot date -> committed scores + quarantine partition, streamed with Ray Data.

    read_parquet ─ validate ─ valid rows ─ serialise + tokenise ─ inference actors ─ write scores
    (driver thread, meanwhile) read ─ validate ─ quarantined rows ─────────────────── write quarantine

The quarantine branch re-reads and re-validates the input in a thread of this process
while the actors score: validation runs at ~10⁶ rows/s and the model at ~10² per core,
so it finishes long before the scores do, costs no Ray task or worker start, and memory
stays flat (one batch at a time). Writes go to this run's own folder; the manifest
commits (see `partition`).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .. import lease, partition, storage
from ..challenger import ABTest, publish_ab
from ..cluster import check_shared_storage, init_ray
from ..config import Config, ConfigError
from ..drills import drill
from ..model import store
from ..schema import model_features
from ..suitability import load_catalog
from ..validate import InputFileError, preflight
from . import aot
from .actor import ScoringActor
from .prepare import valid_rows, write_quarantine
from .progress import RowCounter, report_progress


class InvariantError(Exception):
    """Outputs failed a pre-commit check; nothing was committed."""


def resolve_input(uri: str, date: dt.date, s3) -> tuple[Any, str, list[str]]:
    """An input URI may be the partition itself or the snapshot root holding date=… folders.

    A root without the asked date fails. Reading its other days instead would quarantine
    every row as the wrong date and commit an empty day, which a rerun after the late
    snapshot lands would then skip as done.
    """
    fs, path = storage.filesystem(uri, s3)
    dated = partition.date_dir(path, date)
    if storage.exists(fs, dated):
        return fs, dated, storage.list_files(fs, dated)
    named = path.rstrip("/").rsplit("/", 1)[-1]
    if named.startswith("date=") and named != f"date={date}":
        raise InputFileError(f"{storage.to_uri(fs, path)} is the {named} partition, not date={date}")
    files = storage.list_files(fs, path)
    folders = [f[len(path):].strip("/").split("/")[:-1] for f in files]
    dates = sorted({parts[0] for parts in folders if parts and parts[0].startswith("date=")})
    if dates:
        raise InputFileError(f"{storage.to_uri(fs, path)} has no date={date} partition (it holds {len(dates)} "
                             f"date(s), the latest {dates[-1]}): has that day's snapshot landed?")
    nested = next(("/".join(parts) for parts in folders if any(p.startswith("date=") for p in parts)), None)
    if nested:
        raise InputFileError(f"{storage.to_uri(fs, path)} holds date= folders deeper down ({nested}); "
                             "give the snapshot root that holds them, or one partition")
    return fs, path, files


def run(cfg: Config, input_uri: str, model_uri: str, output_uri: str, date: dt.date,
        force: bool = False, wait: float = 0.0, ab: ABTest | None = None) -> dict[str, Any]:
    """Score one date and commit it. Returns the manifest (or the existing one when skipped).

    The date's lease is held from before the committed-check until after the commit, so two
    runs of one date (a cron retry and a manual --force) never interleave: the second exits
    naming the first, or waits up to `wait` seconds for it. With `ab`, the challenger arm's rows
    carry the recommendations of the challenger's committed scores of the same date.
    """
    started = dt.datetime.now(dt.timezone.utc)
    out_fs, out_root = storage.filesystem(output_uri, cfg.storage.s3)
    existing = partition.manifest(out_fs, out_root, date)
    if existing and not force:  # done already: no lease needed to say so
        return {**existing, "skipped": True}
    inputs = _checked_inputs(cfg, input_uri, model_uri, date)  # a bad model or file fails before any write
    run_id = f"{date:%Y%m%d}-{started:%H%M%S}-{uuid.uuid4().hex[:8]}"
    with lease.held(out_fs, partition.date_dir(out_root, date), run_id, cfg.score.lease_seconds, wait,
                    cfg.storage.s3) as held:
        existing = partition.manifest(out_fs, out_root, date)  # a run we waited for may have committed it
        if existing and not force:
            return {**existing, "skipped": True}
        record = _score(cfg, model_uri, inputs, out_fs, out_root, date, run_id, started, ab)
        held.check()  # still ours: no other run can have started on this date meanwhile
        partition.commit(out_fs, out_root, date, record)
    return record


@dataclass
class Inputs:
    """What a run checks before it takes the date's lease or writes anything."""
    model_dir: Path
    meta: dict[str, Any]
    model_cfg: Config
    fs: Any
    path: str
    files: list[str]
    duplicate_ids: Any
    rows: int
    seconds: float


def _checked_inputs(cfg: Config, input_uri: str, model_uri: str, date: dt.date) -> Inputs:
    """Verify the model (hashes, products, schema, compiled cache) and preflight the input files."""
    started = time.perf_counter()
    model_dir = store.fetch(model_uri, cfg.storage.s3)
    meta = store.load_meta(model_dir)
    model_cfg = store.load_config(model_dir)
    catalog = load_catalog(cfg.products.catalog, cfg.storage.s3)
    missing = sorted(set(catalog.ids) - set(meta["product_ids"])) if meta["product_ids"] else []
    if missing:
        raise store.ModelError(f"catalog products {missing} are unknown to model {meta['version']}; retrain first")
    check_schema(cfg, model_cfg)
    compiled = aot.cache_folder(cfg.score.compiled_cache)
    if cfg.score.compile is not False and compiled.exists():  # refuse an unsafe cache here, in one line,
        store.check_private(compiled)                         # not from inside every actor
    in_fs, in_path, files = resolve_input(input_uri, date, cfg.storage.s3)
    dups = preflight(in_fs, files, cfg.schema)  # whole-file problems stop here
    rows = sum(pq.ParquetFile(f, filesystem=in_fs).metadata.num_rows for f in files)
    return Inputs(model_dir, meta, model_cfg, in_fs, in_path, files, dups, rows, time.perf_counter() - started)


def _score(cfg: Config, model_uri: str, inputs: Inputs, out_fs, out_root: str, date: dt.date, run_id: str,
           started: dt.datetime, ab: ABTest | None) -> dict[str, Any]:
    """Write this run's scores and quarantine into its own folder and check them; returns the manifest."""
    import ray.data
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    model_dir, loaded_meta, model_cfg = inputs.model_dir, inputs.meta, inputs.model_cfg
    in_fs, in_path, files, dups, input_rows = inputs.fs, inputs.path, inputs.files, inputs.duplicate_ids, inputs.rows
    phases: dict[str, float] = {"verify_and_preflight": round(inputs.seconds, 2)}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        phases[name], clock = round(time.perf_counter() - clock, 2), time.perf_counter()

    staging = partition.run_dir(out_root, date, run_id)
    init_ray(cfg.ray)
    check_shared_storage(storage.to_uri(out_fs, out_root), "the output")  # every node's actors write there
    lap("ray_start")
    s = cfg.score
    quarantine = ThreadPoolExecutor(1, thread_name_prefix="quarantine").submit(
        write_quarantine, in_fs, files, cfg, model_cfg, str(model_dir), date, dups, out_fs,
        storage.join(staging, "quarantine"))
    kill_after = drill("kill_actor_after_batches")
    marker = (str(store.private_dir(store.cache_root() / "drills") / f"killed-{run_id}")
              if kill_after is not None else None)
    # Blocks of at most batch_size x max_length x 6 bytes: a prepared row holds ~6 bytes per
    # token, so a prepared block is about one actor call. Where Ray Data fuses preparation into
    # the actor (one CPU, no GPU per actor) the cap applies to the raw blocks read instead (a few
    # thousand rows each for the synthetic schema), and prep_rows bundles share them out. Either
    # way actors start on the first rows read, and each has work even when the snapshot is a few
    # small files, which Ray Data would otherwise read as one block. (Smaller raw blocks start
    # sooner but cost steady-state speed: docs/tuning.md.)
    data_ctx = ray.data.DataContext.get_current()
    saved = data_ctx.target_max_block_size, data_ctx.use_datasource_v2
    data_ctx.target_max_block_size = max(1 << 20, s.batch_size * model_cfg.model.max_length * 6)
    # Ray's V2 Parquet reader starts a pool of footer-reading actors (~14 CPU-seconds on a
    # laptop); preflight has already read every footer, so the V1 reader's plan is enough.
    data_ctx.use_datasource_v2 = False
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = ray.remote(num_cpus=0)(RowCounter).options(scheduling_strategy=here).remote()  # dies with us only
    stop = threading.Event()
    threading.Thread(target=report_progress, args=(progress, input_rows, stop), daemon=True).start()
    try:
        ray.data.read_parquet(files, filesystem=in_fs, include_paths=True).map_batches(
            valid_rows, batch_format="pyarrow", batch_size=s.prep_rows,
            fn_kwargs=dict(cfg=cfg, model_cfg=model_cfg, model_dir=str(model_dir), date=date, duplicate_ids=dups),
        ).map_batches(
            ScoringActor, batch_format="pyarrow", batch_size=s.batch_size,
            fn_constructor_kwargs=dict(model_uri=str(model_dir) if not storage.is_s3(model_uri) else model_uri,
                                       cfg=cfg.to_dict(), run_id=run_id, compile=s.compiles(input_rows / s.num_actors),
                                       kill_after_batches=kill_after, fail_marker=marker, progress=progress),
            compute=ray.data.ActorPoolStrategy(size=s.num_actors),
            # Ray Data restarts a lost actor and retries its tasks unless told otherwise
            num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor or None,
        ).write_parquet(storage.join(staging, "scores"), filesystem=out_fs, min_rows_per_file=s.rows_per_file)
    finally:
        data_ctx.target_max_block_size, data_ctx.use_datasource_v2 = saved
        stop.set()
        counts = quarantine.result()  # its error, if any, is raised here; nothing is committed either way
    lap("scoring")
    ab_record = publish_ab(out_fs, storage.join(staging, "scores"), date, ab, cfg.storage.s3) if ab else None
    if counts.summary():
        print(f"[score] inputs the model's encoders had not seen (rows per feature): {counts.summary()}", flush=True)
    record = _check(out_fs, staging, in_fs, files, cfg, input_rows)
    lap("checks")
    finished = dt.datetime.now(dt.timezone.utc)
    record.update({
        "run_id": run_id, "snapshot_date": date.isoformat(), "input_uri": storage.to_uri(in_fs, in_path),
        "model_uri": model_uri, "model_version": loaded_meta["version"],
        "model_weights_sha256": loaded_meta["weights_sha256"],
        "model_manifest_sha256": store.sha256_file(model_dir / store.MANIFEST), "config_hash": cfg.digest(),
        "code_version": code_version(), "started_at": started.isoformat(), "finished_at": finished.isoformat(),
        "rows_per_s": round(input_rows / max((finished - started).total_seconds(), 1e-9), 2),
        "phase_seconds": phases, "input_counts": counts.as_dict(),
    })
    if ab_record:
        record["ab_test"] = ab_record
    if drill("fail_before_commit"):
        raise InvariantError("fault drill: stopping before commit (fail_before_commit)")
    return record


def check_schema(cfg: Config, model_cfg: Config) -> None:
    """The run's schema must validate every feature the model reads, as the same kind: the run's
    config routes and validates; the model's own config defines its input."""
    run_kinds = {f.name: f.kind for f in cfg.schema.features}
    for f in model_features(model_cfg.schema):
        if run_kinds.get(f.name) != f.kind:
            found = f"kind {run_kinds[f.name]!r}" if f.name in run_kinds else "nothing"
            raise ConfigError(f"schema.features: the model reads {f.name!r} as {f.kind!r}; this config has {found}")


def _check(out_fs, staging: str, in_fs, files: list[str], cfg: Config, input_rows: int) -> dict[str, Any]:
    """Pre-commit invariants: the counts add up, and the set of input ids equals the set of scored
    ∪ quarantined ids, none in both (an id changed on the way through fails, not just a lost one);
    rows without an id are all quarantined and counted."""
    rel: dict[str, list[str]] = {}
    tables = {}
    date_dir = staging.rsplit("/", 1)[0]
    for kind in partition.KINDS:
        path = storage.join(staging, kind)
        found = storage.list_files(out_fs, path) if storage.exists(out_fs, path) else []
        rel[kind] = [f[len(date_dir) + 1:] for f in found]  # manifest paths are relative to date=…/
        cols = ["customer_id"] if kind == "scores" else [cfg.schema.id]
        tables[kind] = (pads.dataset(found, filesystem=out_fs, format="parquet").to_table(columns=cols)
                        if found else pa.table({cols[0]: pa.array([], pa.string())}))
    scored, quarantined = tables["scores"].num_rows, tables["quarantine"].num_rows
    if scored + quarantined != input_rows:
        raise InvariantError(f"input_rows {input_rows} != scored {scored} + quarantined {quarantined}; nothing committed")
    score_ids = tables["scores"].column(0).cast(pa.string())
    if score_ids.null_count or pc.count_distinct(score_ids).as_py() != scored:
        raise InvariantError("customer_id is null or not unique in scores; nothing committed")
    held = tables["quarantine"].column(0).cast(pa.string())
    both = pc.sum(pc.is_in(score_ids, value_set=pc.unique(pc.drop_null(held)))).as_py() or 0
    if both:
        raise InvariantError(f"{both} customer_id(s) are both scored and quarantined; nothing committed")
    in_ids = pads.dataset(files, filesystem=in_fs, format="parquet").to_table(columns=[cfg.schema.id]).column(0)
    in_ids = in_ids.cast(pa.string())
    out_ids = pa.chunked_array([*score_ids.chunks, *held.chunks], pa.string())
    lost = _missing(in_ids, out_ids)
    if lost:
        raise InvariantError(f"{lost} input customer_id(s) are in neither scores nor quarantine; nothing committed")
    made_up = _missing(out_ids, in_ids)
    if made_up:
        raise InvariantError(f"{made_up} output customer_id(s) are not in the input (changed on the way); "
                             "nothing committed")
    if in_ids.null_count != held.null_count:
        raise InvariantError(f"{in_ids.null_count} input rows have no customer_id but {held.null_count} "
                             "quarantined rows do; nothing committed")
    return {"input_rows": input_rows, "scored_rows": scored, "quarantined_rows": quarantined,
            "null_id_rows": in_ids.null_count, "files": rel}


def _missing(ids: pa.ChunkedArray, among: pa.ChunkedArray) -> int:
    """How many distinct non-null `ids` are not in `among`."""
    distinct = pc.unique(pc.drop_null(ids))
    return len(distinct) - (pc.sum(pc.is_in(distinct, value_set=pc.unique(pc.drop_null(among)))).as_py() or 0)


def code_version() -> str:
    from nightscore import __version__

    return f"nightscore {__version__}"
