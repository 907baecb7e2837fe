"""Driver side of training: read + validate + tokenise with Ray Data, fit with TorchTrainer, export.

Data is prepared and materialised before `fit()`, so Ray Data never competes with the
training workers for CPUs (FIELD-NOTES: a pending map_batches can starve forever).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import encode, storage
from ..cluster import check_shared_storage, init_ray
from ..config import Config, ConfigError
from ..drills import drill
from ..encode import Encoders
from ..model import store
from ..model.tokens import tokenizer_for
from ..monitoring import REFERENCE_KINDS, build_reference
from ..schema import required_columns
from ..suitability import Catalog, load_catalog
from ..validate import InputFileError, conform, preflight, split
from .data import CALIBRATION, TRAIN, VALID, in_sample, prepare_batch, roles
from .loop import EXPORT_DIR, STATE_FILE, VALID_PREDICTIONS, train_loop_per_worker


def _files(uri: str, cfg: Config) -> tuple[Any, list[str], pa.Array, int]:
    """(filesystem, files, duplicate ids, rows) of a labelled snapshot; whole-file problems raise here."""
    fs, path = storage.filesystem(uri, cfg.storage.s3)
    files = storage.list_files(fs, path)
    dups = preflight(fs, files, cfg.schema, with_labels=True)
    rows = sum(pq.ParquetFile(f, filesystem=fs).metadata.num_rows for f in files)
    return fs, files, dups, rows


def fit_encoders(fs, files: list[str], dups: pa.Array, rows: int, cfg: Config, backbone_dir: str,
                 holdout: bool) -> Encoders:
    """Fit the encoders on valid training rows only (never the validation or calibration rows),
    a stable id-hash sample of at most model.fit_rows of them, read one batch at a time."""
    fraction = min(1.0, cfg.model.fit_rows / max(rows, 1))
    t = cfg.train
    parts = []
    columns = list(required_columns(cfg.schema, with_labels=True))
    for f in files:
        for batch in pq.ParquetFile(f, filesystem=fs).iter_batches(batch_size=65_536, columns=columns):
            table = conform(pa.Table.from_batches([batch]), cfg.schema, f, with_labels=True)
            valid = split(table, cfg.schema, None, dups).valid
            ids = valid.column(cfg.schema.id)
            keep = in_sample(ids, fraction)
            if holdout:
                keep &= roles(ids, t.valid_fraction, t.calibration_fraction) == TRAIN
            parts.append(valid.filter(pa.array(keep)))
    sample = pa.concat_tables(parts) if parts else None
    if sample is None or sample.num_rows == 0:
        raise InputFileError("no valid training rows to fit the feature encoders on")
    return encode.fit(sample, cfg.schema, cfg.model, tokenizer_for(backbone_dir), backbone_dir)


def _prepare(fs, files: list[str], dups: pa.Array, cfg: Config, encoders: Encoders, tokenizer_dir: str,
             product_ids: list[str], valid_fraction: float, calibration_fraction: float):
    import ray.data

    return ray.data.read_parquet(files, filesystem=fs, include_paths=True).map_batches(
        prepare_batch, batch_format="pyarrow", batch_size=1024,
        fn_kwargs=dict(cfg=cfg, encoders=encoders, tokenizer_dir=tokenizer_dir, product_ids=product_ids,
                       duplicate_ids=dups, valid_fraction=valid_fraction, calibration_fraction=calibration_fraction),
    ).materialize()


def truncated_rows(datasets: list, encoders: Encoders) -> dict[str, int]:
    """Rows whose text feature was cut at its token budget, per feature (only those with any)."""
    if not encoders.text:
        return {}
    cut = np.zeros(len(encoders.text), dtype=np.int64)
    for ds in datasets:
        for b in ds.select_columns(["text_cut"]).iter_batches(batch_size=8192, batch_format="numpy"):
            cut += np.stack(b["text_cut"]).sum(0) if len(b["text_cut"]) else 0
    return {t.name: int(c) for t, c in zip(encoders.text, cut) if c}


def label_sums(ds, cfg: Config) -> dict[str, Any]:
    """One pass over a prepared split's labels: labelled rows and the defaults among them;
    each product's take-ups and the customers not already holding it."""
    labels = cfg.schema.labels
    cols = [c for c in ("y_default", "has_default", "y_products", "held_products") if c in ds.columns()]
    sums: dict[str, Any] = {"labelled": 0, "bad": 0}
    for b in ds.select_columns(cols).iter_batches(batch_size=4096, batch_format="numpy"):
        if labels.default:
            has = b["has_default"].astype(bool)
            sums["bad"] += int(b["y_default"][has].sum())
            sums["labelled"] += int(has.sum())
        if labels.products:
            y = np.stack(b["y_products"])
            eligible = 1.0 - np.stack(b["held_products"]) if "held_products" in b else np.ones_like(y)
            sums["taken"] = sums.get("taken", 0) + (y * eligible).sum(axis=0)
            sums["eligible"] = sums.get("eligible", 0) + eligible.sum(axis=0)
    return sums


