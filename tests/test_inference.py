"""The in-process predictor: precision choice, and attributions that change nothing but cost."""
import datetime as dt

import numpy as np
import pytest
import torch

from nightscore import synth
from nightscore.model import store
from nightscore.model.tokens import tokenize_with_fields
from nightscore.schema import model_features
from nightscore.scoring.inference import Predictor, choose_dtype, cpu_has_bf16
from nightscore.serialize import field_spans, serialize


class Untimeable(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the model ran, but the choice needed no timing")


def test_explicit_precision_and_cpus_without_bf16_need_no_timing():
    cpu = torch.device("cpu")
    assert choose_dtype("fp32", cpu, Untimeable(), []) is None
    assert choose_dtype("bf16", cpu, Untimeable(), []) is torch.bfloat16
    if cpu_has_bf16():
        pytest.skip("this CPU has bf16 instructions: 'auto' times both")
    assert choose_dtype("auto", cpu, Untimeable(), []) is None


def test_attributions_leave_predictions_unchanged(tiny_model_dir):
    loaded = store.load(tiny_model_dir)
    cfg = loaded.config
    table, _ = synth.generate(150, dt.date(2026, 11, 23), 9, loaded.meta["product_ids"])
    ids, fields = tokenize_with_fields(serialize(table, cfg.schema, cfg.serialize),
                                       field_spans(table, cfg.schema, cfg.serialize), loaded.tokenizer,
                                       cfg.model.max_length)
    predictor = Predictor(loaded, precision="fp32", micro_batch=32)
    plain = predictor.predict(ids)
    explained = predictor.predict(ids, fields, len(model_features(cfg.schema)), explain=lambda pd: pd > np.median(pd))
    assert plain.explained is None and plain.contrib is None
    np.testing.assert_allclose(plain.pd, explained.pd, rtol=1e-5)
    np.testing.assert_allclose(plain.propensity, explained.propensity, rtol=1e-5)
    assert explained.explained.sum() == (explained.pd > np.median(explained.pd)).sum()
    assert (np.abs(explained.contrib[~explained.explained]).sum() == 0) and np.abs(explained.contrib).sum() > 0


def _model(layers: int, n_products: int = 3):
    from transformers import BertConfig, BertModel

    from nightscore.model.network import CreditModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    return CreditModel(BertModel(cfg), "mean", n_products, default_head=True).eval()


@pytest.mark.parametrize("layers,devices,want", [(4, 2, [0, 0, 1, 1]), (6, 4, [0, 0, 1, 2, 2, 3]),
                                                 (3, 1, [0, 0, 0])])
def test_device_map_runs_blocks_contiguously(layers, devices, want):
    """An actor holding several GPUs splits the blocks in even, ordered runs: embeddings first,
    pooler and heads last, every parameter placed."""
    model = _model(layers)
    plan = model.device_map(devices)
    assert [plan[f"backbone.encoder.layer.{i}"] for i in range(layers)] == want
    assert plan["backbone.embeddings"] == 0
    assert plan["backbone.pooler"] == plan["default_head"] == plan["product_head"] == devices - 1
    for name, _ in model.named_parameters():
        assert any(name == key or name.startswith(key + ".") for key in plan), name


def test_spread_model_predicts_the_same():
    """The placement goes through accelerate's dispatch (complete-map check included); on this
    CPU-only machine both 'devices' are the CPU, so only a GPU run shows the transfers."""
    from nightscore.scoring.inference import spread

    model = _model(4)
    ids = torch.randint(1, 100, (5, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model(ids, mask)["default_logit"]
        got = spread(model, [torch.device("cpu"), torch.device("cpu")])(ids, mask)["default_logit"]
    torch.testing.assert_close(got, want)
