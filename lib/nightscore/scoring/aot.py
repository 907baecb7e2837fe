"""The compiled model as an AOTInductor package: built once per model, machine and thread count,
then loaded by every later actor in a fraction of a second.

A JIT torch.compile costs each actor ~12 s on every run (Inductor cannot cache a graph that holds
oneDNN-prepacked weights). The package holds prepacked oneDNN linears, fused layer norms and GELUs,
and attention as batched matmuls (see bmm_attention), so a nightly run pays the compilation on its
first night on a node only. The package is built here, from the verified model, into a cache
folder only this user can write (the package is native code the actors load); its file's sha256
is recorded beside it and checked before every load.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model.store import LoadedModel, cache_root, check_private, private_dir, sha256_file
from . import torch_private as private
from .kernels import swap_linears

FORMAT = 3  # bump when what a package holds changes
HEADS = ("default_logit", "product_logits")
UNUSED_DAYS = 14  # a package no run has loaded for this long is removed when another is built


class LowPrecisionLinear(nn.Module):
    """A linear layer holding its weights in bf16 and casting its input to it: what bf16 autocast
    does to an nn.Linear (the same outputs bit for bit), but with the cast weights as constants an
    exported graph can prepack."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.dtype), self.weight, self.bias)


ATTENTION = "nightscore_bmm"  # the attention a package's backbone is exported with


