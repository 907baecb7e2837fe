"""How a scoring process runs its model: device, dtype and kernels are decided here, once per
Predictor, and one `[score] model path:` line says which and why. The process-wide settings a
path needs are made here too, by configure_process when the Predictor is created (only the
package's attention function is registered where a package is built, aot.package_form, since
builds also run outside actors); importing the scoring modules changes nothing.

| path | where it runs | chosen when (score.*) |
|---|---|---|
| eager fp32, linears prepacked for oneDNN (kernels) | CPU without bf16 units: AVX2 laptop, dev VM | fp32, not compiled, onednn |
| eager bf16 autocast | CPU with AVX512-BF16 / AMX where bf16 timed faster; GPU with bf16 | not compiled |
| AOTInductor package (aot), built once per node | CPU cluster nodes, long runs | compile true, or "cached" and built |
| JIT torch.compile (kernels.compiled) | GPU; CPU whose backbone will not export | compile true |
| eager, one model spread over several GPUs | GPU actor holding more GPUs than one | gpus_per_actor > 1 |

Every private PyTorch API a path uses sits in torch_private, with the public path it falls back
to; a fallback costs speed, never a run.
"""
from __future__ import annotations

import ctypes
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from ..model.network import CreditModel
from ..model.store import LoadedModel, ModelError
from . import aot, torch_private as private
from .kernels import compiled, prepack

HEAP_KEEP_BYTES = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit Linux


def configure_process(device: torch.device, threads: int | None, compile: bool | str) -> str:
    """The process-wide settings scoring needs, made where a Predictor is created (an actor's
    start), never at import: the torch thread count, the heap kept (CPU) and the compile flags
    (where it may JIT-compile). Returns them in words, for the path line."""
    if threads:
        torch.set_num_threads(threads)
    done = [f"{torch.get_num_threads()} torch thread(s)"]
    if device.type == "cpu" and keep_heap():
        done.append("heap kept")
    if compile is True:
        try:
            private.set_compile_flags()
        except private.Unavailable as err:
            done.append(f"compile flags unavailable ({err})")
    return ", ".join(done)


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