def label_priors(sums: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Base rates the heads start from: default rate over labelled rows, and each product's
    take-up rate among customers who do not already hold it."""
    labels = cfg.schema.labels
    return {
        "default_rate": sums["bad"] / max(sums["labelled"], 1) if labels.default else None,
        "product_rates": (sums["taken"] / np.maximum(sums["eligible"], 1)).tolist() if labels.products else None,
    }


def check_labels(sums: dict[str, Any], cfg: Config, split: str) -> None:
    """A default head needs both outcomes in training and in validation (its loss, AUC and
    calibration); failing here names the split and the counts, before any worker starts,
    instead of NaN metrics or a crash inside the training loop."""
    label = cfg.schema.labels.default
    if label and sums["bad"] in (0, sums["labelled"]):
        raise InputFileError(
            f"{split} rows: default label {label!r} has {sums['bad']} default(s) among {sums['labelled']} "
            "labelled rows; a PD model needs both outcomes (more labelled rows, another --valid, or "
            "a larger train.valid_fraction)")


def reference_population(cfg: Config, uri: str, preds: pa.Table) -> dict[str, Any]:
    """Binned distributions of the validation rows' features and calibrated PDs (joined on customer_id,
    never by position): the model's monitoring reference, aggregates only."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, path = storage.filesystem(uri, cfg.storage.s3)
    ids = preds.column("customer_id")
    feats = [f.name for f in cfg.schema.features if f.kind in REFERENCE_KINDS]
    rows = pads.dataset(storage.list_files(fs, path), filesystem=fs, format="parquet").to_table(
        columns=[cfg.schema.id, *feats], filter=pc.field(cfg.schema.id).isin(ids))
    rows = rows.set_column(0, "customer_id", pc.cast(rows.column(0), pa.string()))
    joined = rows.join(preds, "customer_id", join_type="inner")
    return build_reference(joined, cfg.schema, joined.column("pd_12m").to_numpy(), cfg.scorecard,
                           cfg.monitoring.min_group_size)


def catalog_yaml(catalog: Catalog) -> str:
    """The catalog as trained on, stored with the model so product columns keep their meaning."""
    import dataclasses

    import yaml

    rows = [{k: v for k, v in dataclasses.asdict(p).items() if v is not None} for p in catalog.products]
    return yaml.safe_dump({"products": rows}, sort_keys=False)


def metric_names(cfg: Config) -> list[str]:
    names = []
    if cfg.schema.labels.default:
        names += ["default_auc", "default_gini", "default_ks", "default_brier", "default_logloss", "default_ece"]
    if cfg.schema.labels.products:
        k = cfg.products.top_k
        names += ["product_auc", f"recall@{k}", f"ndcg@{k}", f"map@{k}"]
    return names + ["train_loss"]


def check(cfg: Config) -> None:
    """Config problems that only make sense together; raised before any work starts."""
    if not (cfg.schema.labels.default or cfg.schema.labels.products):
        raise ConfigError("schema.labels: training needs at least one label (default or products)")
    if cfg.train.early_stopping_metric not in metric_names(cfg):
        raise ConfigError(f"train.early_stopping_metric: {cfg.train.early_stopping_metric!r} is not produced "
                          f"with these labels; choose one of {metric_names(cfg)}")


