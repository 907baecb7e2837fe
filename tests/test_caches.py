"""Private caches and pinned models: an S3 model is downloaded whole and verified (and healed
when its cached copy is damaged), compiled packages are loaded only from folders no other user
can write, and the approved-model pointer pins the model's manifest."""
import json
import multiprocessing
import os
import re
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from conftest import LOCAL_CONFIG, REPO
from nightscore import storage
from nightscore.config import load_config
from nightscore.model import store
from nightscore.nightly import model_uri
from nightscore.promotion import promote


def model_dir(root: Path, seed: int = 0) -> Path:
    """A directory with a model's layout and manifest (fetching verifies files, it loads none)."""
    (root / "backbone").mkdir(parents=True)
    data = bytes((seed + i) % 251 for i in range(3_000_000))
    (root / "backbone" / "model.safetensors").write_bytes(data)
    (root / "heads.safetensors").write_bytes(data[:5000])
    (root / "model.json").write_text(json.dumps({"version": f"v{seed}"}))
    store.write_manifest(root, {"version": f"v{seed}"})
    return root


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture()
def s3_model(s3_bucket, tmp_path, monkeypatch) -> str:
    """A model directory on the moto S3 server, and this test's own private cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = f"s3://{s3_bucket}/models/m"
    store.upload_dir(model_dir(tmp_path / "m"), uri)
    return uri


def models_cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "nightscore" / "models"


def test_concurrent_fetches_on_a_node_make_one_verified_copy(s3_model, tmp_path):
    """Actors on one node fetch the same model at once: one copy, complete, in a private folder."""
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = set(pool.map(store.fetch, [s3_model] * 4))
    cache = models_cache(tmp_path)
    assert paths == {cache / store.manifest_sha256(s3_model)}
    assert [p.name for p in cache.iterdir()] == [store.manifest_sha256(s3_model)]  # no staging left behind
    store.verify(paths.pop())
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_a_crashed_download_is_healed_on_the_next_fetch(s3_model, tmp_path, capsys):
    """What a crash mid-download left in a cache entry (the manifest beside a truncated file) is
    removed and downloaded again, as is a staging folder the crashed process left."""
    local = models_cache(tmp_path) / store.manifest_sha256(s3_model)
    local.mkdir(parents=True)
    shutil.copy(tmp_path / "m" / "manifest.json", local / "manifest.json")
    (local / "heads.safetensors").write_bytes((tmp_path / "m" / "heads.safetensors").read_bytes()[:100])
    (local.parent / f".{local.name}.crashed").mkdir()
    assert store.fetch(s3_model) == local
    assert "cached copy failed verification, downloading it again" in capsys.readouterr().out
    store.verify(local)
    assert [p.name for p in local.parent.iterdir()] == [local.name]


def test_a_copy_that_fails_verification_twice_fails_with_a_clear_message(s3_model, tmp_path):
    """A damaged cached copy is fetched again once; when that copy fails too (the S3 directory
    itself no longer matches its manifest), the run stops naming the model and the file."""
    local = store.fetch(s3_model)
    flip_last_byte(local / "heads.safetensors")
    fs, root = storage.filesystem(s3_model)
    flip_last_byte(tmp_path / "m" / "heads.safetensors")
    with fs.open_output_stream(f"{root}/heads.safetensors") as out:
        out.write((tmp_path / "m" / "heads.safetensors").read_bytes())
    problem = re.escape(f"{s3_model} (copy in {local}): sha256 of heads.safetensors does not match")
    with pytest.raises(store.ModelError, match=problem + ".*downloaded just now.*restore or re-export"):
        store.fetch(s3_model)
    assert list(local.parent.iterdir()) == []  # neither copy is left to be used


def test_an_s3_backbone_is_downloaded_once_into_the_private_cache(s3_model, tmp_path):
    """Backbones are cached by URI, whole: the copy is complete and a later call reuses it."""
    local = Path(store.resolve_backbone(s3_model))
    assert local.parent == tmp_path / "cache" / "nightscore" / "backbones"
    store.verify(local)
    (local / "marker").write_text("")
    assert Path(store.resolve_backbone(s3_model)) == local and (local / "marker").exists()


def test_caches_refuse_folders_other_users_can_write(s3_model, tmp_path):
    cache = models_cache(tmp_path)
    cache.mkdir(parents=True)
    cache.chmod(0o775)
    with pytest.raises(store.ModelError, match=f"{cache} can be written by other users"):
        store.fetch(s3_model)


def test_the_model_pointer_pins_the_manifest(s3_model, s3_bucket, tmp_path):
    """The pointer names the model and its manifest's sha256; an unpinned (plain-URI) pointer and
    a model changed after it was pinned both stop the nightly job (exit 1) before it scores."""
    pointer = f"s3://{s3_bucket}/models/APPROVED"
    promote(pointer, s3_model, "approved for the test", override=True)
    fs, path = storage.filesystem(pointer)
    assert storage.read_json(fs, path) == {"model": s3_model, "manifest_sha256": store.manifest_sha256(s3_model)}
    cfg = load_config(LOCAL_CONFIG, [f"nightly.model_pointer={pointer}", "nightly.model=null"])
    assert model_uri(cfg.nightly, cfg) == s3_model

    with fs.open_output_stream(path) as out:
        out.write(f"{s3_model}\n".encode())
    with pytest.raises(store.ModelError, match=f"model pointer {pointer} is not a pinned pointer.*jobs/promote.py"):
        model_uri(cfg.nightly, cfg)

    promote(pointer, s3_model, "approved for the test", override=True)
    store.upload_dir(model_dir(tmp_path / "other", seed=1), s3_model)  # replaced after approval
    with pytest.raises(store.ModelError, match=f"model pointer {pointer}: the manifest.json of {s3_model} does "
                                               "not have the sha256 the pointer pins"):
        model_uri(cfg.nightly, cfg)
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "nightly.py"), "--date", "2026-11-20",
                        f"nightly.model_pointer={pointer}", "nightly.model=null",
                        f"nightly.snapshots={tmp_path}/snap", f"nightly.output={tmp_path}/scores",
                        f"nightly.reports={tmp_path}/reports"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "does not have the sha256 the pointer pins" in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr and not (tmp_path / "scores").exists()


@pytest.mark.slow
def test_compiled_packages_are_private_and_a_tampered_one_is_rebuilt(tiny_model_dir, fp32_package, tmp_path,
                                                                    monkeypatch, capsys):
    """Packages are native code: they are built in this user's private cache, a package or cache
    folder others can write is refused, and a package whose file no longer matches its recorded
    sha256 is rebuilt, never loaded."""
    from nightscore.scoring import aot

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "nightscore" / "compiled"
    shutil.copytree(fp32_package, cache)  # a package this user built earlier, as built
    loaded = store.load(tiny_model_dir)
    length = loaded.config.model.max_length
    target = aot.package_dir(loaded, None, str(cache))
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in (cache, target)} == {0o700}
    _, built = aot.compiled_forward(loaded, None, 16, length)
    assert not built  # loaded, not built again

    target.chmod(0o770)
    with pytest.raises(store.ModelError, match=f"{target} can be written by other users"):
        aot.compiled_forward(loaded, None, 16, length)
    target.chmod(0o700)

    with open(target / "model.so", "r+b") as f:  # in place, as the loaded copy's mapping allows
        f.seek(100)
        f.write(b"\0" * 8)
    tampered = (target / "model.so").read_bytes()
    _, built = aot.compiled_forward(loaded, None, 16, length)
    assert built and "does not match its recorded sha256); rebuilding" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700  # the rebuilt package, private too
    record = json.loads((target / "package.json").read_text())
    assert (target / "model.so").read_bytes() != tampered
    assert store.sha256_file(target / "model.so") == record["model.so"]

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(store.ModelError, match=f"{shared} can be written by other users"):
        aot.compiled_forward(loaded, None, 16, length, str(shared))
