"""The per-worker training function run by Ray Train's TorchTrainer.

`train_loop_per_worker` reads top to bottom as named steps: `set_up` (model, optimizer,
`deepspeed.initialize`), `resume` (from the Ray Train checkpoint, if Ray hands one), then per
epoch `train_epoch` -> `evaluate` (validation and calibration shards, gathered across ranks;
calibration fitted on the calibration rows, metrics measured on the validation rows) ->
`TrainState.record` (early stopping) -> `checkpoint_and_report` (every rank its ZeRO shards,
rank 0 also the export files and the state; `ray.train.report` on every rank). No rank ever
gathers the whole model: the driver consolidates the best checkpoint's shards once, after
`fit()` (`consolidated_state_dict`). Console lines come from rank 0 alone (`Progress`).
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn

from .. import metrics as M
from ..config import Config, TrainSpec
from ..encode import Encoders
from ..model import calibration
from ..model.features import to_tensors
from ..model.network import CreditModel, block_list
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
    engine computed with; buffers stay as saved. zero_to_fp32 (like DeepSpeed's resume) unpickles
    its files in full, which is why the trainer refuses a run folder other users can write.
    """
    from deepspeed.checkpoint.constants import BUFFER_NAMES
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_file

    stage = cfg.train.zero_stage
    states = torch.load(get_model_state_file(str(Path(checkpoint_dir) / DS_TAG), stage),
                        map_location="cpu", weights_only=True)  # tensors and plain containers only
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


class Collate(NumpyBatchCollateFn):
    """A Ray Data numpy batch -> model input and label tensors (customer ids stay numpy)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {"x": to_tensors(batch), "customer_id": batch["customer_id"]}
        for key in ("y_default", "has_default"):
            if key in batch:
                out[key] = torch.tensor(batch[key])  # a copy: Ray hands read-only arrays
        for key in ("y_products", "held_products"):
            if key in batch:
                out[key] = torch.as_tensor(np.stack(batch[key]))
        return out


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
    over every feature, so at the heads' rate a single step can move the logit by several units.
    With train.layer_lr_decay d < 1, the backbone's top block keeps train.lr and each block below
    it takes d times the rate above (its embeddings d^L): the lower blocks, which hold the most
    general pretrained features, move least (Clark et al. 2020, ELECTRA)."""
    t = cfg.train
    path, blocks = block_list(model.backbone)
    prefix, depth = ".".join(["backbone", *path]) + ".", len(blocks)
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".")[0]
        if top == "backbone":  # block i of L: lr * d^(L-1-i); embeddings and other weights: lr * d^L
            below = depth - 1 - int(name[len(prefix):].split(".")[0]) if name.startswith(prefix) else depth
            lr = t.lr * t.layer_lr_decay ** below
        else:
            lr = t.feature_lr if top in ("features", "wide") else t.head_lr
        groups.setdefault(lr, []).append(p)
    return [{"params": ps, "lr": lr} for lr, ps in groups.items()]


def lr_schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LambdaLR's factor: a linear warm-up over `warmup_fraction` of the steps (the first updates,
    driven by heads that start from their priors, stay small for the pretrained backbone), then a
    linear decay to 10 %."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, max(0.1, 1 - (step - warmup) / max(1, total_steps - warmup)))
    return factor


def quiet_libraries() -> None:
    """Per-rank output that tells a user nothing, off unless `ray.verbose`: transformers'
    weight-loading bar, torch's deprecation notices for the collectives DeepSpeed calls, and Ray
    Train's INFO lines on every rank ("Checkpoint successfully created", and "Reporting training
    result" with the whole metrics dict, which comes through the root logger). The controller's
    lines, a retried worker failure among them, are untouched."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.", category=FutureWarning)
    for logger in (logging.getLogger("ray.train"), logging.getLogger()):
        logger.setLevel(logging.WARNING)


def format_duration(seconds: float) -> str:
    """42s, 4m05s, 2h07m: an ETA at the precision a reader needs."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Time left for `total` at the rate so far; None before any work is done."""
    if done <= 0:
        return None
    return elapsed * max(0.0, total - done) / done


