import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import LOCAL_CONFIG
from nightscore import synth
from nightscore.config import load_config
from nightscore.schema import default_label, required_columns
from nightscore.storage import filesystem
from nightscore.validate import REASON, InputFileError, conform, preflight, split

DATE = dt.date(2026, 11, 23)
CFG = load_config(LOCAL_CONFIG)
SCHEMA = CFG.schema


@pytest.fixture(scope="module")
def clean():
    table, _ = synth.generate(2000, DATE, 3, synth.catalog_product_ids("builtin:catalog.yaml"), labels=True)
    return table


def one_bad(clean, column, value):
    """A copy of `clean` with row 7's `column` replaced by `value`."""
    col = clean.column(column).to_pylist()
    col[7] = value
    return clean.set_column(clean.schema.get_field_index(column), column, pa.array(col, clean.schema.field(column).type))


def test_clean_snapshot_passes_unchanged(clean):
    s = split(conform(clean, SCHEMA, "mem", with_labels=True), SCHEMA, DATE)
    assert s.quarantine.num_rows == 0
    assert s.valid.equals(clean)


@pytest.mark.parametrize("column,value,reason", [
    ("customer_id", None, "missing customer_id"),
    ("customer_id", "", "missing customer_id"),
    ("snapshot_date", dt.date(2026, 11, 20), "snapshot_date is not 2026-11-23"),
    ("snapshot_date", None, "missing snapshot_date"),
    ("age", None, "age is missing"),
    ("age", 150, "age above maximum 120"),
    ("annual_income", -1.0, "annual_income below minimum 0"),
    ("annual_income", float("nan"), "annual_income is missing"),
    ("annual_income", float("inf"), "annual_income is not a finite number"),
    ("annual_income", float("-inf"), "annual_income is not a finite number"),
    ("risk_tolerance", 0, "risk_tolerance below minimum 1"),
    ("employment_status", "astronaut", "employment_status has a value outside"),
    ("home_ownership", None, "home_ownership is missing"),
])
def test_each_bad_row_kind_is_quarantined_with_reason(clean, column, value, reason):
    bad = one_bad(clean, column, value)
    s = split(conform(bad, SCHEMA, "mem", with_labels=True), SCHEMA, DATE)
    assert s.valid.num_rows + s.quarantine.num_rows == bad.num_rows
    assert s.quarantine.num_rows == 1
    assert reason in s.quarantine.column(REASON)[0].as_py()


def test_nan_in_a_nullable_numeric_is_missing_not_bad(clean):
    """Parquet written from pandas marks a missing float as NaN: in a nullable feature the row is
    kept, with the value null (the model's null state), as Arrow's own nulls are."""
    bad = one_bad(clean, "employment_years", float("nan"))
    s = split(conform(bad, SCHEMA, "mem", with_labels=True), SCHEMA, DATE)
    assert s.quarantine.num_rows == 0
    assert s.valid.column("employment_years")[7].as_py() is None
    assert s.valid.column("employment_years").null_count == bad.column("employment_years").null_count + 1
    # an integer column with gaps, as pandas writes it: float64 with NaN; still read as whole numbers
    months = pc.cast(clean.column("months_since_last_delinquency"), pa.float64()).to_pylist()
    months[7] = float("nan")
    gaps = clean.set_column(clean.schema.get_field_index("months_since_last_delinquency"),
                            "months_since_last_delinquency", pa.array(months, pa.float64()))
    s = split(conform(gaps, SCHEMA, "mem", with_labels=True), SCHEMA, DATE)
    got = s.valid.column("months_since_last_delinquency")
    assert s.quarantine.num_rows == 0 and got.type == pa.int64() and got[7].as_py() is None
    assert got.null_count == sum(m is None or m != m for m in months)  # every null and every NaN


def test_types_other_writers_use_read_as_the_configured_ones(clean, tmp_path):
    """Narrow and unsigned integers, decimals, dictionary-encoded and large strings, a 0/1 integer
    label (pandas, Spark and warehouse exports): read through Parquet, the same rows as the
    snapshot written with the configured types, nothing quarantined."""
    recast = {"age": pa.int8(), "tenure_months": pa.uint16(), "n_open_accounts": pa.int32(),
              "annual_income": pa.decimal128(16, 2), "home_ownership": pa.large_string(),
              "interaction_notes": pa.large_string(), "products_held": pa.list_(pa.large_string()),
              "default_12m": pa.int64()}
    reference = clean.set_column(clean.schema.get_field_index("annual_income"), "annual_income",
                                 pc.round(clean.column("annual_income"), 2))
    other = reference
    for name, typ in recast.items():
        other = other.set_column(other.schema.get_field_index(name), name, pc.cast(other.column(name), typ))
    i = other.schema.get_field_index("employment_status")
    other = other.set_column(i, "employment_status", other.column(i).dictionary_encode())
    pq.write_table(other, tmp_path / "other.parquet")
    read = pq.read_table(tmp_path / "other.parquet")
    assert read.schema.field("employment_status").type == pa.dictionary(pa.int32(), pa.string())
    got = split(conform(read, SCHEMA, "other.parquet", with_labels=True), SCHEMA, DATE)
    want = conform(reference, SCHEMA, "mem", with_labels=True)
    assert got.quarantine.num_rows == 0
    columns = list(required_columns(SCHEMA, with_labels=True))
    assert got.valid.select(columns).equals(want.select(columns))


