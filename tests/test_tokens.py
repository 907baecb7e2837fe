import subprocess
import sys
import datetime as dt

import pyarrow as pa
import pytest

from nightscore import synth
from nightscore.config import load_config
from nightscore.model.tokens import tokenize, tokenize_with_fields, tokenizer_for
from nightscore.serialize import field_spans, serialize

from conftest import LOCAL_CONFIG


@pytest.mark.parametrize("max_length", [16, 192])
def test_backend_matches_hugging_face_call(tiny_backbone, max_length):
    """The backend path gives exactly what the fast tokenizer's own __call__ gives, though the
    tokenizer file carries its own truncation (128) and fixed padding (128)."""
    from transformers import AutoTokenizer

    cfg = load_config(LOCAL_CONFIG)
    table, _ = synth.generate(64, dt.date(2026, 11, 2), 3, synth.catalog_product_ids(cfg.products.catalog))
    texts = serialize(table, cfg.schema, cfg.serialize)
    hf = AutoTokenizer.from_pretrained(tiny_backbone)
    want = hf(texts.to_pylist(), truncation=True, max_length=max_length, return_offsets_mapping=True)
    ids, fields = tokenize_with_fields(texts, field_spans(table, cfg.schema, cfg.serialize),
                                       tokenizer_for(tiny_backbone), max_length)
    assert ids.to_pylist() == want["input_ids"]
    assert tokenize(texts, tokenizer_for(tiny_backbone), max_length).to_pylist() == want["input_ids"]
    assert tokenize(texts, hf, max_length).to_pylist() == want["input_ids"]
    assert max(len(x) for x in ids.to_pylist()) <= max_length
    assert [len(f) for f in fields.to_pylist()] == [len(x) for x in want["input_ids"]]
    starts = field_spans(table, cfg.schema, cfg.serialize)
    n_fields = starts.shape[1] - 1
    for row, (got, spans) in enumerate(zip(fields.to_pylist(), want["offset_mapping"])):
        # a token belongs to the last field starting at or before its first character
        expected = [-1 if end <= begin else max(j for j in range(n_fields + 1) if starts[row, j] <= begin)
                    for begin, end in spans]
        assert got == [-1 if f >= n_fields else f for f in expected]


def test_preparation_does_not_import_torch():
    """Ray Data's preparation workers import this module: without torch they start in well
    under a second instead of several."""
    code = ("import sys, nightscore.scoring.prepare; "
            "sys.exit(1 if {'torch', 'transformers'} & set(sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_empty_batch(tiny_backbone):
    assert tokenize(pa.array([], pa.string()), tokenizer_for(tiny_backbone), 32).to_pylist() == []
