"""Plain CPU schedule for every operator stage: a correct, portable default.

Inlines the padding stage into the kernel and runs the two outermost spatial loops of
each remaining stage (batch x output channels, batch x planes, ...) in parallel; LLVM
vectorizes the rest on its own. It has no knobs, so ``tunable`` changes nothing. The
per-target rules (AVX2, AVX-512, NEON) are the fast path; this one is the fallback for
any LLVM CPU target.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

STAGES = ("pack", "layout", "pad", "acc", "out")
"""Block names of the operator stages (see ``tvm_ternary.operators.compute``)."""


class GenericCPU(ScheduleRule):
    """Parallel outer loops, padding inlined; applies to any PrimFunc built from our stages."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if not blocks or any(name not in STAGES for name in blocks):
            return None
        if "pad" in blocks:
            sch.compute_inline(blocks.pop("pad"))
        for block in blocks.values():
            loops = sch.get_loops(block)
            sch.parallel(sch.fuse(*loops[:2]) if len(loops) > 1 else loops[0])
        return sch
