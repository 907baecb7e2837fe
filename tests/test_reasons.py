"""Reason codes are faithful: neutralising the top reason field moves the PD down more, on average,
than neutralising a random other reason field (field occlusion against gradient x input)."""
import datetime as dt

import numpy as np
import pyarrow as pa

from nightscore import synth
from nightscore.model import store
from nightscore.scoring.inference import Predictor
from nightscore.scoring.outputs import reason_fields
from nightscore.scoring.prepare import model_input


def test_top_reason_field_matters_more_than_a_random_one(tiny_model_dir):
    loaded = store.load(tiny_model_dir)
    cfg = loaded.config
    table, _ = synth.generate(400, dt.date(2026, 11, 23), 4, loaded.meta["product_ids"])
    inputs = model_input(table, cfg, str(loaded.root))[0]
    predictor = Predictor(loaded, precision="fp32")
    preds = predictor.predict(inputs, explain=lambda pd: np.ones(len(pd), dtype=bool))
    assert preds.explained.all()

    names, texts = reason_fields(cfg)
    candidates = [j for j, name in enumerate(names) if name in texts]
    # PD with each candidate field neutralised (its value replaced by null)
    occluded = {}
    for j in candidates:
        col = table.column(names[j])
        neutral = table.set_column(table.schema.get_field_index(names[j]), names[j], pa.nulls(len(col), col.type))
        occluded[j] = predictor.predict(model_input(neutral, cfg, str(loaded.root))[0]).pd
    contrib = preds.contrib[:, candidates]
    top = np.asarray(candidates)[contrib.argmax(axis=1)]
    rng = np.random.default_rng(0)
    rand = np.array([rng.choice([c for c in candidates if c != t]) for t in top])
    rows = np.arange(len(top))
    drop_top = preds.pd - np.array([occluded[j][i] for i, j in zip(rows, top)])
    drop_rand = preds.pd - np.array([occluded[j][i] for i, j in zip(rows, rand)])
    assert drop_top.mean() > drop_rand.mean()
    assert (drop_top > drop_rand).mean() > 0.6
