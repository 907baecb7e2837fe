import subprocess
import sys

import pytest
import yaml

from conftest import LOCAL_CONFIG, REPO
from nightscore.config import ConfigError, apply_overrides, load_config


def write(tmp_path, data) -> str:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.fixture()
def raw():
    return yaml.safe_load(LOCAL_CONFIG.read_text())


def test_local_config_loads():
    cfg = load_config(LOCAL_CONFIG)
    assert cfg.schema.id == "customer_id"
    assert "email" in cfg.schema.pii
    assert len(cfg.digest()) == 64


def test_unknown_key_names_path_and_file(tmp_path, raw):
    raw["train"]["epochz"] = 3
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key") as e:
        load_config(path)
    assert path in str(e.value)


def test_wrong_type_names_path(tmp_path, raw):
    raw["score"]["batch_size"] = "big"
    with pytest.raises(ConfigError, match=r"score\.batch_size"):
        load_config(write(tmp_path, raw))


def test_nested_feature_error_names_index(tmp_path, raw):
    raw["schema"]["features"][0]["kind"] = "number"
    with pytest.raises(ConfigError, match=r"schema\.features\.0\.kind"):
        load_config(write(tmp_path, raw))


def test_missing_required_key(tmp_path, raw):
    del raw["schema"]["id"]
    with pytest.raises(ConfigError, match=r"schema\.id: required key is missing"):
        load_config(write(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_semantic_checks(tmp_path, raw):
    raw["schema"]["pii"].append("age")
    with pytest.raises(ConfigError, match="PII columns cannot be features"):
        load_config(write(tmp_path, raw))


def test_overrides():
    cfg = load_config(LOCAL_CONFIG, ["train.epochs=7", "train.zero_stage=3", "products.top_k=2", "ray.address=auto"])
    assert (cfg.train.epochs, cfg.train.zero_stage, cfg.products.top_k, cfg.ray.address) == (7, 3, 2, "auto")
    assert apply_overrides({}, ["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(LOCAL_CONFIG, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(LOCAL_CONFIG, ["train.epochs=abc"])


@pytest.mark.parametrize("job", ["make_snapshots.py"])
def test_job_exits_2_on_bad_config(job, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs" / job), "--config", str(LOCAL_CONFIG), "--out", str(tmp_path),
                        "--date", "2026-11-23", "--customers", "10", "train.nope=1"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "train.nope: unknown key" in r.stderr


def test_compile_auto_follows_rows_per_model_copy(tmp_path, raw):
    from nightscore.config import COMPILE_MIN_ROWS

    score = load_config(LOCAL_CONFIG).score
    assert score.compile == "auto"
    assert score.compiles(COMPILE_MIN_ROWS - 1) == "cached" and score.compiles(COMPILE_MIN_ROWS) is True
    assert load_config(LOCAL_CONFIG, ["score.compile=false"]).score.compiles(10**9) is False
    assert load_config(LOCAL_CONFIG, ["score.compile=true"]).score.compiles(1) is True
    assert load_config(LOCAL_CONFIG, ["score.gpus_per_actor=1"]).score.compiles(10**9) is False  # measured on CPU only
    raw["score"]["compile"] = "sometimes"
    with pytest.raises(ConfigError, match=r"score\.compile"):
        load_config(write(tmp_path, raw))
