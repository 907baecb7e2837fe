import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nightscore import storage, synth
from nightscore.config import S3Spec


def test_local_roundtrip_and_listing(tmp_path):
    fs, root = storage.filesystem(str(tmp_path / "snap"))
    t = pa.table({"a": [1, 2, 3]})
    storage.write_parquet(t, fs, f"{root}/date=2026-11-23/part-0.parquet")
    storage.write_parquet(t, fs, f"{root}/_truth/date=2026-11-23/truth.parquet")
    files = storage.list_files(fs, root)
    assert files == [f"{root}/date=2026-11-23/part-0.parquet"]  # underscore folders are not data
    storage.write_json_atomic({"x": 1}, fs, f"{root}/_manifest.json")
    assert storage.read_json(fs, f"{root}/_manifest.json") == {"x": 1}
    assert not list((tmp_path / "snap").glob(".*.tmp"))
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.list_files(fs, f"{root}/nope")


def test_s3_parquet_roundtrip(s3_bucket):
    uri = f"s3://{s3_bucket}/snapshots"
    fs, root = storage.filesystem(uri)
    table, _ = synth.generate(300, dt.date(2026, 11, 23), 1, ["A", "B"])
    storage.write_parquet(table, fs, f"{root}/date=2026-11-23/part-00000.parquet")
    files = storage.list_files(fs, f"{root}/date=2026-11-23")
    assert len(files) == 1 and storage.to_uri(fs, files[0]).startswith("s3://")
    back = pq.read_table(files[0], filesystem=fs)
    assert back.equals(table)
    storage.write_json_atomic({"committed": True}, fs, f"{root}/date=2026-11-23/_manifest.json")
    assert storage.read_json(fs, f"{root}/date=2026-11-23/_manifest.json") == {"committed": True}
    storage.delete_dir(fs, f"{root}/date=2026-11-23")
    assert not storage.exists(fs, f"{root}/date=2026-11-23/_manifest.json")


def test_s3_options_from_config_and_environment(s3_server, monkeypatch):
    opts = storage.s3_options(S3Spec(endpoint_url="http://127.0.0.1:9999", region="eu-west-2"))
    assert opts == {"region": "eu-west-2", "endpoint_override": "127.0.0.1:9999", "scheme": "http"}
    assert storage.s3_options()["endpoint_override"] == s3_server.split("://")[1]
    # credentials are never part of what we build or could log
    assert "testing" not in repr(storage.s3_options())
