import datetime as dt

import pyarrow as pa
import pytest

from conftest import LOCAL_CONFIG
from nightscore import synth
from nightscore.config import load_config
from nightscore.serialize import field_spans, scrub, segments, serialize

CFG = load_config(LOCAL_CONFIG)


@pytest.fixture(scope="module")
def table():
    t, _ = synth.generate(500, dt.date(2026, 11, 23), 5, synth.catalog_product_ids("builtin:catalog.yaml"))
    return t


def test_no_pii_value_in_text(table):
    text = " ".join(serialize(table, CFG.schema, CFG.serialize).to_pylist())
    for col in CFG.schema.pii:
        for v in table.column(col).to_pylist()[:200]:
            assert v not in text, f"{col} value leaked into model text"


def test_stable_order_labels_and_format(table):
    texts = serialize(table, CFG.schema, CFG.serialize).to_pylist()
    labels = [f.label for f in CFG.schema.features if f.in_model]
    for t in texts[:50]:
        positions = [t.index(f"{lab}: ") for lab in labels]
        assert positions == sorted(positions)
    # sensitive / out-of-model columns never appear
    assert all("Region:" not in t and "Vulnerable:" not in t for t in texts)


def test_nulls_lists_booleans_numbers():
    t, _ = synth.generate(5, dt.date(2026, 11, 23), 1, ["A"])
    t = t.set_column(t.schema.get_field_index("employment_years"), "employment_years", pa.array([None, 2.5, None, 1.0, 0.0]))
    t = t.set_column(t.schema.get_field_index("months_since_last_delinquency"), "months_since_last_delinquency",
                     pa.array([None, 3, None, None, None], pa.int64()))
    t = t.set_column(t.schema.get_field_index("products_held"), "products_held", pa.array([[], ["A", "B"], [], [], []]))
    t = t.set_column(t.schema.get_field_index("annual_income"), "annual_income", pa.array([52347.8, 1_250_000.0, 900.0, 0.0, 10.5]))
    texts = serialize(t, CFG.schema, CFG.serialize).to_pylist()
    assert "Years in job: unknown" in texts[0] and "Years in job: 2.5" in texts[1]
    assert "Last delinquency: never" in texts[0] and "Last delinquency: 3 months ago" in texts[1]
    assert "Products: none" in texts[0] and "Products: A, B" in texts[1]
    assert "Income: 52.3k" in texts[0] and "Income: 1.25m" in texts[1] and "Income: 900;" in texts[2]
    assert "Tenure: " in texts[0] and " months;" in texts[0]


@pytest.mark.parametrize("raw,clean", [
    ("email me at jane.doe@example.co.uk thanks", "email me at [email] thanks"),
    ("call 07700 900123 after 5", "call [phone] after 5"),
    ("ring +44 (0)20 7946 0958", "ring [phone]"),
    ("my NI is QQ123456C", "my NI is [id]"),
    ("account 12345678 closed", "account [phone] closed"),  # a bare digit run is scrubbed either way
    ("paid 250 on 12/03", "paid 250 on 12/03"),
])
def test_scrub(raw, clean):
    assert scrub(pa.array([raw])).to_pylist() == [clean]


def test_notes_scrubbed_and_truncated():
    t, _ = synth.generate(3, dt.date(2026, 11, 23), 1, ["A"])
    long = "x" * 500
    t = t.set_column(t.schema.get_field_index("interaction_notes"), "interaction_notes",
                     pa.array(["mail a.b@c.com now", long, "   "]))
    texts = serialize(t, CFG.schema, CFG.serialize).to_pylist()
    assert texts[0].endswith("Notes: mail [email] now")
    assert texts[1].endswith("Notes: " + "x" * 120)
    assert texts[2].endswith("Notes: unknown")


def test_field_spans_match_segments(table):
    small = table.slice(0, 20)
    texts = serialize(small, CFG.schema, CFG.serialize).to_pylist()
    spans = field_spans(small, CFG.schema, CFG.serialize)
    segs = [s.to_pylist() for s in segments(small, CFG.schema, CFG.serialize)]
    for i, text in enumerate(texts):
        assert spans[i, -1] == len(text)
        for j, seg in enumerate(segs):
            assert text[spans[i, j]: spans[i, j] + len(seg[i])] == seg[i]
