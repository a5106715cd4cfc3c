"""The data stage: packing values into (pre-padded) bit planes, or FGQ's byte layout.

Packing reads NCHW values and writes ``[N, P, H', W', Cw]`` words. The rule walks the
32 channels of a word in the outer (reduction) loop, all planes of a channel together (one
load and one set of threshold compares serve every plane: 0.089 -> 0.070 ms for a 64x56x56
ternary input) and a whole padded image row in the inner, vectorized loop, so every load
is a contiguous row of values and the row's words stay in registers until all 32 bits are
in, then are stored once.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .generic import inline_quantizer
from .tiling import TILE_SCOPE

MAX_VECTOR_ROW = 64
"""Rows up to this many values are vectorized whole (LLVM splits them into registers)."""


class ActivationPack(ScheduleRule):
    """Schedule rule for the ``pack`` stage of conv2d (rank 2); dense packing is left to
    the generic rule (a single row of at most a few thousand values)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool, *,
              seed: int | None = None) -> s_tir.Schedule | None:
        """Schedule ``func`` (None if the rule does not apply); ``tunable`` samples the
        vector row length from the schedule's random state, seeded by ``seed`` (1 to
        2**31 - 1; None: the device's random source)."""
        sch = s_tir.Schedule(func, seed=seed)
        inline_quantizer(sch)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) != 1 or sch.get(blocks[0]).name_hint != "pack":
            return None
        pack = blocks[0]
        loops = sch.get_loops(pack)
        if len(loops) != 6:                  # n, plane, h, w, word, bit
            return None
        n, plane, h, w, word, bit = loops
        width = int(sch.get(w).extent)
        sch.reorder(n, h, word, bit, plane, w)
        sch.parallel(sch.fuse(n, h))
        local = sch.cache_write(pack, 0, TILE_SCOPE)
        sch.reverse_compute_at(local, word)
        sch.unroll(plane)
        if width <= MAX_VECTOR_ROW:
            sch.vectorize(w)
        else:
            factor = sch.get(sch.sample_categorical([8, 16, 32], [0.34, 0.33, 0.33])) if tunable else 16
            sch.vectorize(sch.split(w, [None, int(factor)])[1])
        sch.decompose_reduction(pack, bit)
        return sch
