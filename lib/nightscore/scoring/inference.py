"""In-process inference: one loaded model, length-bucketed batches, calibrated outputs.

Used by the Ray inference actor, by the evaluation job and by the benchmark's raw
in-process baseline, so all three measure and compute the same thing.
"""
from __future__ import annotations

import ctypes
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ..model import calibration
from ..model.features import null_inputs, text_lengths, to_tensors
from ..model.network import CreditModel
from ..model.store import LoadedModel, ModelError


@dataclass
class Predictions:
    pd: np.ndarray | None  # calibrated PD, or None for a product-only model
    propensity: np.ndarray | None  # (rows, model products), or None for a default-only model
    explained: np.ndarray | None = None  # bool per row: attributions computed
    contrib: np.ndarray | None = None  # (rows, fields): how much each field raised the default logit


def choose_dtype(precision: str, device: torch.device, model: torch.nn.Module,
                 sample: dict[str, torch.Tensor]) -> torch.dtype | None:
    """bf16 where asked, fp32 where asked; 'auto' takes bf16 on GPUs that have it, fp32 on CPUs
    without bf16 instructions, and otherwise measures both on this hardware and keeps the faster.

    CPUs without bf16 units run bf16 several times slower than fp32, and GPUs the other way
    round, so measuring beats guessing.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if not cpu_has_bf16():
        return None  # emulated bf16 runs ~100x slower; timing it would cost seconds per actor
    timings = {}
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), _autocast(device, dtype):
            model(sample)  # warm-up
            t0 = time.perf_counter()
            model(sample)
            timings[dtype] = time.perf_counter() - t0
    return min(timings, key=timings.get)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); unknown counts as yes."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check) or not any(checks)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def onednn_ready() -> bool:
    """Whether this torch build carries oneDNN's prepacked linear kernels (x86 and Arm CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _PackedLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b through oneDNN's prepacked kernel; the gradient flows to x only (reason
    codes differentiate the inputs, never the frozen weights)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(weight)
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None, None, None


class PackedLinear(nn.Module):
    """An nn.Linear whose weight is also kept in oneDNN's blocked layout, packed once at load.

    On AVX2 CPUs the prepacked oneDNN kernel beats MKL's fp32 GEMM at a small model's layer
    shapes, with the same outputs to ~1e-7.
    """

    def __init__(self, linear: nn.Linear, rows_hint: int):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous(),
                                                                               rows_hint), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PackedLinearFn.apply(x, self.packed, self.weight, self.bias)


def swap_linears(model: nn.Module, replace: Callable[[nn.Linear], nn.Module | None]) -> int:
    """Put replace(layer) in place of every plain nn.Linear it returns a module for; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and (new := replace(child)) is not None:
                setattr(parent, name, new)
                swapped += 1
    return swapped


def prepack(model: nn.Module, rows_hint: int) -> int:
    """Swap every fp32 nn.Linear of a CPU inference model for a PackedLinear; returns how many."""
    return swap_linears(model, lambda layer: PackedLinear(layer, rows_hint)
                        if layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu" else None)


HEAP_KEEP_BYTES = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit Linux


def keep_heap() -> bool:
    """Keep freed activation buffers in this process's heap instead of handing them back to
    the OS, so the next forward does not fault them in again. Returns whether it applied.

    glibc serves blocks over its mmap threshold with fresh pages and trims the heap's free top,
    so a forward can pay a page fault per 4 KiB of each large activation; with this, none. What
    it is worth depends on how the heap happens to lie. Blocks up to 32 MiB (a 32 x 128 x 1,536
    fp32 activation is 25 MiB) stay in the heap, which then holds its peak size: the RSS the run
    reached anyway. glibc only.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    int_max = 2**31 - 1  # mallopt takes a C int: never trim the heap's free top
    return bool(mallopt(m_mmap_threshold, HEAP_KEEP_BYTES)) and bool(mallopt(m_trim_threshold, int_max))


def spread(model: CreditModel, devices: list[torch.device]) -> CreditModel:
    """One model over several devices (its blocks in contiguous runs, see device_map): for an
    actor holding more GPUs than one, whose model does not fit on one. Inputs go to the first."""
    from accelerate import dispatch_model

    plan = model.device_map(len(devices))
    return dispatch_model(model, {name: devices[i] for name, i in plan.items()}, main_device=devices[0])


