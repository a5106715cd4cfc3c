"""``build``: the front door from a Relax module (or a quantized PyTorch model) to an
executable for the standard Relax VM."""

from __future__ import annotations

import tvm

from .rewrite import rewrite_quantized
from .targets import TargetLike, resolve_target


def build(mod: tvm.IRModule, target: TargetLike = "host") -> tvm.runtime.Executable:
    """Compile ``mod`` for ``target`` with our kernels in place of its quantized layers.

    Runs :func:`tvm_ternary.rewrite.rewrite_quantized` (quantized conv2d/dense -> our
    kernels with the target's hand-written schedules, weights packed now, epilogues fused)
    and then TVM's standard Relax pipeline for everything else.

    Args:
        mod: a Relax ``IRModule`` with a ``main`` function, e.g. from
            :func:`tvm_ternary.from_torch`.
        target: a ``tvm.target.Target``, a dict, ``"host"``, a kind string (``"llvm"``) or
            a preset name (``"x86"``/``"avx2"``, ``"avx512"``, ``"rasp4"``/``"rpi4"``, ``"rasp3"``).

    Returns:
        A ``tvm.runtime.Executable``: run it with
        ``relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))``, save it
        with ``ex.export_library(path)``.

    Raises:
        TypeError for a module that is not a Relax ``IRModule``; ValueError for a layer
        whose weights or quantizer do not fit its scheme, or an unsupported target.
    """
    if not isinstance(mod, tvm.IRModule):
        hint = " (call tvm_ternary.from_torch(model, example_inputs) first)" if hasattr(mod, "forward") else ""
        raise TypeError(f"build: expected a Relax IRModule, got {type(mod).__name__}{hint}")
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise ValueError("build: the module has no 'main' function")
    target = resolve_target(target)
    if target.kind.name != "llvm":
        raise ValueError(f"build: target kind {target.kind.name!r} is not supported; our kernels are CPU (llvm) code")
    return tvm.compile(rewrite_quantized(mod, target), target=target)