class EpochMeter:
    """One epoch's training on this rank: samples, summed loss, time blocked on input, and the
    time and samples at the end of the first optimizer step (the steady rate starts there, past
    the one-off start of the input stream)."""

    def __init__(self, grad_accum: int, clock: Callable[[], float] = time.time):
        self._clock, self._grad_accum = clock, grad_accum
        self.start = self._mark = clock()
        self.seen = self.steps = 0
        self.loss_sum = self.waited = self.train_seconds = 0.0
        self.warm: tuple[float, int] | None = None

    def batch_arrived(self) -> None:
        self.waited += self._clock() - self._mark

    def step_done(self, rows: int, loss: float) -> None:
        self.seen += rows
        self.loss_sum += loss
        self.steps += 1
        if self.warm is None and self.steps == self._grad_accum:
            self.warm = (self._clock(), self.seen)
        self._mark = self._clock()

    def training_done(self) -> None:
        self.train_seconds = self._clock() - self.start

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def counts(self) -> list[float]:
        """Samples, and samples after the first optimizer step: what the ranks sum for the rates."""
        return [self.seen, self.seen - (self.warm or (self.start, 0))[1]]

    def metrics(self, seen: float, steady_seen: float) -> dict[str, float]:
        """The epoch's loss and throughput, from `counts` summed over the ranks."""
        warm_time = (self.warm or (self.start, 0))[0]
        train = max(self.train_seconds, 1e-9)
        return {"train_loss": self.loss,
                "train_samples_per_s": seen / train,
                "steady_samples_per_s": steady_seen / max(self.start + self.train_seconds - warm_time, 1e-9),
                "data_wait_fraction": self.waited / train,
                "epoch_seconds": self._clock() - self.start}


EPOCH_LINE_METRICS = ("default_", "product_auc", "recall", "ndcg", "map")


