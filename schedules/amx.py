"""The AMX kernel's rule: the kernel is written as TIR (:mod:`tvm_ternary.operators.amx`),
with no knobs, so the rule hands it on as it is."""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from tvm_ternary.operators.amx import AMX_ATTR

from .tiling import KernelRule


class AmxKernel(KernelRule):
    """Schedule rule for the AMX conv2d kernel: the function as built (see module doc)."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """``sch`` untouched if it holds the AMX kernel, else None."""
        attrs = sch.mod["main"].attrs
        return sch if attrs is not None and AMX_ATTR in attrs else None
