"""The per-worker training function run by Ray Train's TorchTrainer.

Read top to bottom: build the model, `deepspeed.initialize`, resume if Ray hands us a
checkpoint, then per epoch: train on this worker's shard, predict the validation and
calibration shards (gathered across ranks), fit calibration on the calibration rows and
measure on the validation rows, save a checkpoint (every rank its ZeRO shards, rank 0 also
the calibration, the state and the validation PDs) and `ray.train.report` on every rank. No rank
ever gathers the whole model: the driver consolidates the best checkpoint's shards once, after
`fit()` (`consolidated_state_dict`).
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import metrics as M
from ..config import Config
from ..encode import Encoders
from ..model import calibration
from ..model.features import to_tensors
from ..model.network import CreditModel
from ..model.store import resolve_backbone
from .ds_config import deepspeed_config

EXPORT_DIR = "export"
STATE_FILE = "train_state.json"
VALID_PREDICTIONS = "valid_predictions.parquet"
DS_TAG = "ds"


def train_dtype(cfg: Config) -> torch.dtype:
    """The dtype the engine holds its weights in."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)


def build_model(cfg: Config, n_products: int, encoders: Encoders,
                ds_config: dict[str, Any] | None = None) -> CreditModel:
    """Backbone + heads, with LoRA adapters on the backbone when configured.

    Under full fine-tuning with ZeRO-3 (`ds_config` given), the backbone's weights are
    partitioned across ranks as they load (HfDeepSpeedConfig before from_pretrained), so no
    rank ever holds the whole backbone.
    """
    labels = cfg.schema.labels
    zero3 = bool(ds_config) and ds_config["zero_optimization"]["stage"] == 3 and cfg.train.finetune == "full"
    if zero3:
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        partitioned = HfDeepSpeedConfig(ds_config)  # transformers holds only a weak reference
    model = CreditModel.build(resolve_backbone(cfg.model.backbone, cfg.storage.s3), cfg.model.pooling,
                              n_products if labels.products else 0, labels.default is not None, encoders,
                              cfg.model.wide)
    if zero3:
        del partitioned  # later models (the LoRA export copy) load whole again
        # ZeRO-Init loaded the backbone's partitions in the training dtype, and DeepSpeed casts
        # only models it did not partition: the heads, built whole, must join them, or ZeRO-3's
        # flat parameter buffer mixes dtypes (an AssertionError inside deepspeed.initialize,
        # first seen on a GPU node with the production config, ZeRO-3 + bf16)
        dtype = train_dtype(cfg)
        for p in model.parameters():
            if not hasattr(p, "ds_id"):
                p.data = p.data.to(dtype)
    if cfg.train.freeze_word_embeddings:
        model.backbone.get_input_embeddings().weight.requires_grad_(False)
    if cfg.train.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = cfg.train.lora
        model.backbone = get_peft_model(model.backbone, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules))
    return model


def plain_state_dict(sd: dict[str, torch.Tensor], cfg: Config, n_products: int,
                     encoders: Encoders) -> dict[str, torch.Tensor]:
    """fp32 weights in the base (non-LoRA) layout: LoRA adapters merged into the backbone."""
    if cfg.train.finetune != "lora":
        return sd
    copy = build_model(cfg, n_products, encoders)
    copy.load_state_dict(sd)
    copy.backbone = copy.backbone.merge_and_unload()
    return {k: v.detach().float().clone() for k, v in copy.state_dict().items()}


def consolidated_state_dict(checkpoint_dir: str, cfg: Config, n_products: int,
                            encoders: Encoders) -> dict[str, torch.Tensor]:
    """The engine's weights, whole, in fp32 and the base layout, from one checkpoint's DeepSpeed
    files: the model's one consolidation, by the driver, after `fit()`.

    Workers never gather the whole model (a model too large for one worker is why ZeRO-3 is
    used), and every epoch's checkpoint already holds all ranks' shards. Under stages 0-2 rank
    0's model-states file holds the whole module; under ZeRO-3 DeepSpeed's own zero_to_fp32
    stitches the parameters from all ranks' files, trainable ones from the optimizer's fp32
    master copy. (Not `_zero3_consolidated_16bit_state_dict()`: it would build the whole model
    in rank 0's memory every epoch, as which epoch is best is known only after `fit()`.)
    Parameters pass through the training dtype, so the export holds exactly the weights the
    engine computed with; buffers stay as saved.
    """
    from deepspeed.checkpoint.constants import BUFFER_NAMES
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_file

    stage = cfg.train.zero_stage
    states = torch.load(get_model_state_file(str(Path(checkpoint_dir) / DS_TAG), stage),
                        map_location="cpu", weights_only=False)  # DeepSpeed's own pickle, as its loader reads it
    sd = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=DS_TAG) if stage == 3 else states["module"]
    buffers, dtype = set(states[BUFFER_NAMES]), train_dtype(cfg)
    sd = {k: (v if k in buffers else v.to(dtype)).float() for k, v in sd.items()}
    return plain_state_dict(sd, cfg, n_products, encoders)


