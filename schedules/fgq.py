"""FGQ kernels: an integer dot product per group of channels, scaled and summed in float.

The ``group`` stage is computed inside ``acc``'s reduction over groups, one group at a
time, so its int8 x uint8 dot product over ``G`` contiguous channels (bytes of data and
weights, channels innermost) is the innermost loop for LLVM to vectorize, and only one
float multiply-add per group remains. Output channels run in parallel.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target


class FgqKernel(ScheduleRule):
    """Schedule rule for the ``group`` + ``acc`` FGQ kernel."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        if names != ["group", "acc"]:
            return None
        acc = sch.get_sblock("acc")
        loops = sch.get_loops(acc)
        sch.parallel(sch.fuse(*loops[:2]))                 # batch x output channels
        sch.compute_at(sch.get_sblock("group"), sch.get_loops(acc)[-1])
        if tunable:
            step = sch.sample_categorical([0, 16, 64], [0.34, 0.33, 0.33])
            sch.annotate(sch.get_loops(acc)[0], "pragma_auto_unroll_max_step", step)
        return sch
