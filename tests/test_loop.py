"""Training objective pieces: product loss over eligible products, heads started at base rates;
the per-worker memory metric; the loop's throughput, progress lines, early stopping and schedule."""
import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import LOCAL_CONFIG
from nightscore.config import load_config
from nightscore.encode import Encoders, Numeric
from nightscore.model.network import CreditModel
from nightscore.training.loop import (EpochMeter, PeakRSS, Progress, TrainState, _loss, eta_seconds,
                                      format_duration, lr_schedule)
from nightscore.training.trainer import check_labels, label_priors, label_sums
from nightscore.validate import InputFileError

CFG = load_config(LOCAL_CONFIG)


def batch(held):
    return {"y_default": torch.tensor([0.0, 1.0]), "has_default": torch.tensor([True, False]),
            "y_products": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
            "held_products": torch.tensor(held)}


def test_held_products_do_not_train_the_product_head():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.1, -0.2]])
    out = {"default_logit": torch.tensor([-1.0, 5.0]), "product_logits": logits}
    held = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    base = _loss(out, batch(held), CFG)
    moved = logits.clone()
    moved[0, 0], moved[1, 2] = -9.0, 9.0  # only held cells change
    assert _loss({**out, "product_logits": moved}, batch(held), CFG) == pytest.approx(float(base))
    # the unlabelled row's default logit is ignored; the product loss averages over eligible products
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(torch.tensor(-1.0), torch.tensor(0.0)) + (
        bce(logits[0, 1:], torch.tensor([1.0, 0.0])) + bce(logits[1, :2], torch.zeros(2))) / 2
    assert float(base) == pytest.approx(float(expected), rel=1e-6)


def test_heads_start_at_base_rates(tiny_backbone):
    enc = Encoders(fields=["x"], labels={"x": [2000]}, numeric=[Numeric("x", 0, 1, -2, 2, [-2.0, 0.0, 2.0])],
                   categorical=[], lists=[], text=[], start_ids=[101], sep_ids=[102], pad_id=0)
    model = CreditModel.build(tiny_backbone, "mean", 3, True, enc, wide=True, pretrained=False)
    model.init_priors(0.04, [0.01, 0.2, 0.0])
    assert torch.sigmoid(model.default_head.bias).item() == pytest.approx(0.04, rel=1e-5)
    assert torch.sigmoid(model.product_head.bias).tolist() == pytest.approx([0.01, 0.2, 1e-4], rel=1e-4)


def test_label_priors_count_only_eligible_products(ray_local):
    import ray.data

    rows = pa.table({
        "y_default": pa.array([0.0, 1.0, 0.0, 0.0], pa.float32()),
        "has_default": [True, True, True, False],
        "y_products": pa.FixedSizeListArray.from_arrays(pa.array([1, 0, 0, 0, 0, 1, 0, 0], pa.float32()), 2),
        "held_products": pa.FixedSizeListArray.from_arrays(pa.array([0, 1, 0, 1, 0, 0, 1, 0], pa.float32()), 2),
    })
    priors = label_priors(label_sums(ray.data.from_arrow(rows), CFG), CFG)
    assert priors["default_rate"] == pytest.approx(1 / 3)
    assert priors["product_rates"] == pytest.approx([1 / 3, 1 / 2])


@pytest.mark.parametrize("bad, labelled, fails", [(0, 540, True), (540, 540, True), (0, 0, True), (1, 540, False)])
def test_a_split_needs_both_default_outcomes(bad, labelled, fails):
    sums = {"bad": bad, "labelled": labelled}
    if not fails:
        check_labels(sums, CFG, "validation")
        return
    with pytest.raises(InputFileError, match=rf"validation rows: default label 'default_12m' has {bad} default\(s\) "
                                             rf"among {labelled} labelled rows"):
        check_labels(sums, CFG, "validation")
    # a products-only model has no default head to starve
    check_labels(sums, load_config(LOCAL_CONFIG, ["schema.labels.default=null"]), "validation")


