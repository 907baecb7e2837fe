"""Rows -> model input: encoders fitted on training rows, one token per structured feature,
scrubbed text within its budget, and what the encoders had not seen counted, not crashed on."""
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import LOCAL_CONFIG, fitted_encoders, wide_config, wide_table
from nightscore import encode, synth
from nightscore.config import ConfigError, load_config
from nightscore.encode import LIST_EMPTY, LIST_NULL, LIST_UNSEEN, NULL, UNSEEN, Encoders, scrub
from nightscore.model.tokens import tokenizer_for
from nightscore.schema import model_features

DATE = dt.date(2026, 11, 23)
PRODUCTS = synth.catalog_product_ids("builtin:catalog.yaml")


@pytest.fixture(scope="module")
def cfg(tiny_backbone):
    return load_config(LOCAL_CONFIG, [f"model.backbone={tiny_backbone}"])


@pytest.fixture(scope="module")
def fitted(cfg, tiny_backbone):
    rows, _ = synth.generate(1500, DATE, 5, PRODUCTS)
    return rows, fitted_encoders(cfg, tiny_backbone, rows)


def run(table, enc, cfg, tiny_backbone):
    return encode.encode(table, enc, cfg.schema, tokenizer_for(tiny_backbone))


def test_one_token_per_structured_feature_and_text_after(fitted, cfg, tiny_backbone):
    rows, enc = fitted
    feats = model_features(cfg.schema)
    assert enc.fields == [f.name for f in feats]
    assert sorted(enc.structured) == sorted(f.name for f in feats if f.kind != "text")
    assert [t.name for t in enc.text] == [f.name for f in feats if f.kind == "text"]
    out, _ = run(rows, enc, cfg, tiny_backbone)
    assert out.column("numeric").type.list_size == sum(f.kind == "numeric" for f in feats)
    assert out.column("categorical").type.list_size == sum(f.kind in ("categorical", "boolean") for f in feats)
    # the sequence is the fixed feature tokens plus the text budget, whatever the values
    lengths = pc.list_value_length(out.column("text_ids")).to_numpy()
    assert lengths.max() <= sum(t.max_tokens for t in enc.text) + len(enc.sep_ids)
    assert enc.fixed_tokens == len(enc.start_ids) + len(enc.structured) + len(enc.sep_ids)


def test_no_pii_or_label_reaches_the_model_input(fitted, cfg, tiny_backbone):
    rows, enc = fitted
    blob = enc.to_json()
    out, _ = run(rows, enc, cfg, tiny_backbone)
    text = tokenizer_for(tiny_backbone).decode_batch(out.column("text_ids").to_pylist())
    for col in cfg.schema.pii:
        for value in rows.column(col).to_pylist()[:200]:
            assert value not in blob and not any(value in t for t in text)
    assert cfg.schema.id not in blob and "default_12m" not in blob


def test_encoders_round_trip_as_json(fitted):
    _, enc = fitted
    assert Encoders.from_json(enc.to_json()) == enc


def test_vocabulary_and_bins_come_from_training_rows_only(cfg, tiny_backbone):
    rows, _ = synth.generate(400, DATE, 7, PRODUCTS)
    only_rent = rows.set_column(rows.schema.get_field_index("home_ownership"), "home_ownership",
                                pa.array(["rent"] * rows.num_rows))
    enc = fitted_encoders(cfg, tiny_backbone, only_rent)
    (home,) = [v for v in enc.categorical if v.name == "home_ownership"]
    assert home.values == ["rent"]
    age = next(n for n in enc.numeric if n.name == "age")
    ages = rows.column("age").to_numpy()
    assert age.mean == pytest.approx(ages.mean()) and len(age.edges) >= 3
    assert age.low == pytest.approx((ages.min() - age.mean) / age.sd)


def test_unseen_values_nulls_and_out_of_range_are_encoded_and_counted(fitted, cfg, tiny_backbone):
    rows, enc = fitted
    t = rows.slice(0, 4)
    t = t.set_column(t.schema.get_field_index("employment_status"), "employment_status",
                     pa.array(["astronaut", None, "employed", "employed"]))
    t = t.set_column(t.schema.get_field_index("annual_income"), "annual_income", pa.array([1e12, -5e9, float(np.median(rows.column("annual_income"))), None]))
    t = t.set_column(t.schema.get_field_index("products_held"), "products_held",
                     pa.array([["NEW-THING"], [], None, [PRODUCTS[0]]], pa.list_(pa.string())))
    out, counts = run(t, enc, cfg, tiny_backbone)
    cats = np.stack(out.column("categorical").to_numpy(zero_copy_only=False))
    j = [v.name for v in enc.categorical].index("employment_status")
    assert cats[0, j] == UNSEEN and cats[1, j] == NULL and cats[2, j] >= 2
    assert counts.unseen["employment_status"] == 1 and counts.unseen["products_held"] == 1
    num = np.stack(out.column("numeric").to_numpy(zero_copy_only=False))
    k = [n.name for n in enc.numeric].index("annual_income")
    spec = enc.numeric[k]
    assert num[0, k] == pytest.approx(spec.high) and num[1, k] == pytest.approx(spec.low) and np.isnan(num[3, k])
    assert counts.out_of_range["annual_income"] == 2
    items = out.column("list_items").to_pylist()
    assert items[0] == [LIST_UNSEEN] and items[1] == [LIST_EMPTY] and items[2] == [LIST_NULL] and items[3][0] >= 3
    assert "employment_status 1" in counts.summary() and "astronaut" not in counts.summary()


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


def test_text_is_scrubbed_labelled_and_cut_at_its_budget(fitted, cfg, tiny_backbone):
    _, enc = fitted
    t, _ = synth.generate(3, DATE, 1, ["A"])
    t = t.set_column(t.schema.get_field_index("interaction_notes"), "interaction_notes",
                     pa.array(["mail a.b@c.com now", "a " * 200, "   "]))
    out, counts = run(t, enc, cfg, tiny_backbone)
    decoded = tokenizer_for(tiny_backbone).decode_batch(out.column("text_ids").to_pylist())
    assert decoded[0].startswith("notes : mail [ email ] now")
    assert decoded[2].startswith("notes : none")
    budget = next(x.max_tokens for x in enc.text)
    assert len(out.column("text_ids")[1]) == budget + len(enc.sep_ids)
    assert counts.truncated == {"interaction_notes": 1}
    assert out.column("text_cut").to_pylist() == [[0], [1], [0]]
    fields = out.column("text_field").to_pylist()[0]
    assert set(fields) == {enc.fields.index("interaction_notes"), -1}


def test_a_text_budget_that_cannot_fit_fails_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="interaction_notes"):
        load_config(LOCAL_CONFIG, ["model.max_length=40"])
    with pytest.raises(ConfigError, match="structured features"):
        load_config(LOCAL_CONFIG, ["model.max_length=10"])


def test_every_column_of_a_120_column_table_changes_the_model_input(tiny_backbone):
    table, feats = wide_table(300, 0)
    cfg = wide_config(tiny_backbone, feats)
    enc = fitted_encoders(cfg, tiny_backbone, table)
    assert len(enc.structured) == 119 and len(enc.text) == 1
    base, _ = run(table, enc, cfg, tiny_backbone)
    shuffled = np.random.default_rng(1).permutation(table.num_rows)
    for f in feats:
        i = table.schema.get_field_index(f["name"])
        changed, _ = run(table.set_column(i, f["name"], table.column(f["name"]).take(shuffled)), enc, cfg, tiny_backbone)
        assert not changed.equals(base), f"column {f['name']} does not reach the model input"