class Progress:
    """The training progress lines: one per epoch, and inside a long epoch one at most every
    `every_s` seconds; each with samples/s and an ETA for the rest of this run at its rate so
    far (evaluation and checkpoints included, so the ETA firms up after the first epoch)."""

    def __init__(self, first_epoch: int, epochs: int, epoch_rows: int, world: int,
                 emit: Callable[[str], None], every_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.first, self.epochs, self.rows, self.world = first_epoch, epochs, epoch_rows, world
        self._emit, self._every_s, self._clock = emit, every_s, clock
        self.start = self._last = clock()

    def _eta(self, epoch: int, rows_done: float) -> str:
        done = (epoch - self.first) * self.rows + rows_done
        eta = eta_seconds(done, (self.epochs - self.first + 1) * self.rows, self._clock() - self.start)
        return "?" if eta is None else format_duration(eta)

    def step(self, epoch: int, meter: EpochMeter) -> None:
        """A line if `every_s` has passed since the last one; samples are this rank's times the ranks."""
        now = self._clock()
        if now - self._last < self._every_s:
            return
        self._last = now
        done = min(meter.seen * self.world, self.rows)
        self._emit(f"epoch {epoch}/{self.epochs}  {done:,}/{self.rows:,} samples  loss {meter.loss:.4f}  "
                   f"{done / max(now - meter.start, 1e-9):.1f} samples/s  ETA {self._eta(epoch, done)}")

    def epoch_done(self, m: dict[str, float]) -> None:
        self._last = self._clock()
        mets = "  ".join(f"{k} {v:.4f}" for k, v in m.items() if k.startswith(EPOCH_LINE_METRICS))
        self._emit(f"epoch {m['epoch']}/{self.epochs}  loss {m['train_loss']:.4f}  "
                   f"{m['train_samples_per_s']:.1f} samples/s  input wait {m['data_wait_fraction']:.0%}  {mets}  "
                   f"ETA {self._eta(m['epoch'], self.rows)}")


@dataclasses.dataclass
class TrainState:
    """What a checkpoint holds besides the engine (`STATE_FILE`): the last epoch done, early
    stopping's record, the epochs a resumed run restarted at, and every epoch's metrics."""
    epoch: int = 0
    best: float | None = None
    bad_epochs: int = 0
    resumed_at_epochs: list[int] = dataclasses.field(default_factory=list)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def record(self, m: dict[str, float], t: TrainSpec) -> bool:
        """Add an epoch's metrics; True when `t.early_stopping_metric` has not improved for
        `t.patience` epochs (a NaN never improves, unless it is the first)."""
        score = m.get(t.early_stopping_metric, float("nan"))
        sign = 1 if t.early_stopping_mode == "max" else -1
        if self.best is None or (not math.isnan(score) and sign * (score - self.best) > 0):
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        self.epoch = int(m["epoch"])
        self.history.append(m)
        return self.bad_epochs >= t.patience


@dataclasses.dataclass
class Worker:
    """One rank's training set-up: what every step of the loop reads."""
    cfg: Config
    rank: int
    world: int
    device: torch.device
    engine: Any  # deepspeed.DeepSpeedEngine
    memory: PeakRSS
    shards: dict[str, Any]  # ray.data.DataIterator per split: train, valid, calibration

    def say(self, text: str) -> None:
        """A console line from rank 0 only: every rank runs the same loop."""
        if self.rank == 0:
            print(f"[train] {text}", flush=True)


def set_up(cfg: Config, loop_config: dict[str, Any]) -> Worker:
    """Threads and allocator, the process group, the model with its optimizer and learning-rate
    schedule, and `deepspeed.initialize`."""
    t = cfg.train
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if t.use_gpu else "cpu")
    import deepspeed  # after DS_ACCELERATOR: a CPU worker must not probe for GPUs

    if not cfg.ray.verbose:
        quiet_libraries()
    torch.set_num_threads(t.torch_threads or max(1, int(t.cpus_per_worker)))
    return_freed_buffers_to_the_os()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(t.seed)

    ds_config = deepspeed_config(t, world)
    deepspeed.init_distributed()  # adopt Ray Train's process group before ZeRO-3 partitions weights on load
    memory = PeakRSS()  # from just before the model exists: what the model, its optimizer and training add
    model = build_model(cfg, len(loop_config["product_ids"]), Encoders.from_json(loop_config["encoders"]), ds_config)
    model.init_priors(**loop_config["priors"])
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=t.weight_decay)
    steps_per_epoch = max(1, math.ceil(loop_config["train_rows"] / (world * t.micro_batch * t.grad_accum)))
    schedule = lr_schedule(steps_per_epoch * t.epochs, t.warmup_fraction)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    shards = {name: ray.train.get_dataset_shard(name) for name in ("train", "valid", "calibration")}
    return Worker(cfg, rank, world, device, engine, memory, shards)


def resume(worker: Worker) -> TrainState:
    """The engine (weights, optimizer, schedule) and the state from the checkpoint Ray Train
    hands a restarted worker group; a fresh state on a first start."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return TrainState()
    with checkpoint.as_directory() as d:
        worker.engine.load_checkpoint(d, tag=DS_TAG)
        state = TrainState(**json.loads((Path(d) / STATE_FILE).read_text()))
    state.resumed_at_epochs.append(state.epoch + 1)
    worker.say(f"resumed from checkpoint after epoch {state.epoch}")
    return state


def _on(x: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in x.items()}


def train_epoch(worker: Worker, epoch: int, progress: Progress) -> EpochMeter:
    """One pass over this rank's shard, shuffled anew every epoch (the same way on a rerun)."""
    t, engine = worker.cfg.train, worker.engine
    meter = EpochMeter(t.grad_accum)
    torch.manual_seed(t.seed * 1000 + epoch)
    batches = worker.shards["train"].iter_torch_batches(
        batch_size=t.micro_batch, collate_fn=Collate(),
        local_shuffle_buffer_size=t.micro_batch * 8, local_shuffle_seed=t.seed * 1000 + epoch)
    for batch in batches:
        meter.batch_arrived()
        x = _on(batch.pop("x"), worker.device)
        labels = {k: v.to(worker.device) for k, v in batch.items() if k != "customer_id"}
        loss = _loss(engine(x), labels, worker.cfg)
        engine.backward(loss)
        engine.step()
        meter.step_done(len(next(iter(labels.values()))), float(loss.detach()))
        progress.step(epoch, meter)
    meter.training_done()
    return meter


