"""The model directory loader: hashes verified, pickles refused, manifest required."""
import shutil

import pytest

from nightscore.model import store


def test_tampered_model_is_refused(tiny_model_dir, tmp_path):
    good = tiny_model_dir
    store.load(good)

    bad = tmp_path / "tampered"
    shutil.copytree(good, bad)
    data = bytearray((bad / "heads.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "heads.safetensors").write_bytes(bytes(data))
    with pytest.raises(store.ModelError, match="sha256 of heads.safetensors does not match"):
        store.load(str(bad))

    pickled = tmp_path / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "backbone" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(store.ModelError, match="pickle-format files are not loaded"):
        store.load(str(pickled))

    (bad / "manifest.json").unlink()
    with pytest.raises(store.ModelError, match="no manifest.json"):
        store.load(str(bad))


def test_a_text_era_model_fails_with_retrain_not_a_traceback(tiny_model_dir, tmp_path):
    """Model directories of format 1 (rows as spelled-out text) cannot be read as feature tokens:
    loading says so, and the score job exits 1 with that one line."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    meta = json.loads((old / "model.json").read_text())
    meta.pop("input_format")
    (old / "model.json").write_text(json.dumps(meta))
    (old / "encoders.json").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["files"].pop("encoders.json")
    manifest["files"]["model.json"] = store.sha256_file(old / "model.json")
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(store.ModelError, match="model format 1; .* retrain"):
        store.load(str(old))
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "score.py"), "--input", str(tmp_path / "none"),
                           "--model", str(old), "--output", str(tmp_path / "out"), "--date", "2026-11-23"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "model format 1" in proc.stderr and "Traceback" not in proc.stderr
