"""Schedules per target, installed as ``tvm_ternary.schedules``.

The ``schedules/`` folder at the top of the repository is the package
``tvm_ternary.schedules`` (mapped with setuptools' ``package-dir``), so nothing installs
a generic top-level module named ``schedules``. Rules follow TVM's dlight style: a
:class:`tvm.s_tir.dlight.ScheduleRule` whose ``apply(func, target, tunable)`` returns a
schedule, or None when it does not apply.
"""

from __future__ import annotations

from typing import Sequence

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .amx import AmxKernel
from .data import ActivationPack
from .codes import CodeDotKernel
from .dot import DotKernel
from .fgq import FgqKernel
from .float_ops import FloatCPU
from .generic import GenericCPU
from .isa import Isa, has_amx, isa_of, kernel_isa
from .popcount import PopcountKernel


def rules_for(target: Target) -> list[ScheduleRule]:
    """The schedule rules for ``target``, most specific first."""
    if target.kind.name != "llvm":
        raise ValueError(f"schedules: target kind {target.kind.name!r} is not supported; use an llvm CPU target")
    return [AmxKernel(), PopcountKernel(), FgqKernel(), DotKernel(), CodeDotKernel(), ActivationPack(), GenericCPU()]


def weight_block(target: Target, scheme: str = "ternary", weight_shape: Sequence[int] = ()) -> int:
    """Output-channel block ``V`` of the kernels' weight layout for ``target``: one vector
    of words (popcount schemes; ``weight_shape`` decides whether 16-bit words fit) or of
    32-bit lanes (the byte schemes ``fgq``, ``int8`` and ``ternary_int8``)."""
    if scheme in ("fgq", "int8", "ternary_int8"):
        return isa_of(target).int32_lanes
    return kernel_isa(target, weight_shape).lanes


def word_bits(target: Target, weight_shape: Sequence[int] = ()) -> int:
    """Word size of the popcount kernels with weights ``weight_shape`` for ``target`` (16, 32 or 64)."""
    return kernel_isa(target, weight_shape).word_bits


FLOAT_OP = "float op"
"""The role (a :data:`tvm_ternary.rewrite.Scheduler`'s second argument) of the float
operators a model keeps after the rewrite (pooling, means, residual adds, float layers
Relax lowers): :class:`FloatCPU` schedules them."""

TUNABLE_RULES = (AmxKernel, PopcountKernel, FgqKernel, DotKernel, CodeDotKernel, ActivationPack)
"""Rules of our functions whose knobs MetaSchedule searches: the kernels and the data
stages (quantize-and-pack, patch gathers); :class:`FloatCPU`'s too, for the float operators.
:class:`GenericCPU` has none, and neither has :class:`AmxKernel`, which is here so the search
space recognises the AMX kernel (a space without decisions: not a tuning task)."""


def schedule_in_place(sch: s_tir.Schedule, target: Target, tunable: bool = True) -> None:
    """Apply the rule :func:`schedule` picks for the function of ``sch`` (or, for a float
    operator, :class:`FloatCPU`) in place: the search space of :func:`tvm_ternary.tune`
    and :func:`tvm_ternary.tune_model` (``tunable=True`` samples the rule's knobs). Raises
    ``ValueError`` for a stage of ours that only :class:`GenericCPU` schedules (it has no knobs)."""
    for rule in TUNABLE_RULES:
        if rule().schedule(sch, target, tunable) is not None:
            return
    if GenericCPU.accepts(sch):
        raise ValueError("schedules: no tunable rule applies (the generic rule's stages have no knobs)")
    FloatCPU().schedule(sch, target, tunable)


def schedule(func: tirx.PrimFunc, target: Target, tunable: bool = False, role: str = "") -> s_tir.Schedule:
    """Schedule one PrimFunc: a float operator (``role`` :data:`FLOAT_OP`) with
    :class:`FloatCPU`, any other with the first rule for ``target`` that applies."""
    if role == FLOAT_OP:
        return FloatCPU().apply(func, target, tunable)
    for rule in rules_for(target):
        sch = rule.apply(func, target, tunable)
        if sch is not None:
            return sch
    name = func.attrs["global_symbol"] if func.attrs and "global_symbol" in func.attrs else "<anonymous>"
    raise ValueError(f"schedules: no rule for {name} on target {target}")


__all__ = ["FLOAT_OP", "ActivationPack", "AmxKernel", "CodeDotKernel", "DotKernel", "FgqKernel", "FloatCPU", "GenericCPU", "PopcountKernel", "Isa", "has_amx", "isa_of", "kernel_isa", "rules_for", "schedule", "schedule_in_place", "weight_block", "word_bits"]
