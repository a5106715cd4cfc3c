"""``build``: the front door from a Relax module (or a quantized PyTorch model) to an
executable for the standard Relax VM."""

from __future__ import annotations

import logging
import os

import tvm
from tvm.relax.backend.cpu_generic import legalize_passes
from tvm.target import Target

from .diagnostics import warn_if_generic_target
from . import schedules
from .rewrite import KERNEL_ATTR, Scheduler, rewrite_quantized
from .targets import TargetLike, resolve_target
from .tuning import TunedScheduler

_LOG = logging.getLogger(__name__)


def build(mod: tvm.IRModule, target: TargetLike = "host",
          tuned: str | os.PathLike | None = None) -> tvm.runtime.Executable:
    """Compile ``mod`` for ``target`` with our kernels in place of its quantized layers.

    Runs :func:`tvm_ternary.rewrite.rewrite_quantized` (quantized conv2d/dense -> our
    kernels with the target's hand-written schedules, weights packed now, epilogues fused),
    schedules the float operators that remain (:func:`schedule_float_ops`) and then TVM's
    standard Relax pipeline.

    Args:
        mod: a Relax ``IRModule`` with a ``main`` function, e.g. from
            :func:`tvm_ternary.from_torch`.
        target: a ``tvm.target.Target``, a dict, ``"host"``, a kind string (``"llvm"``) or
            a preset name (``"x86"``/``"avx2"``, ``"avx512"``, ``"rasp4"``/``"rpi4"``, ``"rasp3"``).
        tuned: a tuning directory of :func:`tvm_ternary.tune_model` (or :func:`tvm_ternary.tune`),
            or ``"shipped"``: the records that ship in ``tvm_ternary/schedules/records/<isa>``
            for the target's ISA class (``avx512``: AVX-512 VPOPCNTDQ, ``avx2``), tuned for
            ResNet-18 at 224x224 with the default :func:`tvm_ternary.quantize` (ternary,
            fatnn, w2a2_bw, w1a1; other models use the records of the functions they share).
            Each function with a record (kernel, quantize stage, patch gather, float
            operator) uses its best one, the others their hand schedules;
            one line on the ``tvm_ternary.build`` logger says how many. Default None: the
            hand schedules (records measured on another CPU of the same ISA class need not
            be faster on yours).

    Returns:
        A ``tvm.runtime.Executable``: run it with
        ``relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))``, save it
        with ``ex.export_library(path)``.

    Raises:
        TypeError for a module that is not a Relax ``IRModule``; ValueError for a layer
        whose weights or quantizer do not fit its scheme, or an unsupported target.

    Warns:
        :class:`~tvm_ternary.diagnostics.SlowPathWarning` for a quantized layer left to
        plain Relax because its weights or thresholds are not constants, and for a
        generic x86 target (``"llvm"``) on a CPU with AVX2 or better.
    """
    if not isinstance(mod, tvm.IRModule):
        hint = " (call tvm_ternary.from_torch(model, example_inputs) first)" if hasattr(mod, "forward") else ""
        raise TypeError(f"build: expected a Relax IRModule, got {type(mod).__name__}{hint}")
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise ValueError("build: the module has no 'main' function")
    target = resolve_target(target)
    if target.kind.name != "llvm":
        raise ValueError(f"build: target kind {target.kind.name!r} is not supported; our kernels are CPU (llvm) code")
    warn_if_generic_target(target, "build")
    scheduler = None if tuned is None else TunedScheduler(target, tuned)
    lowered = schedule_float_ops(rewrite_quantized(mod, target, scheduler), target, scheduler)
    if scheduler is not None:
        _LOG.info("build: %d of %d functions use tuning records of %s (the others: their hand schedules)",
                  scheduler.tuned, scheduler.functions, scheduler.work_dir)
    return tvm.compile(lowered, target=target)


def lower_float_ops(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Lower what the rewrite left to Relax (TVM's CPU legalization and fusion) into
    PrimFuncs, unscheduled; :func:`float_ops` lists them."""
    with target:
        return tvm.transform.Sequential(legalize_passes(target))(mod)


def float_ops(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]:
    """The PrimFuncs of ``mod`` that are not ours (no :data:`~tvm_ternary.rewrite.KERNEL_ATTR`)."""
    return {gv: func for gv, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs is not None and KERNEL_ATTR in func.attrs)}


def schedule_float_ops(mod: tvm.IRModule, target: Target, schedule: Scheduler | None = None) -> tvm.IRModule:
    """Lower what the rewrite left to Relax (:func:`lower_float_ops`) and schedule those
    functions with ``schedule`` (role :data:`~tvm_ternary.schedules.FLOAT_OP`; default:
    :class:`tvm_ternary.schedules.FloatCPU`): TVM's default CPU pipeline would run them
    serial and scalar. Our kernels keep theirs; every function is then opaque, so the
    pipeline in ``tvm.compile`` fuses nothing further."""
    mod = lower_float_ops(mod, target)
    schedule = schedule or (lambda func, role: schedules.schedule(func, target, role=role))
    for gv, func in float_ops(mod).items():
        scheduled = schedule(func, schedules.FLOAT_OP).mod["main"].without_attr("global_symbol")
        mod[gv] = scheduled.with_attrs({**({} if func.attrs is None else dict(func.attrs)), "op_pattern": 8})
    return mod