@pytest.mark.parametrize("typ", [pa.int64(), pa.float64()])
def test_a_label_coded_otherwise_than_0_1_or_true_false_fails_the_file(clean, typ):
    """Arrow casts any non-zero number to true; a label coded 0/1/2 (2: indeterminate) must not
    silently count its 2s as defaults."""
    coded = pc.cast(pc.cast(clean.column("default_12m"), pa.int64()), typ).to_pylist()
    coded[7] = 2
    bad = clean.set_column(clean.schema.get_field_index("default_12m"), "default_12m", pa.array(coded, typ))
    with pytest.raises(InputFileError, match=r"part-2.parquet: column 'default_12m' .* other than 0 and 1.* row 7 .*"
                                             r"schema.labels.default_values"):
        conform(bad, SCHEMA, "part-2.parquet", with_labels=True)
    yes_no = ["Y" if v else "N" for v in clean.column("default_12m").to_pylist()]
    text = clean.set_column(clean.schema.get_field_index("default_12m"), "default_12m", pa.array(yes_no))
    with pytest.raises(InputFileError, match=r"column 'default_12m' has type string, which cannot be read as bool: "
                                             r"row 0 .*schema.labels.default_values"):
        conform(text, SCHEMA, "part-2.parquet", with_labels=True)
    coded[7] = None  # an unknown outcome stays allowed
    ok = conform(clean.set_column(clean.schema.get_field_index("default_12m"), "default_12m", pa.array(coded, typ)),
                 SCHEMA, "part-2.parquet", with_labels=True)
    assert ok.column("default_12m")[7].as_py() is None and ok.column("default_12m")[0].as_py() in (True, False)


def test_duplicates_and_multiple_reasons(clean):
    ids = clean.column("customer_id").to_pylist()
    ids[5] = ids[6]
    bad = one_bad(clean.set_column(0, "customer_id", pa.array(ids)), "age", 200)
    s = split(conform(bad, SCHEMA, "mem"), SCHEMA, DATE)
    reasons = s.quarantine.column(REASON).to_pylist()
    assert s.quarantine.num_rows == 3  # both copies of the duplicate, and the bad age
    assert sum("duplicate customer_id" in r for r in reasons) == 2
    assert s.valid.num_rows + s.quarantine.num_rows == bad.num_rows


def test_cross_file_duplicates_via_preflight(clean, tmp_path):
    a, b = clean.slice(0, 1000), clean.slice(900, 1100)  # 100 ids in both files
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")
    fs, _ = filesystem(str(tmp_path))
    dups = preflight(fs, [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], SCHEMA)
    assert len(dups) == 100
    s = split(conform(a, SCHEMA, "a"), SCHEMA, DATE, dups)
    assert s.quarantine.num_rows == 100


def test_quarantine_carries_no_pii(clean):
    bad = one_bad(clean, "age", 999)
    notes = bad.column("interaction_notes").to_pylist()
    notes[7] = "call me on 07700 900123 or mail jo@example.com"
    bad = bad.set_column(bad.schema.get_field_index("interaction_notes"), "interaction_notes", pa.array(notes))
    q = split(conform(bad, SCHEMA, "mem"), SCHEMA, DATE).quarantine
    assert not set(SCHEMA.pii) & set(q.column_names)
    assert q.column("interaction_notes")[0].as_py() == "call me on [phone] or mail [email]"


def test_corrupted_snapshot_invariant(clean):
    bad = synth.corrupt(clean, SCHEMA, 0.05, seed=1)
    s = split(conform(bad, SCHEMA, "mem", with_labels=True), SCHEMA, DATE)
    assert s.valid.num_rows + s.quarantine.num_rows == bad.num_rows
    assert 0.03 < s.quarantine.num_rows / bad.num_rows < 0.08
    assert pc.all(pc.greater(pc.utf8_length(s.quarantine.column(REASON)), 0)).as_py()