def choose_device(device: str | None) -> torch.device:
    """The device asked for, else a GPU where this process sees one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def place(model: CreditModel, device: torch.device, gpus: int) -> CreditModel:
    """The model in eval mode on its device: spread over the actor's GPUs where it holds several
    (Ray gives them as cuda:0..gpus-1), else moved whole."""
    if device.type == "cuda" and gpus > 1:
        return spread(model.eval(), [torch.device("cuda", i) for i in range(gpus)])
    return model.to(device).eval()


def spread(model: CreditModel, devices: list[torch.device]) -> CreditModel:
    """One model over several devices (its blocks in contiguous runs, see device_map): for an
    actor holding more GPUs than one, whose model does not fit on one. Inputs go to the first."""
    from accelerate import dispatch_model

    plan = model.device_map(len(devices))
    return dispatch_model(model, {name: devices[i] for name, i in plan.items()}, main_device=devices[0])


def gradient_attention(device: torch.device) -> str | None:
    """The attention the reason-code pass runs: plain on a CPU, where PyTorch's flash-attention
    backward is many times slower than its forward; the model's own elsewhere."""
    return "eager" if device.type == "cpu" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); unknown counts as yes."""
    try:
        return private.cpu_bf16_units()
    except private.Unavailable:
        return True


def choose_dtype(precision: str, device: torch.device, model: nn.Module,
                 sample: dict[str, torch.Tensor]) -> tuple[torch.dtype | None, str]:
    """The autocast dtype (None: fp32) and why. bf16 or fp32 where asked; 'auto' takes bf16 on
    GPUs that have it, fp32 on CPUs without bf16 instructions, and otherwise times both on this
    hardware and keeps the faster: CPUs without bf16 units run bf16 several times slower than
    fp32, GPUs the other way round."""
    if precision in ("fp32", "bf16"):
        return (None if precision == "fp32" else torch.bfloat16), f"{precision} (asked)"
    if device.type == "cuda":
        has = torch.cuda.is_bf16_supported()
        return (torch.bfloat16, "bf16 (auto: this GPU has it)") if has else (None, "fp32 (auto: this GPU has no bf16)")
    if not cpu_has_bf16():  # emulated bf16 runs ~100x slower; timing it would cost seconds per actor
        return None, "fp32 (auto: this CPU has no bf16 instructions)"
    timings = {}
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), autocast(device, dtype):
            model(sample)  # warm-up
            t0 = time.perf_counter()
            model(sample)
            timings[dtype] = time.perf_counter() - t0
    fast = min(timings, key=timings.get)
    ms = {name: timings[dtype] * 1e3 for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    return fast, f"{'bf16' if fast else 'fp32'} (auto: timed fp32 {ms['fp32']:.1f} ms, bf16 {ms['bf16']:.1f} ms)"


@dataclass
class ModelPath:
    """What choose_path decided: the autocast dtype (None: fp32) and the backbone-and-heads
    forward (CreditModel.encode, or a compiled version of it)."""
    dtype: torch.dtype | None
    encode: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def choose_path(loaded: LoadedModel, model: CreditModel, device: torch.device, sample: dict[str, torch.Tensor], *,
                precision: str, compile: bool | Literal["cached"], onednn: bool, micro_batch: int,
                compiled_cache: str | None, settings: str) -> ModelPath:
    """Decide the dtype (it may time both) and the kernels, on the first batch, and print the
    one line that says which and why. Kernels: compiled where asked (on a CPU the cached
    package, with compile="cached" only one already built), else, for fp32 on a CPU, the linear
    layers prepacked for oneDNN (in place)."""
    dtype, dtype_why = choose_dtype(precision, device, model, sample)
    encode, why = model.encode, "eager"
    if compile and device.type == "cpu":
        encode, why = _package(loaded, model, dtype, micro_batch, compiled_cache, build=compile is True)
    elif compile is True and hasattr(model, "hf_device_map"):
        why = "eager: a model spread over GPUs is not compiled"
    elif compile is True:
        encode, why = compiled(model.encode), "JIT-compiled (GPU)"
    if encode == model.encode and device.type == "cpu" and dtype is None:
        if not onednn:
            why += "; oneDNN prepacking off"
        elif prepack(model, micro_batch * 128):
            why += "; linears prepacked for oneDNN"
        else:
            why += "; oneDNN prepacked linears unavailable in this torch build"
    print(f"[score] model path: {device}, {dtype_why}, compile={str(compile).lower()}: {why}; {settings}", flush=True)
    return ModelPath(dtype, encode)


def _package(loaded: LoadedModel, model: CreditModel, dtype: torch.dtype | None, rows: int, cache: str | None,
             build: bool) -> tuple[Callable[..., dict[str, torch.Tensor]], str]:
    """The model's AOTInductor package from the cache, built there first if missing and `build`
    (a backbone that will not export is JIT-compiled instead); eager where there is none and no
    build. Returns the forward and why."""
    started = time.perf_counter()
    try:
        forward, built = aot.compiled_forward(loaded, dtype, rows, loaded.config.model.max_length, cache,
                                              build_missing=build)
    except ModelError:  # an unsafe cache folder: refuse, never fall back around a security check
        raise
    except Exception as err:  # export covers most, not all, Hugging Face backbones
        why = f"no compiled package ({type(err).__name__}: {str(err)[:200]})"
        return (compiled(model.encode), f"JIT-compiled: {why}") if build else (model.encode, f"eager: {why}")
    if forward is None:
        return model.encode, ("eager: no compiled package for this model on this node (a larger run, "
                              "or score.compile=true, builds one)")
    return forward, f"compiled package {'built' if built else 'loaded'} in {time.perf_counter() - started:.1f} s"