def return_freed_buffers_to_the_os() -> None:
    """glibc: blocks of 1 MiB and more come from mmap, and go back to the OS when freed.

    By default glibc raises its mmap threshold to the largest block freed (up to 32 MiB) and
    serves later blocks below it from heap arenas it seldom shrinks. ZeRO-3 gathers and frees
    each layer's weights every step, so a worker's memory would keep growing far past what it
    uses. A no-op without glibc's mallopt.
    """
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD; setting it also stops glibc moving it


class PeakRSS:
    """This process's peak resident memory above what it held when made, sampled every 50 ms.

    A thread, not ru_maxrss: that is the process's lifetime peak, which may come before the
    baseline (Ray's start-up, the imports) and hide what the model adds.
    """

    def __init__(self, interval_s: float = 0.05):
        self._process = psutil.Process()
        self.base = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _collate():
    def collate(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {"x": to_tensors(batch), "customer_id": batch["customer_id"]}
        for key in ("y_default", "has_default"):
            if key in batch:
                out[key] = torch.tensor(batch[key])  # a copy: Ray hands read-only arrays
        for key in ("y_products", "held_products"):
            if key in batch:
                out[key] = torch.as_tensor(np.stack(batch[key]))
        return out
    return collate


def _loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: Config) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = torch.zeros((), device=next(iter(out.values())).device)
    if "default_logit" in out:
        w = batch["has_default"].float()  # rows without a default label train the product head only
        per_row = bce(out["default_logit"].float(), batch["y_default"].float(), reduction="none")
        loss = loss + cfg.train.default_loss_weight * (per_row * w).sum() / w.sum().clamp(min=1.0)
    if "product_logits" in out:
        # mean over the products a customer could still take up (held ones are never
        # recommended, so they teach the head nothing); averaged like this, the product task
        # weighs as much as the default task whatever the catalog's size
        per_product = bce(out["product_logits"].float(), batch["y_products"].float(), reduction="none")
        eligible = 1.0 - batch["held_products"].float() if "held_products" in batch else torch.ones_like(per_product)
        per_row = (per_product * eligible).sum(dim=1) / eligible.sum(dim=1).clamp(min=1.0)
        loss = loss + cfg.train.product_loss_weight * per_row.mean()
    return loss


def param_groups(model: CreditModel, cfg: Config) -> list[dict[str, Any]]:
    """The pretrained backbone at train.lr; the new feature embeddings and wide terms at
    train.feature_lr; the heads on the pooled output at train.head_lr.

    The wide terms sum one weight per bin a value passes (up to model.numeric_bins per feature)
    over every feature, so at the heads' rate a single step can move the logit by several units."""
    groups: dict[str, list] = {"backbone": [], "features": [], "heads": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".")[0]
            groups["features" if top == "wide" else top if top in groups else "heads"].append(p)
    t = cfg.train
    lrs = {"backbone": t.lr, "features": t.feature_lr, "heads": t.head_lr}
    return [{"params": ps, "lr": lrs[k]} for k, ps in groups.items() if ps]


def _on(x: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in x.items()}