def _predict(worker: Worker, split: str) -> dict[str, np.ndarray]:
    """Predictions on this rank's part of a held-out shard, then all-gathered so every rank sees all."""
    engine = worker.engine
    engine.eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in worker.shards[split].iter_torch_batches(batch_size=max(64, worker.cfg.train.micro_batch * 4),
                                                             collate_fn=Collate()):
            out = engine(_on(batch["x"], worker.device))
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


def evaluate(worker: Worker) -> tuple[dict[str, np.ndarray], dict[str, float], dict | None]:
    """The validation predictions, their metrics, and the calibration fitted on the calibration rows."""
    preds = _predict(worker, "valid")
    metrics, calib = epoch_metrics(preds, _predict(worker, "calibration"), worker.cfg)
    return preds, metrics, calib


def throughput_metrics(worker: Worker, epoch: int, meter: EpochMeter) -> dict[str, float]:
    """The epoch's metrics besides validation: this rank's loss and input wait, samples/s over all
    ranks, and the largest peak memory of any rank."""
    totals = torch.tensor(meter.counts(), dtype=torch.float64, device=worker.device)  # NCCL reduces GPU tensors only
    dist.all_reduce(totals)
    peak = torch.tensor([worker.memory.growth_mib()], dtype=torch.float64, device=worker.device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    # model_memory_mib: the worker's peak resident memory so far above its memory before the model
    # was built, the largest over ranks: what a worker must have for this model and config
    return {"epoch": epoch, **meter.metrics(float(totals[0]), float(totals[1])), "model_memory_mib": float(peak)}


def write_export(d: Path, state: TrainState, calib: dict | None, preds: dict[str, np.ndarray]) -> None:
    """Rank 0's part of a checkpoint: what the driver exports from the best one besides the
    weights (the calibration; the validation PDs by customer_id, the monitoring reference
    population), and the state a resumed run continues from."""
    (d / EXPORT_DIR).mkdir()
    (d / EXPORT_DIR / "calibration.json").write_text(json.dumps(calib))
    if "logit" in preds:
        has = preds["has"].astype(bool)
        pq.write_table(pa.table({"customer_id": pa.array(preds["id"][has].tolist(), pa.string()),
                                 "pd_12m": calibration.apply(calib, preds["logit"][has])}),
                       str(d / EXPORT_DIR / VALID_PREDICTIONS))
    (d / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))


def checkpoint_and_report(worker: Worker, state: TrainState, metrics: dict[str, float], calib: dict | None,
                          preds: dict[str, np.ndarray]) -> None:
    """Every rank saves its ZeRO shards into one checkpoint and reports it with the metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        worker.engine.save_checkpoint(tmp, tag=DS_TAG)
        if worker.rank == 0:
            write_export(Path(tmp), state, calib, preds)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


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
    """Ray Train runs this on every rank: set up, resume, then per epoch train -> evaluate ->
    early-stopping check -> checkpoint and report, until the last epoch or early stopping."""
    cfg = Config.model_validate(loop_config["config"])
    t = cfg.train
    worker = set_up(cfg, loop_config)
    state = resume(worker)
    progress = Progress(state.epoch + 1, t.epochs, loop_config["train_rows"], worker.world, worker.say)
    last_report = time.time()
    for epoch in range(state.epoch + 1, t.epochs + 1):
        meter = train_epoch(worker, epoch, progress)
        if loop_config["fail_at_epoch"] == epoch and worker.rank == min(1, worker.world - 1):
            _fault_drill(Path(loop_config["fail_marker"]), worker.rank, epoch, last_report)
        preds, metrics, calib = evaluate(worker)
        metrics.update(throughput_metrics(worker, epoch, meter))
        stop = state.record(metrics, t)
        progress.epoch_done(metrics)
        checkpoint_and_report(worker, state, metrics, calib, preds)
        last_report = time.time()
        if stop:
            worker.say(f"early stopping: {t.early_stopping_metric} did not improve for {t.patience} epochs")
            break
    worker.memory.stop()
