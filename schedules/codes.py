"""The ternary_int8 kernel: 2-bit weight codes widened to bytes in registers, then byte dot products.

The kernel PrimFunc (:func:`tvm_ternary.operators.compute.ternary_code_dot`) has the blocks
``xsum`` (each group's sum of activations), ``dot`` (a group's dot product with the codes),
``acc`` (the multiplier-weighted sum over groups) and ``out`` (+ optional ``affine``). The
tile is the dense one of :mod:`.tiling` (batch rows x output-channel blocks of ``V`` lanes,
``acc`` and ``dot`` in registers), with the groups outside and, inside each group, its quads
of code bytes: each quad is one load of ``V x 4`` code bytes, widened by shift-and-mask to
four vectors of byte codes, each multiplied with one broadcast activation quad
(:mod:`.intrinsics`: ``vpdpbusd`` on AVX-512 VNNI, ``vpmaddubsw`` + ``vpmaddwd`` on AVX2;
vector multiply-adds elsewhere). A batch-1 layer is a weight stream, and the codes are a
quarter of int8's bytes. With per-token activations the kernel first computes each row's
``absmax`` and its quantized bytes (``tokens``, vectorized) before the tiles.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .intrinsics import DOT_U8_CODES_8, DOT_U8_CODES_16
from .isa import has_vnni, isa_of
from .tiling import (KernelRule, REDUCE, TILE_SCOPE, group_stage_loop, loops_by_extent, register_tile, tile_budget,
                     tile_output)

STAGES = ("xsum", "dot", "acc", "out")
"""The kernel's blocks (in either order of the independent ``xsum`` and ``dot``), then ``affine``."""
PER_TOKEN_STAGES = ("absmax", "tokens")
"""With per-token activations, the stages that quantize the float rows first."""

ACCUMULATORS_PER_ROW = 2
"""Per batch row and lane vector: the sum over groups and the group's dot product."""


def codes_intrinsic(target: Target, lanes: int) -> str | None:
    """The code dot-product intrinsic for ``lanes`` output channels on ``target``, if any."""
    if lanes == 16 and has_vnni(target):
        return DOT_U8_CODES_16
    if lanes == 8 and isa_of(target).name == "avx2":
        return DOT_U8_CODES_8
    return None


class CodeDotKernel(KernelRule):
    """Schedule rule for the ``xsum`` + ``dot`` + ``acc`` + ``out`` ternary_int8 kernel."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``sch`` in place (MetaSchedule's form); None, untouched, if it does not apply."""
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        stages = set(names) - {"affine"} - set(PER_TOKEN_STAGES)
        if stages != set(STAGES) or len(names) != len(set(names)) or \
                len(set(names) & set(PER_TOKEN_STAGES)) not in (0, len(PER_TOKEN_STAGES)):
            return None
        if "tokens" in names:             # per token: the row's quantized bytes, vector by vector
            sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("tokens"))[-1], [None, 16])[-1])
        dot, acc, out = (sch.get_sblock(name) for name in ("dot", "acc", "out"))
        if "affine" in names:           # float epilogue: computed where out was
            sch.compute_inline(out)
            out = sch.get_sblock("affine")
        acc_iters = sch.get(acc).iter_vars
        lanes = [int(iv.dom.extent) for iv in acc_iters if int(iv.iter_type) != REDUCE][-1]
        groups = [int(iv.dom.extent) for iv in acc_iters if int(iv.iter_type) == REDUCE]
        quads = [int(iv.dom.extent) for iv in sch.get(dot).iter_vars if int(iv.iter_type) == REDUCE][0]
        budget = tile_budget(sch, acc, isa_of(target).accumulator_budget)
        tile, parallel = tile_output(sch, out, lanes, ACCUMULATORS_PER_ROW, budget, tunable, reduction="acc")
        reduce = register_tile(sch, acc, tile, 1, lanes, groups, parallel, tunable, permute=False)
        sch.compute_at(dot, group_stage_loop(sch, acc, tile, lanes, reduce))
        loops = loops_by_extent(sch, dot, [*tile, ("lane", lanes), ("quad", quads), ("shift", 4), ("byte", 4)])
        inner = [loops[name] for name, _ in tile if name in loops]
        outer = [loops["quad"]] if "quad" in loops else []
        intrinsic = codes_intrinsic(target, lanes)
        order = [loops["lane"], loops["shift"], loops["byte"]] if intrinsic else \
            [loops["shift"], loops["byte"], loops["lane"]]
        sch.reorder(*outer, *inner, *order)
        sch.set_scope(dot, 0, TILE_SCOPE)
        for loop in inner:
            sch.unroll(loop)
        if not intrinsic:                 # each (shift, byte) a vector multiply-add of the lanes
            sch.unroll(loops["shift"])
            sch.unroll(loops["byte"])
            sch.vectorize(loops["lane"])
        sch.decompose_reduction(dot, (outer or inner or order)[0])
        if intrinsic:                     # one load of code bytes, four dot products
            sch.tensorize(sch.get_loops(sch.get_sblock("dot_update"))[-3], intrinsic)
        if reduce:
            sch.decompose_reduction(acc, reduce[0])
        return sch
