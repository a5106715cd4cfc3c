"""Plain CPU schedule for every operator stage: a correct, portable default.

Runs the two outermost loops of each stage (batch x output channels, batch x planes, ...)
in parallel; LLVM vectorizes the rest on its own. It applies only to our operators' stages
(:data:`STAGES`), on any LLVM CPU target, and in practice schedules what the per-target
rules (AVX2, AVX-512, NEON) leave: dense packing, and the byte layout of dense layers and of
integer inputs (:func:`tvm_ternary.op`). It has no knobs, so ``tunable`` changes nothing.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

STAGES = ("count", "pad", "pack", "layout", "acc", "out")
"""Block names of the operator stages it accepts (see ``tvm_ternary.operators.compute``);
not FGQ's ``group`` stage, which must be computed inside ``acc``, never whole."""


def inline_quantizer(sch: s_tir.Schedule) -> None:
    """Inline the activation quantizer's ``levels`` stage (if any) into its consumer."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).name_hint == "levels":
            sch.compute_inline(block)


class GenericCPU(ScheduleRule):
    """Parallel outer loops; applies to any PrimFunc made of the :data:`STAGES`."""

    @staticmethod
    def accepts(sch: s_tir.Schedule) -> bool:
        """Whether the function of ``sch`` is made of :data:`STAGES` (and a quantizer's ``levels``)."""
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))} - {"levels"}
        return bool(names) and names <= set(STAGES)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        if not self.accepts(sch):
            return None
        inline_quantizer(sch)
        blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
        for block in blocks.values():
            loops = sch.get_loops(block)
            sch.parallel(sch.fuse(*loops[:2]) if len(loops) > 1 else loops[0])
        return sch