def train(cfg: Config, train_uri: str, valid_uri: str | None, out_uri: str, storage_path: str,
          run_name: str | None = None) -> dict[str, Any]:
    """Fine-tune and write a verified model directory to `out_uri`. Returns a summary."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.data.expressions import col

    check(cfg)
    if not storage.is_s3(storage_path):
        storage_path = str(Path(storage_path).expanduser().absolute())
    catalog = load_catalog(cfg.products.catalog, cfg.storage.s3)
    backbone_dir = store.resolve_backbone(cfg.model.backbone, cfg.storage.s3)
    init_ray(cfg.ray, training=True)
    check_shared_storage(storage_path, "--storage")  # on a cluster, every node must reach the checkpoints
    name = run_name or f"train-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
    if not storage.is_s3(storage_path):
        # resume and export read DeepSpeed's checkpoint files back, and those are pickles
        store.private_dir(Path(storage_path, name), "for training checkpoints")

    product_ids = catalog.ids if cfg.schema.labels.products else []  # no product labels: no product head
    t = cfg.train
    fs, files, dups, input_rows = _files(train_uri, cfg)
    encoders = fit_encoders(fs, files, dups, input_rows, cfg, backbone_dir, holdout=valid_uri is None)
    if valid_uri is None:  # validation and calibration rows by id hash from the training data
        prepared = _prepare(fs, files, dups, cfg, encoders, backbone_dir, product_ids,
                            t.valid_fraction, t.calibration_fraction)
        parts = {name: prepared.filter(expr=col("role") == role).drop_columns(["role"]).materialize()
                 for name, role in (("train", TRAIN), ("valid", VALID), ("calibration", CALIBRATION))}
        valid_input_rows = 0
    else:  # a separate validation set, split by id hash into validation and calibration rows
        share = t.calibration_fraction / (t.valid_fraction + t.calibration_fraction)
        vfs, vfiles, vdups, valid_input_rows = _files(valid_uri, cfg)
        held = _prepare(vfs, vfiles, vdups, cfg, encoders, backbone_dir, product_ids, 1 - share, share)
        parts = {"train": _prepare(fs, files, dups, cfg, encoders, backbone_dir, product_ids, 0.0, 0.0)
                 .drop_columns(["role"]).materialize(),
                 "valid": held.filter(expr=col("role") == VALID).drop_columns(["role"]).materialize(),
                 "calibration": held.filter(expr=col("role") == CALIBRATION).drop_columns(["role"]).materialize()}
    counts = {name: ds.count() for name, ds in parts.items()}
    train_rows, valid_rows, calib_rows = counts["train"], counts["valid"], counts["calibration"]
    quarantined = input_rows + valid_input_rows - sum(counts.values())
    print(f"[train] rows: {train_rows} train, {valid_rows} validation, {calib_rows} calibration, "
          f"{quarantined} quarantined; {len(encoders.structured)} feature tokens + up to "
          f"{sum(x.max_tokens for x in encoders.text)} text tokens per row", flush=True)
    if min(counts.values()) == 0:
        raise ConfigError("not enough valid rows to train, validate and calibrate (check the data, "
                          "train.valid_fraction and train.calibration_fraction)")
    truncated = truncated_rows(list(parts.values()), encoders)
    if truncated:
        print(f"[train] text cut at its max_tokens (rows per feature): "
              f"{', '.join(f'{k} {v}' for k, v in truncated.items())}", flush=True)
    sums = label_sums(parts["train"], cfg)
    check_labels(sums, cfg, "training")
    check_labels(label_sums(parts["valid"], cfg), cfg, "validation")
    check_labels(label_sums(parts["calibration"], cfg), cfg, "calibration")

    metric, mode = t.early_stopping_metric, t.early_stopping_mode
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(), "product_ids": product_ids, "train_rows": train_rows,
            "encoders": encoders.to_json(), "priors": label_priors(sums, cfg),
            "fail_at_epoch": drill("fail_at_epoch"),
            "fail_marker": str(Path(storage_path).expanduser() / name / ".fault-drill-done"),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=metric,
                                                         checkpoint_score_order=mode),
        ),
        datasets=parts,
    )
    result = trainer.fit()
    if result.error:
        raise result.error

    best_ckpt, best_metrics = max(result.best_checkpoints,
                                  key=lambda cm: (1 if mode == "max" else -1) * cm[1].get(metric, float("-inf")))
    with result.checkpoint.as_directory() as d:  # the latest state holds the whole history
        state = json.loads((Path(d) / STATE_FILE).read_text())
    history, resumed = state["history"], state["resumed_at_epochs"]
    with best_ckpt.as_directory() as d:
        from .loop import consolidated_state_dict

        weights = consolidated_state_dict(d, cfg, len(product_ids), encoders)  # the model's one gather, here
        calib = json.loads((Path(d) / EXPORT_DIR / "calibration.json").read_text())
        preds_path = Path(d) / EXPORT_DIR / VALID_PREDICTIONS
        valid_preds = pq.read_table(preds_path) if preds_path.exists() else None
    reference = reference_population(cfg, valid_uri or train_uri, valid_preds) if valid_preds is not None else None
    manifest = store.save(
        out_uri, state_dict=weights, base_backbone=backbone_dir, tokenizer_dir=backbone_dir, encoders=encoders,
        product_ids=product_ids, calibration=calib, config=cfg,
        catalog_yaml=catalog_yaml(catalog),
        metrics={"best": best_metrics, "history": history, "truncated_text_rows": truncated},
        training={"train_uri": train_uri, "valid_uri": valid_uri, "input_rows": input_rows + valid_input_rows,
                  "train_rows": train_rows, "valid_rows": valid_rows, "calibration_rows": calib_rows,
                  "quarantined_rows": quarantined,
                  "run_name": name, "storage_path": storage_path, "resumed_at_epochs": resumed},
        reference=reference, s3=cfg.storage.s3,
    )
    return {"model_uri": out_uri, "version": manifest["version"], "best": best_metrics,
            "resumed_at_epochs": resumed, "train_rows": train_rows, "valid_rows": valid_rows,
            "quarantined_rows": quarantined}