def bmm_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs) -> tuple[torch.Tensor, None]:
    """Attention for inference on a CPU as three steps Inductor compiles well: scores by baddbmm
    (the additive mask folded into the GEMM), softmax in fp32, then bmm with the values.

    PyTorch's CPU flash kernel is slow at a small model's shapes (few tokens, head dimension 32);
    compiled, these three steps run about twice as fast, with the same outputs to bf16 rounding.
    A Hugging Face attention function:
    (batch, heads, tokens, head dim) in, (batch, tokens, heads, head dim) out.
    """
    b, h, q, d = query.shape
    if key.shape[1] != h:  # grouped-query attention: each key/value head serves several query heads
        key, value = (t.repeat_interleave(h // t.shape[1], dim=1) for t in (key, value))
    kv = key.shape[2]
    q3, k3 = query.reshape(b * h, q, d), key.reshape(b * h, kv, d).transpose(1, 2)
    scale = d**-0.5 if scaling is None else scaling
    if attention_mask is None:
        scores = torch.bmm(q3, k3) * scale
    else:
        bias = attention_mask.to(query.dtype).expand(b, h, q, kv).reshape(b * h, q, kv)
        scores = torch.baddbmm(bias, q3, k3, alpha=scale)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype)
    out = torch.bmm(probs, value.reshape(b * h, kv, d)).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Make ATTENTION a Hugging Face attention implementation (process-wide, idempotent): done by
    package_form, the one place that names it, so importing this module changes nothing."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, bmm_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)  # the additive float mask bmm_attention adds


class _Heads(nn.Module):
    """Backbone and heads on input embeddings (CreditModel.encode), the output dict as a tuple in
    HEADS order (an exported graph's outputs). Feature tokens and wide terms stay eager."""

    def __init__(self, model: nn.Module, heads: list[str]):
        super().__init__()
        self.model, self.heads = model, heads

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.encode(inputs_embeds, attention_mask)
        return tuple(out[h] for h in self.heads)


def heads_of(loaded: LoadedModel) -> list[str]:
    return [h for h, present in zip(HEADS, (loaded.meta["default_head"], bool(loaded.meta["product_ids"]))) if present]


def package_dir(loaded: LoadedModel, dtype: torch.dtype | None, cache: str) -> Path:
    """Where this model's package for this machine, precision and thread count lives."""
    key = "|".join(map(str, (FORMAT, loaded.meta["weights_sha256"], torch.__version__,
                             torch.backends.cpu.get_cpu_capability(), dtype, torch.get_num_threads())))
    return Path(cache) / f"{loaded.version}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def package_form(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """A copy of the model as a package computes it: backbone linears in `dtype` (heads in fp32,
    as under autocast), attention by bmm_attention where the backbone takes Hugging Face's
    attention functions. The original is left as it was."""
    register_attention()
    model = copy.deepcopy(model).eval().requires_grad_(False)
    model.backbone.config._attn_implementation = ATTENTION  # the copy's config only
    if dtype is not None:
        swap_linears(model.backbone, lambda layer: LowPrecisionLinear(layer, dtype))
    return model


def build(loaded: LoadedModel, dtype: torch.dtype | None, rows: int, length: int, target: Path) -> None:
    """Export the model in its package form with dynamic rows and length, compile it with frozen
    weights, and publish it at `target` atomically."""
    model = package_form(loaded.model, dtype)
    hidden = model.backbone.config.hidden_size
    example = (torch.ones(rows, length, hidden), torch.ones(rows, length, dtype=torch.long))
    dims = {0: torch.export.Dim("rows", min=1, max=1 << 16), 1: torch.export.Dim("length", min=2, max=length)}
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    try:
        with torch.no_grad():  # Inductor freezes (and so prepacks) weights in inference graphs only
            program = torch.export.export(_Heads(model, heads_of(loaded)), example, dynamic_shapes=(dims, dims))
            private.aoti_compile(program, str(staging / "model.pt2"))
        with zipfile.ZipFile(staging / "model.pt2") as archive:
            (so,) = [n for n in archive.namelist() if n.endswith(".so")]
            with archive.open(so) as src, open(staging / "model.so", "wb") as dst:
                shutil.copyfileobj(src, dst)
        (staging / "model.pt2").unlink()
        (staging / "package.json").write_text(json.dumps({"model_version": loaded.version,
                                                          "model.so": sha256_file(staging / "model.so")}))
        try:
            os.rename(staging, target)
        except OSError:  # another actor published it first
            if not (target / "package.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(target: Path, heads: list[str]) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """The package's forward, after checking it and its cache are private folders (check_private)
    and its file against the recorded sha256. Its weights are copied once more into 64-byte-aligned
    memory (realign_constants); where that API is missing it runs on the runtime's own copy."""
    for folder in (target.parent, target):
        check_private(folder)
    record = json.loads((target / "package.json").read_text())
    if sha256_file(target / "model.so") != record["model.so"]:
        raise ValueError(f"{target / 'model.so'} does not match its recorded sha256")
    runner = private.aoti_runner(str(target / "model.so"))
    try:
        aligned = private.realign_constants(runner)
    except private.Unavailable:
        aligned = {}

    def forward(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(heads, runner.run([inputs_embeds.contiguous(), attention_mask.contiguous()])))

    forward.constants = aligned  # the runtime uses this memory: keep it alive with the runner
    return forward


def cache_folder(cache: str | None) -> Path:
    """Where compiled packages live: score.compiled_cache, by default <cache_root>/compiled."""
    return Path(cache).expanduser() if cache else cache_root() / "compiled"


def compiled_forward(loaded: LoadedModel, dtype: torch.dtype | None, rows: int, length: int,
                     cache: str | None = None, build_missing: bool = True,
                     ) -> tuple[Callable[..., dict[str, torch.Tensor]] | None, bool]:
    """The model's compiled forward from the cache (default: <cache_root>/compiled), built first if
    missing or damaged (else None). Returns (forward, whether it was built now). A cache folder
    other users can write is refused (ModelError)."""
    folder = cache_folder(cache)
    target = package_dir(loaded, dtype, str(folder))
    if (target / "package.json").exists():
        try:
            forward = load(target, heads_of(loaded))
            os.utime(target / "package.json")  # last used: what prune goes by
            return forward, False
        except (ValueError, RuntimeError, OSError) as err:
            print(f"[score] compiled package {target.name} unusable ({err}); "
                  f"{'rebuilding' if build_missing else 'removed'}", flush=True)
            shutil.rmtree(target, ignore_errors=True)
    if not build_missing:
        return None, False
    for name in prune(private_dir(folder)):
        print(f"[score] removed compiled package {name}: unused for {UNUSED_DAYS} days", flush=True)
    build(loaded, dtype, rows, length, target)
    return load(target, heads_of(loaded)), True


def prune(cache: Path, days: float = UNUSED_DAYS) -> list[str]:
    """Remove the packages no run has loaded for `days` (~70 MB each for MiniLM: a model
    retrained weekly would otherwise leave one per week on every node), and builds left
    half-done by a crashed process. Returns the names removed."""
    if not cache.is_dir():
        return []
    cutoff = time.time() - days * 86400
    removed = []
    for entry in cache.iterdir():
        used = entry / "package.json" if not entry.name.startswith(".") else entry
        if entry.is_dir() and (not used.exists() or used.stat().st_mtime < cutoff):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed

