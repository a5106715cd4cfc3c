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

from tvm import s_tir
from tvm.target import Target

from .generic import inline_quantizer
from .intrinsics import MOVEMASK_LANES, movemask_name
from .isa import isa_of
from .tiling import TILE_SCOPE, KernelRule, sample_choice, sample_unroll

MAX_VECTOR_ROW = 64
"""Rows up to this many values are vectorized whole (LLVM splits them into registers)."""


class ActivationPack(KernelRule):
    """Schedule rule for the ``pack`` stage of conv2d (rank 2) and the patch gather that
    may follow it or stand alone, and for conv2d's quantize + byte layout; dense packing is
    left to the generic rule (a single row of at most a few thousand values).

    ``tunable`` samples, where the stage has them: the vector length along rows
    (:func:`sample_vector`; packing and patch gathers), the vector width of the byte
    quantize stage, and LLVM's unroll depth over a row's loops
    (:func:`~.tiling.sample_unroll`; every stage but the stand-alone gather)."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``sch`` in place; None, untouched, if the rule does not apply."""
        blocks = _blocks(sch)
        if set(blocks) == {"levels", "layout"} and len(sch.get_loops(blocks["layout"])) == 4:
            return _byte_rows(sch, blocks, isa_of(target).int32_lanes, tunable)
        names = set(blocks) - {"levels"}            # the quantizer's stage is inlined below
        if names not in ({"bits", "chunk", "pack"}, {"patches"}, {"pack"}, {"pack", "patches"}):
            return None
        if "pack" in names and len(sch.get_loops(blocks["pack"])) not in (6, 7):
            return None
        inline_quantizer(sch)
        blocks = _blocks(sch)
        if names == {"bits", "chunk", "pack"}:     # from a channel-blocked input
            return _pack_blocked(sch, blocks, tunable)
        if names == {"patches"}:       # the gather alone (its input packed by a previous kernel)
            _gather_rows(sch, blocks["patches"], tunable)
            return sch
        pack = blocks["pack"]
        loops = sch.get_loops(pack)
        if len(loops) == 7:                  # stored by column phase (a strided patch gather reads it)
            n, plane, h, phase, w, word, bit = loops
            sch.reorder(n, h, word, bit, plane, phase, w)
            sch.unroll(phase)
        else:                                # n, plane, h, w, word, bit
            n, plane, h, w, word, bit = loops
            sch.reorder(n, h, word, bit, plane, w)
        row = sch.fuse(n, h)
        sch.parallel(row)
        local = sch.cache_write(pack, 0, TILE_SCOPE)
        sch.reverse_compute_at(local, word)
        sch.unroll(plane)
        _vectorize_row(sch, w, tunable)
        sch.decompose_reduction(pack, bit)
        if tunable:
            sample_unroll(sch, row)
        if "patches" in blocks:
            _gather_rows(sch, blocks["patches"], tunable)
        return sch


def _blocks(sch: s_tir.Schedule) -> dict:
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}


ROW_VECTORS = (8, 16, 32)
"""The search's vector lengths along a row longer than one of them (besides the whole
row when it has at most :data:`MAX_VECTOR_ROW` values)."""


def sample_vector(sch: s_tir.Schedule, width: int, default: int) -> int:
    """A sampled vector length for a row of ``width`` values: the whole row (if at most
    :data:`MAX_VECTOR_ROW`), one of :data:`ROW_VECTORS` below it, or ``default``."""
    whole = [width] if width <= MAX_VECTOR_ROW else []
    return sample_choice(sch, [v for v in ROW_VECTORS if v < width] + whole, default)


def _vectorize_row(sch: s_tir.Schedule, loop, tunable: bool, default: int = 16) -> None:
    """Vectorize the row loop ``loop``: whole if it has at most :data:`MAX_VECTOR_ROW`
    values, else in runs of ``default``; ``tunable`` samples the length instead."""
    width = int(sch.get(loop).extent)
    length = width if width <= MAX_VECTOR_ROW else default
    if tunable:
        length = sample_vector(sch, width, length)
    sch.vectorize(loop if length >= width else sch.split(loop, [None, length])[1])


def _byte_rows(sch: s_tir.Schedule, blocks: dict, lanes: int, tunable: bool) -> s_tir.Schedule:
    """A byte scheme's quantize + layout (``levels``, ``layout`` ``[N, H', W', C']``), parallel
    over padded rows: each row's levels for every channel first, vectorized along the input
    row (contiguous loads, the quantizer's arithmetic on whole vectors), then the row's
    channels-last bytes from them."""
    levels, layout = blocks["levels"], blocks["layout"]
    n, h, _, channel = sch.get_loops(layout)
    row = sch.fuse(n, h)
    sch.parallel(row)
    sch.compute_at(levels, row)
    vector = lanes
    if tunable:
        vector = sample_choice(sch, [v for v in (lanes // 2, 2 * lanes, 4 * lanes) if v >= 4], lanes)
        sample_unroll(sch, row)
    sch.vectorize(sch.split(sch.get_loops(levels)[-1], [None, vector])[1])
    shape = sch.get(levels).writes[0].source.shape
    block = int(shape[-1]) if len(shape) == 5 else 0       # [N, C/B, H, W, B]: a channel-blocked input
    if block:                             # a pixel's bytes are runs of B contiguous levels
        sch.vectorize(sch.split(channel, [None, block])[1])
    else:
        sch.unroll(channel)
    return sch


def _pack_blocked(sch: s_tir.Schedule, blocks: dict, tunable: bool) -> s_tir.Schedule:
    """Packing a channel-blocked input (``bits``, ``chunk``, ``pack``): parallel over rows;
    per pixel and word, each vector of ``B`` channels is loaded once, compared for every
    plane and turned into ``B`` bits by the movemask intrinsic; the word is stored once."""
    pack, chunk, bits = blocks["pack"], blocks["chunk"], blocks["bits"]
    n, plane, h, w, word, part = sch.get_loops(pack)
    sch.reorder(n, h, w, word, part, plane)
    row = sch.fuse(n, h)
    sch.parallel(row)
    if tunable:
        sample_unroll(sch, row)
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


def _gather_rows(sch: s_tir.Schedule, patches, tunable: bool) -> None:
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
    _vectorize_row(sch, ow, tunable)
    sch.decompose_reduction(patches, slot)