def _evaluate(engine, shard, collate, device, batch_size: int) -> dict[str, np.ndarray]:
    """Predictions on this rank's part of a held-out shard, then all-gathered so every rank sees all."""
    import torch.distributed as dist

    engine.eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate):
            out = engine(_on(batch["x"], device))
            parts.setdefault("id", []).append(np.asarray(batch["customer_id"], dtype=object))
            if "default_logit" in out:
                parts.setdefault("logit", []).append(out["default_logit"].float().cpu().numpy())
                parts.setdefault("y", []).append(batch["y_default"].numpy())
                parts.setdefault("has", []).append(batch["has_default"].numpy())
            if "product_logits" in out:
                parts.setdefault("prop", []).append(torch.sigmoid(out["product_logits"].float()).cpu().numpy())
                parts.setdefault("rel", []).append(batch["y_products"].numpy())
                if "held_products" in batch:
                    parts.setdefault("held", []).append(batch["held_products"].numpy())
    engine.train()
    local = {k: np.concatenate(v) for k, v in parts.items()}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return {k: np.concatenate([g[k] for g in gathered if k in g]) for k in local}


def epoch_metrics(preds: dict[str, np.ndarray], calib_preds: dict[str, np.ndarray],
                  cfg: Config) -> tuple[dict[str, float], dict | None]:
    """Validation metrics, with the default metrics on PDs calibrated by a fit on the calibration
    rows alone (so ECE and Brier are measured on rows the fit never saw); and that calibration."""
    out: dict[str, float] = {}
    calib = None
    if "logit" in preds:
        has, chas = preds["has"].astype(bool), calib_preds["has"].astype(bool)
        calib = calibration.fit(cfg.train.calibration, calib_preds["logit"][chas], calib_preds["y"][chas])
        out.update(M.default_metrics(preds["y"][has], calibration.apply(calib, preds["logit"][has])))
    if "prop" in preds:
        out.update(M.product_metrics(preds["rel"], preds["prop"], cfg.products.top_k, preds.get("held")))
    return out, calib