def test_feature_embeddings_and_heads_get_their_own_learning_rates(tiny_backbone):
    """The pretrained backbone moves slowly; the new feature embeddings and wide terms, and the
    heads, at their own rates; every trainable parameter is in exactly one group."""
    from nightscore.training.loop import param_groups

    cfg = load_config(LOCAL_CONFIG, ["train.lr=1e-5", "train.feature_lr=1e-3", "train.head_lr=1e-2"])
    enc = Encoders(fields=["x"], labels={"x": [2000]}, numeric=[Numeric("x", 0, 1, -2, 2, [-2.0, 0.0, 2.0])],
                   categorical=[], lists=[], text=[], start_ids=[101], sep_ids=[102], pad_id=0)
    model = CreditModel.build(tiny_backbone, "mean", 3, True, enc, wide=True, pretrained=False)
    groups = param_groups(model, cfg)
    assert [g["lr"] for g in groups] == [1e-5, 1e-3, 1e-2]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert {id(p) for p in model.features.parameters()} | {id(p) for p in model.wide.parameters()} == ids[1]
    assert {id(p) for p in model.default_head.parameters()} | {id(p) for p in model.product_head.parameters()} == ids[2]
    assert sum(len(i) for i in ids) == len(list(model.parameters()))


def test_layer_lr_decay_gives_each_lower_block_a_smaller_rate(tiny_backbone):
    """train.layer_lr_decay d: the top block at train.lr, each block below at d times the one above,
    the embeddings below the lowest block; the feature embeddings and heads keep their own rates."""
    from nightscore.training.loop import param_groups

    cfg = load_config(LOCAL_CONFIG, ["train.lr=1e-4", "train.feature_lr=1e-3", "train.head_lr=1e-2",
                                     "train.layer_lr_decay=0.5"])
    enc = Encoders(fields=["x"], labels={"x": [2000]}, numeric=[Numeric("x", 0, 1, -2, 2, [-2.0, 0.0, 2.0])],
                   categorical=[], lists=[], text=[], start_ids=[101], sep_ids=[102], pad_id=0)
    model = CreditModel.build(tiny_backbone, "mean", 3, True, enc, wide=True, pretrained=False)
    lr_of = {id(p): g["lr"] for g in param_groups(model, cfg) for p in g["params"]}
    blocks = model.backbone.encoder.layer
    top = len(blocks) - 1
    for i, block in enumerate(blocks):
        assert [lr_of[id(p)] for p in block.parameters()] == pytest.approx([1e-4 * 0.5 ** (top - i)] * len(
            list(block.parameters())))
    embeddings = list(model.backbone.embeddings.parameters())
    assert [lr_of[id(p)] for p in embeddings] == pytest.approx([1e-4 * 0.5 ** len(blocks)] * len(embeddings))
    assert {lr_of[id(p)] for p in model.features.parameters()} == {1e-3}
    assert {lr_of[id(p)] for p in model.default_head.parameters()} == {1e-2}
    assert len(lr_of) == len(list(model.parameters()))


def test_peak_rss_sees_a_transient_allocation():
    """The per-worker memory metric: a peak held for a moment and freed is still counted."""
    memory = PeakRSS()
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page touched
    time.sleep(0.3)
    del block
    time.sleep(0.1)
    memory.stop()
    assert 200 < memory.growth_mib() < 1024


