"""Register-tiled popcount kernels (ternary, fatnn, bitserial) for conv2d and dense.

The kernel PrimFunc has two blocks (see ``tvm_ternary.operators.compute``): ``acc``, the
popcount reduction with one accumulator per term ``G`` and ``V`` output-channel lanes, and
``out``, which combines the terms (the epilogue). The schedule:

* splits the output channels by ``V`` (the weight block = one vector register of words);
* tiles output pixels (conv2d: along the row) or output-channel blocks and batch rows
  (dense) so that ``tile x G`` accumulators stay in registers;
* computes ``acc`` inside that tile with the reductions (kernel taps, words) outside the
  unrolled tile, so each weight vector is loaded once and each input word is broadcast
  (folded into the instruction where the ISA allows) for ``G`` popcount terms; on NEON the
  kernel's columns are unrolled inside the tile too (:attr:`~.isa.Isa.taps_in_tile`), so
  neighbouring pixels share the input words they read;
* keeps the accumulators in registers (a stack buffer under 1 KiB, see
  :data:`tiling.TILE_SCOPE`), combines and stores them right after the reduction (the
  epilogue never round-trips int32 through memory);
* runs the outer tile loops in parallel.

With the requantize epilogue (blocks ``bits``, ``chunk``, ``pack``, ``repad``
after ``out``), the tile is driven by the packing of the next layer's words instead: for
each output word, row and pixel tile, the word's ``V``-channel blocks are handled one
after another (conv2d, by up to :attr:`~.isa.Isa.conv_channel_blocks` at a time, or all
blocks of a few words at once: on NEON the two blocks of each of two 16-channel words, so
each broadcast input word feeds four blocks; dense keeps the whole word's accumulators):
the ``acc`` tile in registers, thresholds compared on ``V`` lanes at once (``bits``), the
lanes turned into ``V`` bits by the movemask intrinsic (``chunk``) and or-ed into the
word, which is stored once; ``repad`` writes the border afterwards.

With ``tunable`` the tile size, the output-channel blocks per tile (conv2d with an int32,
float or residual epilogue), the number of loops fused into the parallel loop, the order
of the reduction loops (integer accumulators) and their unroll depth are sampled, so
MetaSchedule searches this same space around the hand schedule.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .intrinsics import MOVEMASK_LANES, movemask_name
from .isa import isa_of
from .tiling import (MAX_BATCH_TILE, REDUCE, TILE_SCOPE, ColumnTile, KernelRule, acc_shape, batch_tile, divisors,
                     fewest_loads, register_tile, tile_budget, tile_output)

MAX_EPILOGUE_TILE = 8
"""Pixels per tile with the requantize epilogue, whose bit vectors and movemask chunks need
registers beside the accumulators: 14-pixel tiles measured 3-4% slower than 7 or 8 (Zen 5)."""


def _blocks(sch: s_tir.Schedule) -> dict:
    return {sch.get(b).name_hint: b for b in sch.get_child_blocks(sch.get_sblock("root"))}


def _conv_tile(sch: s_tir.Schedule, acc, out, target: Target, groups: int, budget: int,
               reduce_extents) -> tuple[int, int | None]:
    """``(output-channel blocks, pixels or None)`` of a conv tile (None: the most the
    accumulator budget allows, :func:`.tiling.tile_conv`). Blocks: 2 for the float conv
    kernel, whose every multiply-add otherwise comes with a load (a broadcast input and, per
    tap, the weight vector), so two blocks share each broadcast; for the popcount kernels up
    to the ISA's :attr:`~.isa.Isa.conv_channel_blocks` (4 on NEON; 1 on x86, where two blocks
    measured slower: spills), as many as load the fewest vectors (:func:`.tiling.fewest_loads`,
    within the registers of :func:`_column_tile`)."""
    buffer = sch.get(acc).writes[0].source
    if "float" in str(buffer.dtype):
        return (2 if int(buffer.shape[1]) % 2 == 0 else 1), None
    most = isa_of(target).conv_channel_blocks
    if most == 1 or len(sch.get_loops(out)) < 4:     # dense: batch rows and blocks are tiled elsewhere
        return 1, None
    width = int(sch.get(sch.get_loops(out)[3]).extent)
    choices = [b for b in divisors(int(buffer.shape[1])) if b <= most]
    return fewest_loads(width, groups, budget, choices, columns=_column_tile(sch, acc, target, reduce_extents))


def _taps_inside(sch: s_tir.Schedule, acc, target: Target, reduce_extents) -> tuple[str, ...]:
    """The reduction loops a popcount conv2d tile unrolls inside it: the kernel's columns
    (``r1`` of the reductions kernel rows, columns, words) where the ISA's
    :attr:`~.isa.Isa.taps_in_tile` says so, so one broadcast input word serves every
    (pixel, column) pair of the tile that reads it. Not the float conv kernel's (its sums
    would change order)."""
    integer = "int" in str(sch.get(acc).writes[0].source.dtype)
    return ("r1",) if isa_of(target).taps_in_tile and integer and len(reduce_extents) == 3 else ()


def _column_tile(sch: s_tir.Schedule, acc, target: Target, reduce_extents) -> ColumnTile | None:
    """The registers a tile with the kernel's columns inside (:func:`_taps_inside`) keeps live
    besides its accumulators, from ``acc``'s reads of ``data`` (``[N, Pa, H, W, Cw]``, its
    column index ``ow * stride + column * dilation``) and ``weight`` (``[Kb, Pw, KH, KW, Cw,
    V]``); None without the columns inside."""
    if not _taps_inside(sch, acc, target, reduce_extents):
        return None
    block = sch.get(acc)
    reads = {r.source.name: r for r in block.reads}
    column = [iv.var for iv in block.iter_vars if int(iv.iter_type) == REDUCE][1]
    pixel = [iv.var for iv in block.iter_vars if int(iv.iter_type) != REDUCE][3]
    index = reads["data"].region[3].min
    return ColumnTile(reduce_extents[1], int(reads["weight"].source.shape[1]), int(reads["data"].source.shape[1]),
                      isa_of(target).tile_registers, _coefficient(index, column), _coefficient(index, pixel))


def _coefficient(expr, var) -> int:
    """The integer coefficient of ``var`` in ``expr``, a sum of integer multiples of variables."""
    if isinstance(expr, tirx.Var):
        return int(expr.same_as(var))
    if isinstance(expr, tirx.IntImm):
        return 0
    if isinstance(expr, (tirx.Add, tirx.Sub)):
        sign = 1 if isinstance(expr, tirx.Add) else -1
        return _coefficient(expr.a, var) + sign * _coefficient(expr.b, var)
    if isinstance(expr, tirx.Mul) and isinstance(expr.b, tirx.IntImm):
        return _coefficient(expr.a, var) * int(expr.b.value)
    if isinstance(expr, tirx.Mul) and isinstance(expr.a, tirx.IntImm):
        return int(expr.a.value) * _coefficient(expr.b, var)
    raise ValueError(f"schedules: {expr} is not linear in {var}")


def _block_choices(per_word: int, words: int, most: int) -> list[int]:
    """The output-channel blocks a requantizing conv tile may compute together, at most
    ``most``: a divisor of the ``per_word`` blocks of an output word, or all blocks of ``w``
    words where ``w`` divides the output's ``words`` (on NEON, 2 words of 16 channels where
    their count is even: each broadcast input word then feeds four blocks)."""
    return ([d for d in divisors(per_word) if d <= most]
            + [per_word * w for w in divisors(words)[1:] if per_word * w <= most])


class PopcountKernel(KernelRule):
    """Schedule rule for the packed-scheme kernels on any vector ISA (see module doc)."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``sch`` in place (MetaSchedule's form); None, untouched, if it does not apply."""
        blocks = _blocks(sch)
        if set(blocks) - {"repad"} == {"acc", "out", "bits", "chunk", "pack"}:
            return self._requantize(sch, blocks, target, tunable)
        if set(blocks) == {"acc", "out", "affine"}:     # float epilogue: computed where out was
            sch.compute_inline(blocks.pop("out"))
            blocks["out"] = blocks.pop("affine")
        if set(blocks) != {"acc", "out"}:
            return None
        acc, out = blocks["acc"], blocks["out"]
        groups, lanes, reduce_extents = acc_shape(sch, acc)
        budget = tile_budget(sch, acc, isa_of(target).accumulator_budget)
        blocked = len(sch.get_loops(out)) == 5          # a channel-blocked output [N, K/V, OH, OW, V]
        blocks_per_tile, pixels = _conv_tile(sch, acc, out, target, groups, budget, reduce_extents)
        tile_names, parallel = tile_output(sch, out, lanes, groups, budget, tunable, blocks_per_tile, pixels=pixels)
        reduce = register_tile(sch, acc, tile_names, groups, lanes, reduce_extents, parallel, tunable,
                               inside=_taps_inside(sch, acc, target, reduce_extents))
        if blocked:                                      # contiguous lanes: the epilogue is vector code
            sch.vectorize(sch.get_loops(out)[-1])
        if reduce:
            sch.decompose_reduction(acc, reduce[0])
        return sch



    def _requantize(self, sch, blocks, target, tunable):
        acc, pack, chunk, bits = blocks["acc"], blocks["pack"], blocks["chunk"], blocks["bits"]
        groups, lanes, reduce_extents = acc_shape(sch, acc)
        budget = tile_budget(sch, acc, isa_of(target).accumulator_budget)
        sch.compute_inline(blocks["out"])
        n, plane, *spatial, word, part = sch.get_loops(pack)
        if spatial:                     # conv2d: a word's channel blocks a few at a time, per pixel tile
            oh, ow = spatial
            width = int(sch.get(ow).extent)
            per_word = int(sch.get(part).extent)
            per_tile, pixels = fewest_loads(width, groups, budget, _block_choices(per_word, int(sch.get(word).extent),
                                                                                  isa_of(target).conv_channel_blocks),
                                            MAX_EPILOGUE_TILE, _column_tile(sch, acc, target, reduce_extents))
            if tunable:                 # several blocks: no tile past the register budget
                most = MAX_EPILOGUE_TILE if per_tile == 1 else max(1, budget // (groups * per_tile))
                factors = sch.sample_perfect_tile(ow, n=2, max_innermost_factor=min(MAX_EPILOGUE_TILE, most))
            else:
                factors = [None, pixels]
            owo, owi = sch.split(ow, factors)
            if per_tile > per_word:     # the tile spans words: all blocks of each
                word, tile_words = sch.split(word, [None, per_tile // per_word])
                parts, acc_at = [part], owo
                sch.reorder(n, word, oh, owo, tile_words, part, owi, plane)
            else:
                parts = [part] if per_tile == 1 else sch.split(part, [None, per_tile])
                acc_at = parts[0]
                sch.reorder(n, word, oh, owo, *parts, owi, plane)
            at, parallel_loops, inner = owo, (n, word, oh), (owi, plane)
            tile = [("block", per_tile), ("pixel", int(sch.get(owi).extent))]
        else:                           # dense: a word's channel blocks one at a time, per batch tile
            if tunable:
                nf = sch.sample_perfect_tile(n, n=2, max_innermost_factor=MAX_BATCH_TILE)
            else:
                nf = [None, batch_tile(int(sch.get(n).extent), groups, budget)]
            no, ni = sch.split(n, nf)
            sch.reorder(word, no, part, ni, plane)
            at, parallel_loops, inner, parts = no, (word, no), (ni, plane), [part]
            acc_at = part
            tile = [("batch", int(sch.get(ni).extent))]
        sch.compute_at(chunk, parts[-1])
        *_, chunk_plane, chunk_item, _ = sch.get_loops(chunk)
        sch.compute_at(bits, chunk_item)        # one vector of bits at a time, straight into its movemask
        sch.compute_at(acc, acc_at)             # the tile's channel blocks at once
        sch.set_scope(bits, 0, TILE_SCOPE)
        sch.set_scope(chunk, 0, TILE_SCOPE)
        local = sch.cache_write(pack, 0, TILE_SCOPE)
        sch.reverse_compute_at(local, at)
        reduce = register_tile(sch, acc, tile, groups, lanes, reduce_extents, sch.fuse(*parallel_loops), tunable,
                               inside=_taps_inside(sch, acc, target, reduce_extents) if spatial else ())
        sch.vectorize(sch.get_loops(bits)[-1])
        for loop in (*inner, chunk_plane, chunk_item):
            sch.unroll(loop)
        if "repad" in blocks:
            loops = sch.get_loops(blocks["repad"])
            sch.parallel(sch.fuse(*loops[:3]))
        if reduce:
            sch.decompose_reduction(acc, reduce[0])
        sch.decompose_reduction(pack, parts[0])
        sch.decompose_reduction(chunk, sch.get_loops(chunk)[-1])
        if lanes in MOVEMASK_LANES:
            sch.tensorize(sch.get_loops(sch.get_sblock("chunk_update"))[-1], movemask_name(lanes))
        return sch