def _fault_drill(marker: Path, rank: int, epoch: int, last_report: float) -> None:
    """The fail_at_epoch drill (see drills): this worker dies once, mid-run, to prove resume works.

    Ray Train records a report when it next polls the workers (every 2 s). A worker that
    dies sooner after a report loses that checkpoint and resumes from the one before; the
    drill waits out one poll so its outcome is the same every time.
    """
    if marker.exists():
        return
    time.sleep(max(0.0, last_report + 5.0 - time.time()))
    marker.write_text(f"worker {rank} killed at epoch {epoch}\n")
    print(f"[train] fault drill: rank {rank} exits during epoch {epoch}", flush=True)
    os._exit(1)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = Config.model_validate(loop_config["config"])
    t = cfg.train
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if t.use_gpu else "cpu")
    import deepspeed  # after DS_ACCELERATOR: a CPU worker must not probe for GPUs
    import ray.train
    import torch.distributed as dist

    torch.set_num_threads(t.torch_threads or max(1, int(t.cpus_per_worker)))
    return_freed_buffers_to_the_os()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)
    n_products = len(loop_config["product_ids"])

    encoders = Encoders.from_json(loop_config["encoders"])
    ds_config = deepspeed_config(t, world)
    deepspeed.init_distributed()  # adopt Ray Train's process group before ZeRO-3 partitions weights on load
    memory = PeakRSS()  # from just before the model exists: what the model, its optimizer and training add
    model = build_model(cfg, n_products, encoders, ds_config)
    model.init_priors(**loop_config["priors"])
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=t.weight_decay)
    steps_per_epoch = max(1, math.ceil(loop_config["train_rows"] / (world * t.micro_batch * t.grad_accum)))
    total = steps_per_epoch * t.epochs
    progress_every = max(1, steps_per_epoch * t.grad_accum // 10)
    warmup = max(1, int(t.warmup_fraction * total))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 10 %
        return min((step + 1) / warmup, max(0.1, 1 - (step - warmup) / max(1, total - warmup)))

    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )

    state = {"epoch": 0, "best": None, "bad_epochs": 0, "resumed_at_epochs": [], "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG)
            state = json.loads((Path(d) / STATE_FILE).read_text())
        state["resumed_at_epochs"].append(state["epoch"] + 1)
        if rank == 0:
            print(f"[train] resumed from checkpoint after epoch {state['epoch']}", flush=True)

    collate = _collate()
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    calib_shard = ray.train.get_dataset_shard("calibration")
    stop = False
    last_report = time.time()
    for epoch in range(state["epoch"] + 1, t.epochs + 1):
        t0, seen, loss_sum, steps = time.time(), 0, 0.0, 0
        waited, warm = 0.0, None  # time blocked on input; (time, rows) at the end of the first optimizer step
        torch.manual_seed(t.seed * 1000 + epoch)
        batches = train_shard.iter_torch_batches(batch_size=t.micro_batch, collate_fn=collate,
                                                 local_shuffle_buffer_size=t.micro_batch * 8,
                                                 local_shuffle_seed=t.seed * 1000 + epoch)
        mark = time.time()
        for batch in batches:
            waited += time.time() - mark
            x = _on(batch.pop("x"), device)
            batch = {k: v.to(device) for k, v in batch.items() if k != "customer_id"}
            loss = _loss(engine(x), batch, cfg)
            engine.backward(loss)
            engine.step()
            seen += len(next(iter(batch.values())))
            loss_sum += float(loss.detach())
            steps += 1
            if warm is None and steps == t.grad_accum:
                warm = (time.time(), seen)
            mark = time.time()
            if rank == 0 and steps % progress_every == 0:
                print(f"[train] epoch {epoch} step {steps}/{steps_per_epoch * t.grad_accum}  "
                      f"loss {loss_sum / steps:.4f}  {seen * world / (time.time() - t0):.1f} samples/s", flush=True)
        train_time = time.time() - t0
        if loop_config["fail_at_epoch"] == epoch and rank == min(1, world - 1):
            _fault_drill(Path(loop_config["fail_marker"]), rank, epoch, last_report)
        preds = _evaluate(engine, valid_shard, collate, device, max(64, t.micro_batch * 4))
        m, calib = epoch_metrics(preds, _evaluate(engine, calib_shard, collate, device, max(64, t.micro_batch * 4)), cfg)
        warm_time, warm_seen = warm or (t0, 0)
        totals = torch.tensor([seen, seen - warm_seen], dtype=torch.float64, device=device)  # NCCL reduces GPU tensors only
        dist.all_reduce(totals)
        peak = torch.tensor([memory.growth_mib()], dtype=torch.float64, device=device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        m.update({"epoch": epoch, "train_loss": loss_sum / max(steps, 1),
                  "train_samples_per_s": float(totals[0]) / max(train_time, 1e-9),
                  # after the first optimizer step: without the one-off start of the input stream
                  "steady_samples_per_s": float(totals[1]) / max(t0 + train_time - warm_time, 1e-9),
                  "data_wait_fraction": waited / max(train_time, 1e-9),
                  "epoch_seconds": time.time() - t0,
                  # the worker's peak resident memory so far above its memory before the model was
                  # built, the largest over ranks: what a worker must have for this model and config
                  "model_memory_mib": float(peak)})

        score = m.get(t.early_stopping_metric, float("nan"))
        sign = 1 if t.early_stopping_mode == "max" else -1
        improved = state["best"] is None or (not math.isnan(score) and sign * (score - state["best"]) > 0)
        if improved:
            state["best"], state["bad_epochs"] = score, 0
        else:
            state["bad_epochs"] += 1
        stop = state["bad_epochs"] >= t.patience
        state["epoch"] = epoch
        state["history"].append(m)

        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=DS_TAG)
            if rank == 0:
                (Path(tmp) / EXPORT_DIR).mkdir()
                (Path(tmp) / EXPORT_DIR / "calibration.json").write_text(json.dumps(calib))
                if "logit" in preds:  # validation PDs by customer_id: the monitoring reference population
                    has = preds["has"].astype(bool)
                    pq.write_table(pa.table({"customer_id": pa.array(preds["id"][has].tolist(), pa.string()),
                                             "pd_12m": calibration.apply(calib, preds["logit"][has])}),
                                   str(Path(tmp) / EXPORT_DIR / VALID_PREDICTIONS))
                (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
                print("[train] epoch {epoch}/{n}  loss {loss:.4f}  {rate:.1f} samples/s  input wait {wait:.0%}  {mets}".format(
                    epoch=epoch, n=t.epochs, loss=m["train_loss"], rate=m["train_samples_per_s"],
                    wait=m["data_wait_fraction"],
                    mets="  ".join(f"{k} {v:.4f}" for k, v in m.items()
                                   if k.startswith(("default_", "product_auc", "recall", "ndcg", "map")))), flush=True)
            ray.train.report(m, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        last_report = time.time()
        if stop:
            if rank == 0:
                print(f"[train] early stopping: {t.early_stopping_metric} did not improve for {t.patience} epochs",
                      flush=True)
            break
    memory.stop()