class Predictor:
    def __init__(self, loaded: LoadedModel, device: str | None = None, precision: str = "auto",
                 micro_batch: int = 32, threads: int | None = None, gpus: int = 1, onednn: bool = True,
                 compile: bool | Literal["cached"] = False, compiled_cache: str | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            keep_heap()
        self.loaded = loaded
        if self.device.type == "cuda" and gpus > 1:  # the GPUs Ray gave this actor are cuda:0..gpus-1
            self.model = spread(loaded.model.eval(), [torch.device("cuda", i) for i in range(gpus)])
        else:
            self.model = loaded.model.to(self.device).eval()
        self.model.requires_grad_(False)  # inference: attributions differentiate the inputs only
        self.micro_batch = micro_batch
        self.precision = precision
        self.onednn = onednn
        self.compile = compile
        self.compiled_cache = compiled_cache
        self.dtype: torch.dtype | None = None
        self.encode: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] = self.model.encode
        # the reason-code pass on a CPU runs plain attention: PyTorch's CPU flash-attention
        # backward is many times slower than its forward
        self.grad_attention: str | None = "eager" if self.device.type == "cpu" else None
        self._ready = False

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Feature tokens (eager: a few embedding lookups), then backbone and heads through
        `self.encode` (compiled where chosen), then the wide terms."""
        embeds, mask = self.model.embed(x)
        return self.model.add_wide(self.encode(embeds.float(), mask), x)

    def _prepare(self, sample: dict[str, torch.Tensor]) -> None:
        """On the first call: the precision (it may time both), then the kernels: backbone and heads
        compiled (on a CPU, the cached package; with compile="cached" only one already built), or
        else, for fp32 on a CPU, the oneDNN-prepacked linear layers."""
        if self._ready:
            return
        self.dtype = choose_dtype(self.precision, self.device, self.model, sample)
        self._ready = True
        cpu = self.device.type == "cpu"
        packaged = self._packaged(build=self.compile is True) if self.compile and cpu else None
        if packaged is not None:
            self.encode = packaged
        elif self.compile is True and not cpu and not hasattr(self.model, "hf_device_map"):
            self.encode = compiled(self.model.encode)  # a model spread over GPUs stays eager
        elif self.onednn and cpu and self.dtype is None and onednn_ready():
            prepack(self.model, self.micro_batch * 128)

    def _packaged(self, build: bool) -> Callable[..., dict[str, torch.Tensor]] | None:
        """The model's AOTInductor package from the cache, built there first if missing (a backbone
        that will not export is JIT-compiled instead); without `build`, None where there is none."""
        from . import aot

        started = time.perf_counter()
        try:
            forward, built = aot.compiled_forward(self.loaded, self.dtype, self.micro_batch,
                                                  self.loaded.config.model.max_length, self.compiled_cache,
                                                  build_missing=build)
        except ModelError:  # an unsafe cache folder: refuse, never fall back around a security check
            raise
        except Exception as err:  # export covers most, not all, Hugging Face backbones
            print(f"[score] no compiled package ({type(err).__name__}: {str(err)[:200]}); "
                  f"{'JIT-compiling' if build else 'eager'} instead", flush=True)
            return compiled(self.model.encode) if build else None
        if forward is None:
            print("[score] no compiled package for this model on this node: eager (a larger run, or "
                  "score.compile=true, builds one)", flush=True)
            return None
        print(f"[score] compiled package {'built' if built else 'loaded'} in {time.perf_counter() - started:.1f} s",
              flush=True)
        return forward

    def _batches(self, lengths: np.ndarray):
        """Row indices in micro-batches of similar text length (less padding, same results)."""
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(lengths), self.micro_batch):
            yield order[start:start + self.micro_batch]

    def _tensors(self, inputs: pa.Table, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in to_tensors(inputs, rows).items()}

    def predict(self, inputs: pa.Table, explain: Callable[[np.ndarray], np.ndarray] | None = None) -> Predictions:
        """Calibrated PD and product propensities for every encoded row (`encode.encode`).

        With `explain` (calibrated PDs -> rows to explain), the rows it picks also get per-feature
        attributions of the default logit (see _attributions): a second, eager forward and one
        backward pass over those rows alone.
        """
        n = inputs.num_rows
        meta = self.loaded.meta
        n_fields = len(self.loaded.encoders.fields)
        logits = np.zeros(n, dtype=np.float64) if meta["default_head"] else None
        props = np.zeros((n, len(meta["product_ids"])), dtype=np.float32) if meta["product_ids"] else None
        explained = np.zeros(n, dtype=bool) if explain is not None and logits is not None else None
        contrib = np.zeros((n, n_fields), dtype=np.float32) if explained is not None else None
        for rows in self._batches(text_lengths(inputs)):
            x = self._tensors(inputs, rows)
            self._prepare(x)
            with torch.no_grad(), _autocast(self.device, self.dtype):
                out = self.forward(x)
            if props is not None:
                props[rows] = torch.sigmoid(out["product_logits"].float()).cpu().numpy()
            if logits is None:
                continue
            logits[rows] = out["default_logit"].float().cpu().numpy()
            if explained is None:
                continue
            flag = np.asarray(explain(calibration.apply(meta["calibration"], logits[rows])), dtype=bool)
            if flag.any():
                picked = rows[flag]
                contrib[picked] = self._attributions(self._tensors(inputs, picked), n_fields)
                explained[picked] = True
        pd = calibration.apply(meta["calibration"], logits) if logits is not None else None
        return Predictions(pd=pd, propensity=props, explained=explained, contrib=contrib)

    def _attributions(self, x: dict[str, torch.Tensor], n_fields: int) -> np.ndarray:
        """(rows, features): how much each feature raises the default logit against its null value.

        A structured feature's token: gradient x (its embedding - its null embedding), plus its wide
        term against the null's; a text feature: gradient x input summed over its tokens.
        """
        model = self.model
        switch = attention(model.backbone.config, self.grad_attention) if self.grad_attention else nullcontext()
        with torch.enable_grad(), _autocast(self.device, self.dtype), switch:
            embeds, mask = model.embed(x)
            e = embeds.detach().float().requires_grad_(True)
            model.encode(e, mask)["default_logit"].float().sum().backward()
        fields = model.features.token_fields(x).to(self.device)
        with torch.no_grad():
            base = torch.zeros_like(e)
            enc = model.features.enc
            first = len(enc.start_ids)
            base[:, first:first + len(enc.structured)] = model.features.null_tokens().float()
            per_token = (e.grad * (e.detach() - base)).sum(-1) * mask
            per_field = torch.zeros(len(e), n_fields + 1, device=self.device)
            per_field.scatter_add_(1, fields + 1, per_token)  # slot 0: start, separators, padding
            out = per_field[:, 1:]
            if model.wide is not None:  # column 0 of its terms is the default logit's
                terms = model.wide.terms(x)[..., 0] - model.wide.terms(null_inputs(enc, self.device))[..., 0]
                index = torch.tensor([enc.fields.index(f) for f in enc.structured], device=self.device)
                out = out.index_add(1, index, terms.float())
        return out.cpu().numpy()


@contextmanager
def attention(config, implementation: str):
    """The model runs another attention implementation while inside; Hugging Face models read
    it from their config on every call. Restored on exit, so a compiled graph's guard on it
    still holds afterwards."""
    saved = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = saved


def compiled(model: nn.Module) -> Callable[..., dict[str, torch.Tensor]]:
    """The model JIT-compiled by TorchInductor, for GPUs and for CPU backbones that will not
    export (CPUs otherwise load the cached package, see aot): weights frozen as constants (so
    prepacked for oneDNN / AMX once), layer norms, GELUs and residual adds fused, one graph for
    every batch shape. Compiling costs seconds per process and run, so it pays on long runs."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    inductor.freezing = True  # process-wide: compile(options=...) did not reach the lazy first compile
    # Python floats as constants: a symbolic one made Dynamo trace MiniLM twice (~4 s more)
    dynamo.specialize_float = True
    return torch.compile(model, dynamic=True)
