"""The int8 kernel: a register tile of int32 accumulators fed by 4-byte dot products.

The kernel PrimFunc (:func:`tvm_ternary.operators.compute.byte_dot_correlation`) has the
blocks ``dot`` (``[N, Kb, *out, 1, V]``, the reduction over kernel taps, channel quads
and the 4 bytes of a quad) and ``out`` (the per-channel correction, then the optional
``affine`` epilogue). The schedule tiles the output as the popcount kernels do
(:mod:`.tiling`: a run of output pixels x ``V`` channel lanes in registers, dense by batch
rows and channel blocks), puts the taps and quads outside the tile, so each weight vector
(``V`` x 4 bytes) is loaded once per tile, and turns each pixel's ``(lane, byte)`` loops
into one dot-product instruction: ``vpdpbusd`` on AVX-512 VNNI, ``vpmaddubsw`` +
``vpmaddwd`` on AVX2, four by-element ``smlal`` of 16-bit lanes on NEON (:mod:`.intrinsics`),
vector multiply-adds elsewhere.

With the byte requantize epilogue (blocks ``requant``, the tile's bytes for the next layer
in the output's blocked layout, and ``layout``, those bytes copied into the next layer's
padded channels-last input), ``requant`` takes ``out``'s place in the tile and ``layout``
runs afterwards, rows in parallel and channels in vectors.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .fgq import dot_intrinsic
from .isa import isa_of
from .tiling import (KernelRule, REDUCE, TILE_SCOPE, loops_by_extent, sample_order, sample_unroll, tile_budget,
                     tile_output)


class DotKernel(KernelRule):
    """Schedule rule for the ``dot`` + ``out`` int8 kernel (see module doc)."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``sch`` in place (MetaSchedule's form); None, untouched, if it does not apply."""
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        if names not in (["dot", "out"], ["dot", "out", "affine"], ["dot", "out", "requant", "layout"]):
            return None
        dot, out = sch.get_sblock("dot"), sch.get_sblock("out")
        if len(names) > 2:              # float or byte epilogue: computed where out was
            sch.compute_inline(out)
            out = sch.get_sblock(names[2])
        if "layout" in names:
            _schedule_layout(sch, sch.get_sblock("layout"))
        iters = sch.get(dot).iter_vars
        lanes = [int(iv.dom.extent) for iv in iters if int(iv.iter_type) != REDUCE][-1]
        *taps, quads, _ = [int(iv.dom.extent) for iv in iters if int(iv.iter_type) == REDUCE]
        budget = tile_budget(sch, dot, isa_of(target).accumulator_budget)
        blocked = len(sch.get_loops(out)) == 5          # a channel-blocked output: vector epilogue
        tile, parallel = tile_output(sch, out, lanes, 1, budget, tunable, reduction="dot")
        loops = loops_by_extent(sch, dot, [*tile, ("lane", lanes), *((f"r{i}", e) for i, e in enumerate(taps)),
                                           ("quad", quads), ("byte", 4)])
        reduce = [loops[name] for name in (*(f"r{i}" for i in range(len(taps))), "quad") if name in loops]
        if tunable:
            reduce = sample_order(sch, reduce)
        inner = [loops[name] for name, _ in tile if name in loops]
        intrinsic = dot_intrinsic(target, lanes)
        # the intrinsic takes a pixel's (lane, byte) loops; plain vector code runs the bytes one
        # after another, each a multiply-add of the lanes
        order = [loops["lane"], loops["byte"]] if intrinsic else [loops["byte"], loops["lane"]]
        sch.reorder(*reduce, *inner, *order)
        sch.set_scope(dot, 0, TILE_SCOPE)
        sch.parallel(parallel)
        for loop in inner:
            sch.unroll(loop)
        if reduce and tunable:
            sample_unroll(sch, parallel)
        if not intrinsic:
            sch.unroll(loops["byte"])
            sch.vectorize(loops["lane"])
        sch.decompose_reduction(dot, (reduce or inner or order)[0])
        if intrinsic:                     # one dot-product instruction (pair) per pixel and quad
            sch.tensorize(sch.get_loops(sch.get_sblock("dot_update"))[-2], intrinsic)
        if blocked:
            sch.vectorize(sch.get_loops(out)[-1])
        return sch


LAYOUT_VECTOR_BYTES = 16
"""Bytes of the requantize epilogue's layout stage stored as one vector."""


def _schedule_layout(sch: s_tir.Schedule, layout) -> None:
    """The byte requantize epilogue's last stage, ``[N, rows, cols, channels]`` bytes (the next
    layer's padded layout, copied from the kernel's blocked bytes): rows in parallel, the
    channels in vectors."""
    n, rows, _, channels = sch.get_loops(layout)
    sch.parallel(sch.fuse(n, rows))
    extent = int(sch.get(channels).extent)
    if extent % LAYOUT_VECTOR_BYTES == 0:
        sch.vectorize(sch.split(channels, [None, LAYOUT_VECTOR_BYTES])[1])
