"""Helpers shared by the rules: tile-size choice and finding loops after ``compute_at``."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

REDUCE = 2  # IterVar type of a commutative reduction

TILE_SCOPE = "global"
"""Storage scope of the per-tile buffers (accumulators, threshold bits, packed words).
On CPU, TVM serves every "local" buffer, and any buffer of at least :data:`STACK_BYTES`,
with a workspace call (``TVMBackendAllocWorkspace``/``Free``) in each iteration of the
parallel loop, which cost 10-15% on ResNet-18 layers; a smaller "global" buffer becomes a
stack alloca that LLVM promotes to registers."""

STACK_BYTES = 1024
"""TVM's ``kMaxStackAlloca``: buffers of fewer bytes live on the stack."""


class KernelRule(ScheduleRule):
    """Base of the rules that tuning searches (the kernel rules, ``ActivationPack``,
    ``FloatCPU``): :meth:`schedule` works in place on a schedule (MetaSchedule's form),
    :meth:`apply` on a PrimFunc (dlight's)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool, *,
              seed: int | None = None) -> s_tir.Schedule | None:
        """Schedule ``func`` (None if the rule does not apply). ``seed`` (1 to 2**31 - 1) seeds
        the schedule's random state, which ``tunable`` samples the knobs from: the same seed
        gives the same sample; None draws it from the device's random source."""
        return self.schedule(s_tir.Schedule(func, seed=seed), target, tunable)

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``sch`` in place; None, untouched, if the rule does not apply."""
        raise NotImplementedError


def tile_budget(sch: s_tir.Schedule, block, registers: int) -> int:
    """Accumulator vectors a tile of ``block`` (``[..., V]``) may hold: the ISA's register
    budget, and fewer than :data:`STACK_BYTES` so the tile stays on the stack."""
    buffer = sch.get(block).writes[0].source
    vector_bytes = int(buffer.shape[-1]) * tvm.DataType(buffer.dtype).bits // 8
    return min(registers, (STACK_BYTES - 1) // vector_bytes)


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def pick_tile(extent: int, per_item: int, budget: int) -> int:
    """The largest divisor ``d`` of ``extent`` with ``d * per_item <= budget`` registers.

    When that leaves a tile of one or two items although the whole extent would overrun
    the budget by at most a few registers (7x7 layers: the only divisors of 7 are 1 and 7),
    the whole extent wins: a few spills cost less than no register reuse.
    """
    fits = [d for d in divisors(extent) if d * per_item <= budget]
    best = fits[-1] if fits else 1
    if best <= 2 and extent * per_item <= budget + 6:
        return extent
    return best


@dataclass(frozen=True)
class ColumnTile:
    """The vector values a popcount conv tile that unrolls the kernel's ``columns`` inside it
    (:attr:`~.isa.Isa.taps_in_tile`) keeps live besides its accumulators: the broadcast input
    words of ``input_planes`` planes at the ``pixels + (columns - 1) * dilation`` positions a
    row of unit stride reads, and one column's ``weight_planes`` weight vectors per channel
    block (LLVM loads each column's weights just before their use). All of them together stay
    within ``registers`` (:attr:`~.isa.Isa.tile_registers`). At stride 2 the row reads about
    twice as many positions, but each serves fewer pixels and LLVM streams them: counted at
    stride 1 they fit what ran best on ResNet-18's stride-2 layers (7-pixel rows). ``stride``
    counts only in :meth:`broadcasts_per_product`."""

    columns: int
    weight_planes: int
    input_planes: int
    registers: int
    dilation: int = 1
    stride: int = 1

    def most_pixels(self, width: int, accumulators_per_pixel: int, blocks: int) -> int:
        """The pixel run (a divisor of ``width``, :func:`pick_tile`) of a tile of ``blocks``
        channel blocks whose values fit :attr:`registers`."""
        fixed = blocks * self.weight_planes + (self.columns - 1) * self.dilation * self.input_planes
        return pick_tile(width, accumulators_per_pixel + self.input_planes, self.registers - fixed)

    def broadcasts_per_product(self, pixels: int, blocks: int) -> float:
        """Broadcast input words per (pixel, block, column) product of a tile of ``pixels`` and
        ``blocks``: per input word and plane its row broadcasts the positions ``pixel * stride
        + column * dilation`` it reads (``pixels + (columns - 1) * dilation`` at unit stride)
        for ``pixels * blocks * columns`` products."""
        positions = {o * self.stride + c * self.dilation for o in range(pixels) for c in range(self.columns)}
        return len(positions) / (pixels * blocks * self.columns)


def fewest_loads(width: int, per_pixel: int, budget: int, blocks: Sequence[int], most_pixels: int = 0,
                 columns: ColumnTile | None = None) -> tuple[int, int]:
    """``(channel blocks, pixels)`` of a conv tile, the blocks among ``blocks``, each with its
    pixel run (:func:`pick_tile` of ``per_pixel`` accumulators per pixel and block, at most
    ``most_pixels`` with a divisor of ``width`` when given, and with ``columns`` inside the
    tile at most what fits its registers, :meth:`ColumnTile.most_pixels`): the pair that loads
    the fewest vectors per product, broadcasts first where they cost most. Per input word a
    tile of ``t`` pixels and ``b`` blocks loads ``b`` weight vectors and ``t`` broadcast inputs
    for ``t * b`` products, so ``1/t + 1/b`` per product (ties: fewer blocks). With several
    ``columns`` (NEON, where a broadcast takes a NEON pipe slot as an ALU operation does, and
    a weight vector's load only the load pipe) the pair with the fewest broadcasts per
    product (:meth:`ColumnTile.broadcasts_per_product`) comes first. With one column (1x1
    kernels) that count is ``1/b`` whatever the pixels, and the tiles of one pixel it picks
    let LLVM unroll short reductions with the epilogue and spill; there both loads count,
    a broadcast twice (the load pipe and a NEON slot): ``1/t + 2/b``. Chosen on
    ``benchmarks/pi_estimate.py``'s estimates of ResNet-18's layers: broadcasts alone ran
    the 3x3 layers fastest; on the 1x1 ones ``1/t + 2/b`` beat all loads counted alike (with
    and without ``--pessimistic``) and does not spill as broadcasts alone did."""
    def pixels(b: int) -> int:
        t = pick_tile(width, per_pixel * b, budget)
        if columns is not None:
            t = min(t, columns.most_pixels(width, per_pixel * b, b))
        return min(t, max(d for d in divisors(width) if d <= most_pixels)) if most_pixels else t

    def cost(bt: tuple[int, int]) -> tuple[float, float, int]:
        b, t = bt
        if columns is None:
            return (0, 1 / t + 1 / b, b)
        if columns.columns == 1:
            return (1 / t + 2 / b, 0, b)
        return (columns.broadcasts_per_product(t, b), 1 / t + 1 / b, b)
    return min(((b, pixels(b)) for b in sorted(blocks)), key=cost)


def loops_by_extent(sch: s_tir.Schedule, block, named_extents: Sequence[tuple[str, int]]) -> dict:
    """Name the loops that ``compute_at`` created around ``block``.

    ``compute_at`` creates one loop per block iterator whose region is wider than one
    point, in iterator order; ``named_extents`` lists the expected iterators in that order
    (unit extents are skipped). Returns ``{name: loop}`` and checks the extents match.
    """
    wanted = [(name, extent) for name, extent in named_extents if extent > 1]
    loops = sch.get_loops(block)[-len(wanted):] if wanted else []
    found = {}
    for (name, extent), loop in zip(wanted, loops):
        actual = int(sch.get(loop).extent)
        if actual != extent:
            raise RuntimeError(f"schedules: loop for {name} has extent {actual}, expected {extent}")
        found[name] = loop
    return found


def acc_shape(sch, acc):
    """(G terms, V lanes, reduction extents) of the ``acc`` block ``[N, Kb, *out, G, V]``."""
    iters = sch.get(acc).iter_vars
    spatial = [int(iv.dom.extent) for iv in iters if int(iv.iter_type) != REDUCE]
    return spatial[-2], spatial[-1], [int(iv.dom.extent) for iv in iters if int(iv.iter_type) == REDUCE]


def register_tile(sch, acc, tile_names, groups, lanes, reduce_extents, parallel, tunable, permute=True, inside=()):
    """After ``compute_at``: reductions outside, the tile unrolled and vectorized inside,
    accumulators in registers; parallelizes ``parallel``. The reductions named in ``inside``
    (e.g. ``"r1"``) go between the others and the tile, unrolled with it. ``tunable`` samples
    the unroll depth and, with ``permute`` and integer accumulators (whose sums do not depend
    on the order), the order of the outer reduction loops. Returns those, outermost first."""
    named = [*tile_names, ("group", groups), ("lane", lanes),
             *((f"r{i}", e) for i, e in enumerate(reduce_extents))]
    loops = loops_by_extent(sch, acc, named)
    tile = [loops[name] for name, _ in named if name in loops and not name.startswith("r")]
    reduce = [loops[name] for name, _ in named if name in loops and name.startswith("r") and name not in inside]
    inner = [loops[name] for name in inside if name in loops]
    if reduce and tunable and permute and "int" in str(sch.get(acc).writes[0].source.dtype):
        reduce = sample_order(sch, reduce)           # integer sums only: float sums depend on the order
    if reduce or inner:
        sch.reorder(*reduce, *inner, *tile)
    for loop in inner:
        sch.unroll(loop)
    sch.set_scope(acc, 0, TILE_SCOPE)
    sch.parallel(parallel)
    if "lane" in loops:
        sch.vectorize(loops["lane"])
    for name in ("pixel", "batch", "block", "group"):
        if name in loops:
            sch.unroll(loops[name])
    if reduce and tunable:
        sample_unroll(sch, parallel)
    return reduce


def group_stage_loop(sch, acc, tile, lanes: int, reduce: list):
    """Where a per-group stage goes inside ``acc`` after :func:`register_tile`: the innermost
    reduction loop (over groups) or, with one group, the loop just outside the tile's."""
    if reduce:
        return reduce[-1]
    return sch.get_loops(acc)[-(1 + sum(e > 1 for _, e in tile) + (lanes > 1))]


UNROLL_STEPS = [0, 16, 64, 256]
"""The search's choices of LLVM unrolling (``pragma_auto_unroll_max_step``) over a tile's reduction."""

CHANNEL_BLOCKS = (1, 2, 4)
"""The search's choices of output-channel blocks per conv tile (those that divide the
channel blocks and leave a pixel's accumulators in the register budget)."""


def sample_unroll(sch, loop) -> None:
    """Annotate ``loop`` with a sampled unroll depth (:data:`UNROLL_STEPS`) for LLVM."""
    step = sch.sample_categorical(UNROLL_STEPS, [1 / len(UNROLL_STEPS)] * len(UNROLL_STEPS))
    sch.annotate(loop, "pragma_auto_unroll_max_step", step)


def sample_order(sch, loops: list) -> list:
    """``loops`` in a sampled order (one of their permutations, the given one included)."""
    if len(loops) < 2:
        return loops
    orders = list(itertools.permutations(range(len(loops))))
    pick = int(sch.get(sch.sample_categorical(list(range(len(orders))), [1 / len(orders)] * len(orders))))
    return [loops[i] for i in orders[pick]]


def sample_choice(sch: s_tir.Schedule, choices: Sequence[int], default: int) -> int:
    """One of ``choices`` and ``default`` (the hand schedule's value, so it stays in the
    space), sampled uniformly; ``default`` without a sample when it is the only one."""
    choices = sorted(set(choices) | {default})
    if len(choices) == 1:
        return default
    return int(sch.get(sch.sample_categorical(choices, [1 / len(choices)] * len(choices))))


def sample_channel_blocks(sch, ko, per_pixel: int, budget: int, default: int) -> int:
    """A sampled count of output-channel blocks per conv tile among :data:`CHANNEL_BLOCKS`
    and ``default``."""
    blocks = int(sch.get(ko).extent)
    return sample_choice(sch, [c for c in CHANNEL_BLOCKS if blocks % c == 0 and c * per_pixel <= budget], default)


def tile_conv(sch, n, ko, spatial, ki, per_pixel, budget, tunable, channel_blocks=1, reduction="acc", pixels=None):
    """Tile an NCHW output (loops ``n, ko, oh, ow, ki``) by ``channel_blocks`` blocks of output
    channels and a pixel run of its rows (``pixels`` if given, else the most for which
    ``blocks x tile x per_pixel`` accumulators fit the register budget; sampled when
    ``tunable``), and compute the ``reduction`` block there. Returns the tile's names and the
    fused parallel loop."""
    oh, ow = spatial
    if tunable:
        channel_blocks = sample_channel_blocks(sch, ko, per_pixel, budget, channel_blocks)
    groups = per_pixel * channel_blocks
    width = int(sch.get(ow).extent)
    if tunable:
        factors = sch.sample_perfect_tile(ow, n=2, max_innermost_factor=max(1, 2 * budget // groups))
    else:
        factors = [None, pixels or pick_tile(width, groups, budget)]
    owo, owi = sch.split(ow, factors)
    koo, koi = sch.split(ko, [None, channel_blocks])
    sch.reorder(n, koo, oh, owo, koi, owi, ki)
    sch.compute_at(sch.get_sblock(reduction), owo)
    tile = int(sch.get(owi).extent)
    fused = 3 if not tunable else 2 + int(sch.get(sch.sample_categorical([0, 1], [0.3, 0.7])))
    parallel = sch.fuse(n, koo, oh) if fused == 3 else sch.fuse(n, koo)
    return [("block", channel_blocks), ("pixel", tile)], parallel


MAX_BATCH_TILE = 4
"""Batch rows per dense tile: each reuses the tile's weight vectors once more."""


def batch_tile(batch: int, per_row: int, budget: int) -> int:
    """Largest divisor of ``batch`` up to :data:`MAX_BATCH_TILE` whose ``per_row``
    accumulators per row fit the register budget."""
    return max(d for d in divisors(batch) if d <= MAX_BATCH_TILE and d * per_row <= budget)


def tile_dense(sch, n, ko, ki, groups, budget, tunable, reduction="acc"):
    """Tile a dense output (loops ``n, ko, ki``) by batch rows and output-channel blocks that
    fit ``groups`` accumulators each in the register budget, and compute the ``reduction``
    block there."""
    batch, blocks = int(sch.get(n).extent), int(sch.get(ko).extent)
    if tunable:
        nf = sch.sample_perfect_tile(n, n=2, max_innermost_factor=MAX_BATCH_TILE)
        kf = sch.sample_perfect_tile(ko, n=2, max_innermost_factor=max(1, budget // groups))
    else:
        nt = batch_tile(batch, groups, budget)
        nf = [None, nt]
        kf = [None, max(d for d in divisors(blocks) if d * nt * groups <= budget)]
    no, ni = sch.split(n, nf)
    kso, ksi = sch.split(ko, kf)
    sch.reorder(kso, no, ni, ksi, ki)
    sch.compute_at(sch.get_sblock(reduction), no)
    tile = [("batch", int(sch.get(ni).extent)), ("block", int(sch.get(ksi).extent))]
    return tile, sch.fuse(kso, no)


def tile_output(sch, out, lanes, per_item, budget, tunable, channel_blocks=1, reduction="acc", pixels=None):
    """Split the output channels of ``out`` (``[N, K, *spatial]``) by ``lanes``, or take its
    channel blocks (a blocked conv2d output ``[N, K/lanes, OH, OW, lanes]``), and tile it
    (:func:`tile_conv` with ``channel_blocks`` and ``pixels``, or :func:`tile_dense`),
    computing the ``reduction`` block in the tile; returns the tile's names and the parallel loop."""
    loops = sch.get_loops(out)
    if len(loops) == 5:                 # blocked NCHW{lanes}c
        n, ko, *spatial, ki = loops
        return tile_conv(sch, n, ko, spatial, ki, per_item, budget, tunable, channel_blocks, reduction, pixels)
    n, k, *spatial = loops
    ko, ki = sch.split(k, [None, lanes])
    if spatial:
        return tile_conv(sch, n, ko, spatial, ki, per_item, budget, tunable, channel_blocks, reduction, pixels)
    return tile_dense(sch, n, ko, ki, per_item, budget, tunable, reduction)
