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
