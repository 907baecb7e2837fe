"""Every private PyTorch API scoring calls, one small function each.

Private APIs can change or vanish in any torch release. Each function here raises Unavailable
when its API is missing, and its caller then takes the public path:

| function | private API | public path without it |
|---|---|---|
| cpu_bf16_units | torch.cpu._is_avx512_bf16_supported, _is_amx_tile_supported | precision "auto" times fp32 and bf16 |
| onednn_pack, onednn_linear, onednn_ready | torch.ops.mkldnn._reorder_linear_weight, _linear_pointwise | nn.Linear |
| set_compile_flags | torch._inductor.config.freezing, torch._dynamo.config.specialize_float | torch.compile's defaults |
| aoti_compile | torch._inductor.aoti_compile_and_package | JIT torch.compile |
| aoti_runner | torch._C._aoti.AOTIModelContainerRunnerCpu | JIT torch.compile, or eager |
| realign_constants | the AOTInductor runner's constant-buffer methods | the runtime's own copy of the weights |
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Unavailable(Exception):
    """This torch build lacks a private API; the caller takes its public path."""


def cpu_bf16_units() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(checks):
        raise Unavailable("torch.cpu has no bf16 instruction checks")
    return any(check() for check in checks if check)


def _mkldnn_op(name: str):
    try:
        return getattr(torch.ops.mkldnn, name)
    except AttributeError as err:
        raise Unavailable(f"torch.ops.mkldnn.{name}") from err


def onednn_pack(weight: torch.Tensor, rows_hint: int) -> torch.Tensor:
    """A linear layer's weight in oneDNN's blocked layout, for onednn_linear."""
    return _mkldnn_op("_reorder_linear_weight")(weight, rows_hint)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) @ the packed weight + bias, by oneDNN's prepacked kernel."""
    return _mkldnn_op("_linear_pointwise")(x, packed, bias, "none", [], "")


def onednn_ready() -> bool:
    """Whether oneDNN's prepacked linear runs in this torch build and gives F.linear's outputs
    (x86 and Arm CPU builds have it)."""
    if not torch.backends.mkldnn.is_available():
        return False
    x, weight, bias = torch.linspace(-1, 1, 24).view(3, 8), torch.linspace(-1, 1, 32).view(4, 8), torch.ones(4)
    try:
        got = onednn_linear(x, onednn_pack(weight, 3), bias)
    except (Unavailable, RuntimeError, TypeError):  # TypeError, RuntimeError: the op's signature changed
        return False
    return torch.allclose(got, F.linear(x, weight, bias), rtol=1e-4, atol=1e-5)


def set_compile_flags() -> None:
    """Process-wide (torch.compile(options=...) did not reach the lazy first compile): Inductor
    freezes the weights as constants, so prepacks them once, and Dynamo takes Python floats as
    constants (a symbolic one made it trace MiniLM twice)."""
    try:
        import torch._dynamo.config as dynamo
        import torch._inductor.config as inductor

        inductor.freezing = True
        dynamo.specialize_float = True
    except (ImportError, AttributeError) as err:
        raise Unavailable(f"compile flags: {err}") from err


def aoti_compile(program: torch.export.ExportedProgram, package_path: str) -> None:
    """Compile an exported program into an AOTInductor package, its weights frozen."""
    try:
        from torch._inductor import aoti_compile_and_package
    except ImportError as err:
        raise Unavailable("torch._inductor.aoti_compile_and_package") from err
    aoti_compile_and_package(program, package_path=package_path, inductor_configs={"freezing": True})


def aoti_runner(so_path: str):
    """The AOTInductor CPU runtime for a compiled model's shared library (runner.run(inputs) -> outputs)."""
    try:
        runner_class = torch._C._aoti.AOTIModelContainerRunnerCpu
    except AttributeError as err:
        raise Unavailable("torch._C._aoti.AOTIModelContainerRunnerCpu") from err
    return runner_class(so_path, 1)


def realign_constants(runner) -> dict[str, torch.Tensor]:
    """Hand the runner 64-byte-aligned copies of its weights and free its own; returns the copies,
    which must live as long as the runner.

    The runtime copies the weights into one malloc'd block that glibc aligns to 16 bytes, not to
    the 64 oneDNN's AMX kernels read in, which slows the linear layers several-fold.
    """
    try:
        fqn_names, extract = runner.get_constant_names_to_original_fqns, runner.extract_constants_map
        update, swap, free = (runner.update_constant_buffer, runner.swap_constant_buffer,
                              runner.free_inactive_constant_buffer)
    except AttributeError as err:
        raise Unavailable(f"AOTInductor runner: {err}") from err
    name_of = {fqn: name for name, fqn in fqn_names().items()}
    aligned = {name_of[fqn]: t.clone() for fqn, t in extract(False).items()}
    update(aligned, True, True, True)  # all of them, into the inactive buffer, user-managed
    swap()
    free()
    return aligned
