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

from .data import ActivationPack
from .dot import DotKernel
from .fgq import FgqKernel
from .generic import GenericCPU
from .isa import Isa, isa_of, kernel_isa
from .popcount import PopcountKernel


def rules_for(target: Target) -> list[ScheduleRule]:
    """The schedule rules for ``target``, most specific first."""
    if target.kind.name != "llvm":
        raise ValueError(f"schedules: target kind {target.kind.name!r} is not supported; use an llvm CPU target")
    return [PopcountKernel(), FgqKernel(), DotKernel(), ActivationPack(), GenericCPU()]


def weight_block(target: Target, scheme: str = "ternary", weight_shape: Sequence[int] = ()) -> int:
    """Output-channel block ``V`` of the kernels' weight layout for ``target``: one vector
    of words (popcount schemes; ``weight_shape`` decides whether 16-bit words fit) or of
    32-bit lanes (the byte schemes ``fgq`` and ``int8``)."""
    if scheme in ("fgq", "int8"):
        return isa_of(target).int32_lanes
    return kernel_isa(target, weight_shape).lanes


def word_bits(target: Target, weight_shape: Sequence[int] = ()) -> int:
    """Word size of the popcount kernels with weights ``weight_shape`` for ``target`` (16, 32 or 64)."""
    return kernel_isa(target, weight_shape).word_bits


TUNABLE_RULES = (PopcountKernel, FgqKernel, DotKernel)
"""Rules whose knobs MetaSchedule searches (the kernels); data stages keep their fixed schedule."""


def schedule_in_place(sch: s_tir.Schedule, target: Target, tunable: bool = True) -> None:
    """Apply the first kernel rule that fits to ``sch`` in place: the search space of
    :func:`tvm_ternary.tune` (``tunable=True`` samples the rule's knobs)."""
    for rule in TUNABLE_RULES:
        if rule().schedule(sch, target, tunable) is not None:
            return
    raise ValueError("schedules: no tunable rule applies (tuning covers the popcount, FGQ and int8 kernels)")


def schedule(func: tirx.PrimFunc, target: Target, tunable: bool = False) -> s_tir.Schedule:
    """Schedule one operator PrimFunc with the first rule for ``target`` that applies."""
    for rule in rules_for(target):
        sch = rule.apply(func, target, tunable)
        if sch is not None:
            return sch
    name = func.attrs["global_symbol"] if func.attrs and "global_symbol" in func.attrs else "<anonymous>"
    raise ValueError(f"schedules: no rule for {name} on target {target}")


__all__ = ["ActivationPack", "DotKernel", "FgqKernel", "GenericCPU", "PopcountKernel", "Isa", "isa_of", "kernel_isa", "rules_for", "schedule", "schedule_in_place", "weight_block", "word_bits"]
