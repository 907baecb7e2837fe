"""Model rewrites the speed paths run with (execution picks among them): linear layers prepacked
for oneDNN, JIT compilation, and the attention switch for the reason-code pass."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from . import torch_private as private


class _PackedLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b through oneDNN's prepacked kernel; the gradient flows to x only (reason
    codes differentiate the inputs, never the frozen weights)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(weight)
        y = private.onednn_linear(x.reshape(-1, x.shape[-1]), packed, bias)
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
        self.register_buffer("packed", private.onednn_pack(linear.weight.detach().contiguous(), rows_hint),
                             persistent=False)

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
    """Swap every fp32 CPU nn.Linear of an inference model for a PackedLinear; returns how many:
    none where oneDNN's prepacked kernel does not work in this torch build (onednn_ready)."""
    if not private.onednn_ready():
        return 0
    return swap_linears(model, lambda layer: PackedLinear(layer, rows_hint)
                        if layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu" else None)


def compiled(model: nn.Module) -> Callable[..., dict[str, torch.Tensor]]:
    """The model JIT-compiled by TorchInductor, one graph for every batch shape: for GPUs and for
    CPU backbones that will not export (CPUs otherwise load the cached package, see aot). With
    the flags execution.configure_process sets, its weights are frozen as constants (so
    prepacked for oneDNN / AMX once) and layer norms, GELUs and residual adds fused. Compiling
    costs seconds per process and run, so it pays on long runs."""
    return torch.compile(model, dynamic=True)


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