class Clock:
    """A hand-driven clock for the meters."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_epoch_meter_counts_input_wait_and_the_steady_rate_after_the_first_optimizer_step():
    clock = Clock()
    meter = EpochMeter(grad_accum=2, clock=clock)
    for wait, compute, loss in [(3.0, 1.0, 0.6), (0.5, 1.0, 0.4), (0.5, 1.0, 0.2), (0.5, 1.0, 0.2)]:
        clock.now += wait
        meter.batch_arrived()
        clock.now += compute
        meter.step_done(16, loss)
    meter.training_done()  # 8.5 s of training; the first optimizer step ended at 5.5 s, 32 samples in
    assert meter.counts() == [64, 32]
    clock.now += 1.5  # evaluation
    m = meter.metrics(seen=128, steady_seen=64)  # as summed over two ranks
    assert list(m) == ["train_loss", "train_samples_per_s", "steady_samples_per_s", "data_wait_fraction",
                       "epoch_seconds"]
    assert m["train_loss"] == pytest.approx(0.35)
    assert m["train_samples_per_s"] == pytest.approx(128 / 8.5)
    assert m["steady_samples_per_s"] == pytest.approx(64 / 3.0)
    assert m["data_wait_fraction"] == pytest.approx(4.5 / 8.5)
    assert m["epoch_seconds"] == pytest.approx(10.0)


def test_an_epoch_shorter_than_one_optimizer_step_has_no_steady_part():
    meter = EpochMeter(grad_accum=4, clock=Clock())
    meter.step_done(8, 0.5)
    assert meter.counts() == [8, 8]  # the steady rate then covers the whole epoch


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (41.6, "42s"), (245, "4m05s"), (7620, "2h07m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_rest_at_the_rate_so_far():
    assert eta_seconds(0, 100, 5.0) is None
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert eta_seconds(100, 100, 40.0) == 0.0


def test_progress_prints_one_line_per_epoch_and_at_most_one_every_interval_inside_it():
    clock, lines = Clock(), []
    progress = Progress(first_epoch=1, epochs=2, epoch_rows=1000, world=2, emit=lines.append, every_s=30.0, clock=clock)
    meter = EpochMeter(grad_accum=1, clock=clock)
    for _ in range(10):  # 10 steps of 10 s, 25 rows on this rank each
        clock.now += 10.0
        meter.step_done(25, 0.5)
        progress.step(1, meter)
    assert len(lines) == 3  # after 30, 60 and 90 s
    assert lines[0] == "epoch 1/2  150/1,000 samples  loss 0.5000  5.0 samples/s  ETA 6m10s"  # 150 of 2,000 in 30 s
    clock.now += 20.0
    progress.epoch_done({"default_auc": 0.75, "product_auc": 0.6, "epoch": 1, "train_loss": 0.5,
                         "train_samples_per_s": 5.0, "data_wait_fraction": 0.1, "epoch_seconds": 120.0})
    assert lines[-1] == ("epoch 1/2  loss 0.5000  5.0 samples/s  input wait 10%  default_auc 0.7500  "
                         "product_auc 0.6000  ETA 2m00s")
    progress.step(2, EpochMeter(grad_accum=1, clock=clock))
    assert len(lines) == 4  # the epoch line restarted the interval


def test_a_resumed_run_estimates_only_the_epochs_it_still_runs():
    clock, lines = Clock(), []
    progress = Progress(first_epoch=3, epochs=4, epoch_rows=100, world=1, emit=lines.append, clock=clock)
    clock.now += 50.0
    progress.epoch_done({"epoch": 3, "train_loss": 0.3, "train_samples_per_s": 2.0, "data_wait_fraction": 0.0})
    assert lines[-1].endswith("ETA 50s")


def early_stopping_spec(*extra):
    return load_config(LOCAL_CONFIG, ["train.early_stopping_metric=default_auc", "train.early_stopping_mode=max",
                                      "train.patience=2", *extra]).train


def test_early_stopping_after_patience_epochs_without_improvement():
    t = early_stopping_spec()
    state = TrainState()
    assert [state.record({"epoch": e, "default_auc": auc}, t) for e, auc in
            enumerate([0.7, 0.8, 0.8, 0.79, 0.81, 0.7, float("nan")], start=1)] == \
        [False, False, False, True, False, False, True]
    assert (state.epoch, state.best, state.bad_epochs) == (7, 0.81, 2)
    assert [m["epoch"] for m in state.history] == list(range(1, 8))


def test_train_state_round_trips_through_its_checkpoint_file():
    """The same JSON object, keys in the same order, as the checkpoint's train_state.json always held."""
    state = TrainState()
    state.record({"epoch": 1, "default_auc": 0.7}, early_stopping_spec())
    state.resumed_at_epochs.append(2)
    text = json.dumps(dataclasses.asdict(state))
    assert list(json.loads(text)) == ["epoch", "best", "bad_epochs", "resumed_at_epochs", "history"]
    assert TrainState(**json.loads(text)) == state


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    factor = lr_schedule(total_steps=100, warmup_fraction=0.1)
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(55) == pytest.approx(1 - 45 / 90)
    assert factor(99) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
