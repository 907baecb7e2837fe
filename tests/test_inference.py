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
