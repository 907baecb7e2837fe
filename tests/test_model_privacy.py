"""A model directory carries distributions, never customers: no row, id or PII value in any file,
and every group in its monitoring reference at least monitoring.min_group_size strong. (A model
trained end to end is scanned the same way in tests/test_training.py.)"""
import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import LOCAL_CONFIG
from nightscore import synth
from nightscore.config import load_config
from nightscore.model import store
from nightscore.nightly import model_reference
from test_monitoring import reference_counts

ROW_SUFFIXES = (".parquet", ".csv", ".arrow", ".feather", ".jsonl", ".avro", ".orc")
SYNTH_ID = re.compile(rb"C\d{9}")  # synth.generate's customer_id form


def assert_no_customer_rows(root: Path, rows: pa.Table, min_group_size: int) -> None:
    """Scan every file under `root` for the customers in `rows` (ids, emails, names) and row-level formats."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(ROW_SUFFIXES)]
    ids = set(rows.column("customer_id").drop_null().to_pylist())
    pii = {v for c in ("email", "full_name", "phone") for v in rows.column(c).drop_null().to_pylist()}
    for path in files:
        data = path.read_bytes()
        found = {m.decode() for m in SYNTH_ID.findall(data)} & ids
        assert not found, f"{path.relative_to(root)} holds customer ids {sorted(found)[:3]}"
        if not path.name.endswith(".safetensors"):  # text files: look for each value itself
            text = data.decode("utf-8", errors="replace")
            assert not [v for v in pii if v in text], f"{path.relative_to(root)} holds PII"
    reference = json.loads((root / store.REFERENCE_FILE).read_text())
    assert set(reference) == {"format", "rows", "min_group_size", "features", "pd", "pd_histogram", "credit_score"}
    assert reference["min_group_size"] == min_group_size
    counts = reference_counts(reference)
    assert counts and all(isinstance(c, int) and (c == 0 or c >= min_group_size) for c in counts)


def test_exported_model_directory_holds_no_customer_rows(tiny_model_dir):
    """conftest's model: exported by store.save with a reference built from 600 customers."""
    cfg = load_config(LOCAL_CONFIG)
    catalog = synth.catalog_product_ids(cfg.products.catalog)
    fit_rows, _ = synth.generate(2000, dt.date(2026, 9, 1), 98, catalog)
    ref_rows, _ = synth.generate(600, dt.date(2026, 10, 1), 99, catalog)
    for rows in (fit_rows, ref_rows):
        assert_no_customer_rows(Path(tiny_model_dir), rows, cfg.monitoring.min_group_size)


def test_a_model_with_raw_reference_rows_fails_with_retrain(tiny_model_dir, tmp_path):
    """Models exported before reference.json carry reference.parquet (raw validation rows): the
    nightly job does not read them, and says to retrain."""
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    (old / store.REFERENCE_FILE).unlink()
    pq.write_table(pa.table({"age": [30, 40], "pd_12m": [0.1, 0.2]}), old / "reference.parquet")
    manifest = json.loads((old / store.MANIFEST).read_text())
    store.write_manifest(old, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(store.ModelError, match=r"raw reference rows \(reference.parquet\).*retrain"):
        model_reference(str(old), load_config(LOCAL_CONFIG))
