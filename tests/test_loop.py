"""Training objective pieces: product loss over eligible products, heads started at base rates;
the per-worker memory metric."""
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from conftest import LOCAL_CONFIG
from nightscore.config import load_config
from nightscore.encode import Encoders, Numeric
from nightscore.model.network import CreditModel
from nightscore.training.loop import PeakRSS, _loss
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


def test_peak_rss_sees_a_transient_allocation():
    """The per-worker memory metric: a peak held for a moment and freed is still counted."""
    memory = PeakRSS()
    block = np.ones(256 * 2**20 // 8)  # 256 MiB, every page touched
    time.sleep(0.3)
    del block
    time.sleep(0.1)
    memory.stop()
    assert 200 < memory.growth_mib() < 1024
