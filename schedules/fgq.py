"""FGQ kernels: an integer dot product per group of channels, scaled and summed in float.

Weights and scales are blocked by ``V`` output channels, as for the popcount kernels, and
the tiling is theirs (:mod:`.tiling`): a run of output pixels x ``V`` channel lanes with
the float accumulators in registers and the reductions over kernel taps and groups
outside. Inside the innermost reduction (over groups), the ``group`` stage computes the
exact int32 dot product of one group for the whole tile: each quad of activation bytes
broadcast against ``V`` x 4 weight bytes, as one ``vpdpbusd`` on AVX-512 VNNI targets,
``vpmaddubsw`` + ``vpmaddwd`` on AVX2, by-element ``smlal`` of 16-bit lanes on NEON, and
vector multiply-adds elsewhere. What is left per group is one vector multiply-add with
the group's ``V`` scales.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .intrinsics import DOT_U8I8_4X4, DOT_U8I8_8X4, DOT_U8I8_16X4
from .isa import has_vnni, isa_of
from .tiling import (KernelRule, REDUCE, TILE_SCOPE, group_stage_loop, loops_by_extent, register_tile, tile_budget,
                     tile_output)

ACCUMULATORS_PER_PIXEL = 2
"""Per pixel and lane vector: the float sum and the int32 group sum."""


def dot_intrinsic(target: Target, lanes: int) -> str | None:
    """The 4-byte dot-product intrinsic for ``lanes`` output channels on ``target``, if any."""
    if lanes == 16 and has_vnni(target):
        return DOT_U8I8_16X4
    if lanes == 8 and isa_of(target).name == "avx2":
        return DOT_U8I8_8X4
    if lanes == 4 and isa_of(target).name == "neon":
        return DOT_U8I8_4X4
    return None


class FgqKernel(KernelRule):
    """Schedule rule for the ``group`` + ``acc`` + ``out`` FGQ kernel."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``sch`` in place (MetaSchedule's form); None, untouched, if it does not apply."""
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        if names not in (["group", "acc", "out"], ["group", "acc", "out", "affine"]):
            return None
        group, acc, out = (sch.get_sblock(name) for name in names[:3])
        if "affine" in names:           # float epilogue: computed where out was
            sch.compute_inline(out)
            out = sch.get_sblock("affine")
        acc_iters = sch.get(acc).iter_vars
        lanes = [int(iv.dom.extent) for iv in acc_iters if int(iv.iter_type) != REDUCE][-1]
        reduce_extents = [int(iv.dom.extent) for iv in acc_iters if int(iv.iter_type) == REDUCE]
        quads = [int(iv.dom.extent) for iv in sch.get(group).iter_vars if int(iv.iter_type) == REDUCE][0]
        budget = tile_budget(sch, acc, isa_of(target).accumulator_budget)
        blocked = len(sch.get_loops(out)) == 5          # a channel-blocked output: vector epilogue
        tile, parallel = tile_output(sch, out, lanes, ACCUMULATORS_PER_PIXEL, budget, tunable)
        reduce = register_tile(sch, acc, tile, 1, lanes, reduce_extents, parallel, tunable,
                               permute=False)      # the group stage goes in the innermost reduction
        sch.compute_at(group, group_stage_loop(sch, acc, tile, lanes, reduce))
        loops = loops_by_extent(sch, group, [*tile, ("lane", lanes), ("quad", quads), ("byte", 4)])
        inner = [loops[name] for name, _ in tile if name in loops]
        outer = [loops["quad"]] if "quad" in loops else []
        sch.reorder(*outer, *inner, loops["lane"], loops["byte"])
        sch.set_scope(group, 0, TILE_SCOPE)
        intrinsic = dot_intrinsic(target, lanes)
        if intrinsic is None:
            sch.vectorize(loops["lane"])
            sch.unroll(loops["byte"])
        for loop in inner:
            sch.unroll(loop)
        sch.decompose_reduction(group, (outer or [loops["lane"]])[0])
        if intrinsic:                     # one dot-product instruction (pair) per quad of channels
            sch.tensorize(sch.get_loops(sch.get_sblock("group_update"))[-2], intrinsic)
        if blocked:
            sch.vectorize(sch.get_loops(out)[-1])
        if reduce:
            sch.decompose_reduction(acc, reduce[0])
        return sch