def test_whole_file_failures_name_file_and_column(clean, tmp_path):
    with pytest.raises(InputFileError, match=r"part-1\.parquet: missing required column\(s\) age"):
        conform(clean.drop_columns(["age"]), SCHEMA, "part-1.parquet")
    text_age = clean.set_column(clean.schema.get_field_index("age"), "age",
                                pa.array(["old"] * clean.num_rows))
    with pytest.raises(InputFileError, match=r"column 'age' has type string"):
        conform(text_age, SCHEMA, "f")
    # castable types are accepted: int32 ages, numeric strings
    as_int32 = clean.set_column(clean.schema.get_field_index("age"), "age", pc.cast(clean.column("age"), pa.int32()))
    assert conform(as_int32, SCHEMA, "f").schema.field("age").type == pa.int64()

    fs, _ = filesystem(str(tmp_path))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(InputFileError, match="broken.parquet: unreadable Parquet file"):
        preflight(fs, [str(broken)], SCHEMA)
    pq.write_table(text_age, tmp_path / "text_age.parquet")
    with pytest.raises(InputFileError, match=r"text_age.parquet: column 'age'"):
        preflight(fs, [str(tmp_path / "text_age.parquet")], SCHEMA)
    pq.write_table(clean.drop_columns(["region"]), tmp_path / "no_region.parquet")
    with pytest.raises(InputFileError, match="no_region.parquet: missing required column"):
        preflight(fs, [str(tmp_path / "no_region.parquet")], SCHEMA)
    with pytest.raises(InputFileError, match="no Parquet files"):
        preflight(fs, [], SCHEMA)


@pytest.mark.parametrize("column,secret,typ", [("age", "SECRET-123", pa.string()), ("tenure_months", 12.123, None),
                                               ("annual_income", "SECRET-123", pa.string())])
def test_whole_file_errors_name_file_column_and_row_never_the_value(clean, tmp_path, column, secret, typ):
    """Arrow's cast error quotes the offending cell; ours names where it is (row 7), never what."""
    values = [str(v) for v in clean.column(column).to_pylist()] if typ == pa.string() \
        else pc.cast(clean.column(column), pa.float64()).to_pylist()
    values[7] = secret
    bad = clean.set_column(clean.schema.get_field_index(column), column, pa.array(values, typ))
    with pytest.raises(pa.ArrowInvalid, match=str(secret)):  # what the message would say unguarded
        pc.cast(bad.column(column), clean.schema.field(column).type)
    pq.write_table(bad, tmp_path / "part-3.parquet")
    fs, _ = filesystem(str(tmp_path))
    for raise_it in (lambda: conform(bad, SCHEMA, "part-3.parquet"),
                     lambda: preflight(fs, [str(tmp_path / "part-3.parquet")], SCHEMA)):
        with pytest.raises(InputFileError) as err:
            raise_it()
        message = str(err.value)
        assert "part-3.parquet" in message and f"column {column!r}" in message and "row 7 " in message
        assert str(secret) not in message
        assert err.value.__suppress_context__  # nor in a chained traceback


def test_quarantine_reasons_never_quote_the_value(clean):
    bad = one_bad(one_bad(clean, "employment_status", "SECRET-123"), "age", 123_456)
    reasons = split(conform(bad, SCHEMA, "mem"), SCHEMA, DATE).quarantine.column(REASON).to_pylist()
    assert len(reasons) == 1 and "employment_status" in reasons[0] and "age" in reasons[0]
    assert "SECRET-123" not in reasons[0] and "123456" not in reasons[0] and "123,456" not in reasons[0]


@pytest.mark.parametrize("values,column,typ", [(["bad"], ["good", "bad", None, "bad"], pa.string()),
                                              ([2], [1, 2, None, 2], pa.int64())])
def test_a_label_coded_as_text_or_numbers_reads_through_default_values(clean, values, column, typ):
    """`default_values` names the values that mean "defaulted": text, or a whole-number code written
    as a number in YAML (German credit's 1 good / 2 bad); anything else is not a default, null unknown."""
    cfg = load_config(LOCAL_CONFIG, [f"schema.labels.default_values={values}"])
    assert cfg.schema.labels.default_values == [str(v) for v in values]
    label = column * (clean.num_rows // 4) + column[:clean.num_rows % 4]
    table = clean.set_column(clean.schema.get_field_index("default_12m"), "default_12m", pa.array(label, typ))
    got = default_label(conform(table, cfg.schema, "mem", with_labels=True), cfg.schema).to_pylist()
    assert got[:4] == [False, True, None, True]
