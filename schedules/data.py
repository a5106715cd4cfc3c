"""The data stage: packing values into (pre-padded) bit planes, or FGQ's byte layout.

Packing reads NCHW values and writes ``[N, P, H', W', Cw]`` words. The rule walks the
32 channels of a word in the outer (reduction) loop, all planes of a channel together (one
load and one set of threshold compares serve every plane: 0.089 -> 0.070 ms for a 64x56x56
ternary input) and a whole padded image row in the inner, vectorized loop, so every load
is a contiguous row of values and the row's words stay in registers until all 32 bits are
in, then are stored once. Small-channel conv2d gathers the padded planes into patches
(``patches``, see the patch layout in :mod:`tvm_ternary.packing`) in the same function.
The byte schemes' quantize stage computes a row's levels as vectors, then lays the row out
channels last.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .generic import inline_quantizer
from .intrinsics import MOVEMASK_LANES, movemask_name
from .isa import isa_of
from .tiling import TILE_SCOPE

MAX_VECTOR_ROW = 64
"""Rows up to this many values are vectorized whole (LLVM splits them into registers)."""


class ActivationPack(ScheduleRule):
    """Schedule rule for the ``pack`` stage of conv2d (rank 2) and the patch gather that
    may follow it or stand alone, and for conv2d's quantize + byte layout; dense packing is
    left to the generic rule (a single row of at most a few thousand values)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool, *,
              seed: int | None = None) -> s_tir.Schedule | None:
        """Schedule ``func`` (None if the rule does not apply); ``tunable`` samples the
        vector row length from the schedule's random state, seeded by ``seed`` (1 to
        2**31 - 1; None: the device's random source)."""
        sch = s_tir.Schedule(func, seed=seed)
        blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if set(blocks) == {"levels", "layout"} and len(sch.get_loops(blocks["layout"])) == 4:
            return _byte_rows(sch, blocks, isa_of(target).int32_lanes)
        inline_quantizer(sch)
        blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}
        if set(blocks) == {"bits", "chunk", "pack"}:     # from a channel-blocked input
            return _pack_blocked(sch, blocks)
        if set(blocks) == {"patches"}:       # the gather alone (its input packed by a previous kernel)
            _gather_rows(sch, blocks["patches"])
            return sch
        if set(blocks) - {"patches"} != {"pack"}:
            return None
        pack = blocks["pack"]
        loops = sch.get_loops(pack)
        if len(loops) == 7:                  # stored by column phase (a strided patch gather reads it)
            n, plane, h, phase, w, word, bit = loops
            sch.reorder(n, h, word, bit, plane, phase, w)
            sch.unroll(phase)
        elif len(loops) == 6:                # n, plane, h, w, word, bit
            n, plane, h, w, word, bit = loops
            sch.reorder(n, h, word, bit, plane, w)
        else:
            return None
        width = int(sch.get(w).extent)
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
        if "patches" in blocks:
            _gather_rows(sch, blocks["patches"])
        return sch


def _byte_rows(sch: s_tir.Schedule, blocks: dict, lanes: int) -> s_tir.Schedule:
    """A byte scheme's quantize + layout (``levels``, ``layout`` ``[N, H', W', C']``), parallel
    over padded rows: each row's levels for every channel first, vectorized along the input
    row (contiguous loads, the quantizer's arithmetic on whole vectors), then the row's
    channels-last bytes from them."""
    levels, layout = blocks["levels"], blocks["layout"]
    n, h, _, channel = sch.get_loops(layout)
    row = sch.fuse(n, h)
    sch.parallel(row)
    sch.compute_at(levels, row)
    sch.vectorize(sch.split(sch.get_loops(levels)[-1], [None, lanes])[1])
    sch.unroll(channel)
    return sch


def _pack_blocked(sch: s_tir.Schedule, blocks: dict) -> s_tir.Schedule:
    """Packing a channel-blocked input (``bits``, ``chunk``, ``pack``): parallel over rows;
    per pixel and word, each vector of ``B`` channels is loaded once, compared for every
    plane and turned into ``B`` bits by the movemask intrinsic; the word is stored once."""
    pack, chunk, bits = blocks["pack"], blocks["chunk"], blocks["bits"]
    n, plane, h, w, word, part = sch.get_loops(pack)
    sch.reorder(n, h, w, word, part, plane)
    sch.parallel(sch.fuse(n, h))
    sch.compute_at(chunk, part)
    *_, chunk_plane, chunk_lane = sch.get_loops(chunk)
    sch.compute_at(bits, chunk_plane)
    lanes = int(sch.get(sch.get_loops(bits)[-1]).extent)
    sch.set_scope(bits, 0, TILE_SCOPE)
    sch.set_scope(chunk, 0, TILE_SCOPE)
    local = sch.cache_write(pack, 0, TILE_SCOPE)
    sch.reverse_compute_at(local, word)
    sch.vectorize(sch.get_loops(bits)[-1])
    for loop in (part, plane):
        sch.unroll(loop)
    sch.decompose_reduction(pack, part)
    sch.decompose_reduction(chunk, chunk_lane)
    if lanes in MOVEMASK_LANES:
        sch.tensorize(sch.get_loops(sch.get_sblock("chunk_update"))[-1], movemask_name(lanes))
    return sch


def _gather_rows(sch: s_tir.Schedule, patches) -> None:
    """The patch gather (``[N, P, OH, OW, Rw]``): parallel over output rows; per word and
    plane, the taps' shifted words or-ed into a row of a local copy of the output row,
    vectorized along it; the row is stored once, contiguously (storing each word's row
    straight to ``[.., OW, Rw]`` would scatter)."""
    n, plane, oh, ow, word, slot = sch.get_loops(patches)
    sch.reorder(n, oh, word, plane, slot, ow)
    row = sch.fuse(n, oh)
    sch.parallel(row)
    local = sch.cache_write(patches, 0, TILE_SCOPE)
    sch.transform_layout(patches, ("write", 0), lambda i, p, y, x, w: (i, p, y, w, x))   # rows along ow
    sch.reverse_compute_at(local, row)
    for loop in (word, plane, slot):     # constant tap offsets: no index division at run time
        sch.unroll(loop)
    width = int(sch.get(ow).extent)
    sch.vectorize(ow if width <= MAX_VECTOR_ROW else sch.split(ow, [None, 16])[1])
    sch.decompose_reduction(patches, slot)
