"""A plain schedule for the float operators a model keeps (a float stem and classifier,
pooling, residual adds) after Relax lowers them: TVM's default CPU pipeline leaves those
loops serial and scalar.

:class:`FloatCPU` inlines elementwise stages, then for each remaining block vectorizes a
run of its innermost spatial loop, puts the block's reduction loops outside that run
(accumulators stay in registers), and runs the outer spatial loops in parallel. A stage
feeding a reduction (the padding of a pooling) is computed per run instead of inlined: the
reduction then reads a small padded tile without a bounds check per tap (ResNet-18's 3x3
max pool went from 0.70 to 0.19 ms). Reductions keep their order, so results are those of
the unscheduled function.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from .tiling import REDUCE, TILE_SCOPE, KernelRule, divisors, sample_choice, sample_unroll

VECTOR_RUN = 16
"""Longest run of the innermost spatial loop computed as one vector (the hand schedule)."""

MAX_TUNED_RUN = 64
"""Longest run the search tries."""


def _reduces(sch: s_tir.Schedule, block) -> bool:
    return any(int(iv.iter_type) == REDUCE for iv in sch.get(block).iter_vars)


def _feeds_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(_reduces(sch, consumer) for consumer in sch.get_consumers(block))


def _private_producer(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` feeds one reduction and nothing else: it is computed per run inside
    that reduction (a stage that also feeds another, as softmax's ``exp``, runs whole)."""
    consumers = sch.get_consumers(block)
    return len(consumers) == 1 and _reduces(sch, consumers[0])


def _inline_stages(sch: s_tir.Schedule) -> None:
    """Inline producers and elementwise consumers where TVM allows it, except producers of
    a reduction (computed per run, see the module doc)."""
    changed = True
    while changed:
        changed = False
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if len(blocks) <= 1:
            return
        for block in blocks:
            inlines = (sch.reverse_compute_inline,) if _feeds_reduction(sch, block) else \
                (sch.compute_inline, sch.reverse_compute_inline)
            for inline in inlines:
                try:
                    inline(block)
                except s_tir.ScheduleError:      # the stage cannot be inlined: any other error is a bug
                    continue
                changed = True
                break
            if changed:
                break


class FloatCPU(KernelRule):
    """Parallel outer loops, vectorized inner runs, reductions outside the runs.

    ``tunable`` samples each block's run length (divisors of the innermost spatial extent
    up to :data:`MAX_TUNED_RUN`, the hand value included) and LLVM's unroll depth over the
    parallel loop's body."""

    def schedule(self, sch: s_tir.Schedule, target: Target, tunable: bool) -> s_tir.Schedule:
        """Schedule ``sch`` in place; always a schedule: blocks it cannot handle keep their loops."""
        _inline_stages(sch)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if _private_producer(sch, block):
                continue                      # computed inside its consumer's runs
            iters = sch.get(block).iter_vars
            loops = sch.get_loops(block)
            if len(loops) != len(iters):
                continue                      # not a plain loop nest: leave it
            spatial = [lp for lp, iv in zip(loops, iters) if int(iv.iter_type) != REDUCE]
            reduce = [lp for lp, iv in zip(loops, iters) if int(iv.iter_type) == REDUCE]
            if not spatial:
                continue
            inner_extent = int(sch.get(spatial[-1]).extent)
            run = max(d for d in divisors(inner_extent) if d <= VECTOR_RUN)
            if tunable:
                run = sample_choice(sch, [d for d in divisors(inner_extent) if 1 < d <= MAX_TUNED_RUN], run)
            outer, inner = sch.split(spatial[-1], [None, run])
            sch.reorder(*spatial[:-1], outer, *reduce, inner)
            if reduce:
                local = sch.cache_write(block, 0, TILE_SCOPE)
                sch.reverse_compute_at(local, outer)
                sch.vectorize(sch.get_loops(local)[-1])
                for producer in sch.get_producers(block):
                    if _private_producer(sch, producer):
                        sch.compute_at(producer, outer)
                        sch.vectorize(sch.get_loops(producer)[-1])
            elif run > 1:
                sch.vectorize(inner)
            parallel = sch.fuse(*spatial[:-1], outer) if spatial[:-1] else outer
            sch.parallel(parallel)
            if reduce:
                sch.decompose_reduction(block, reduce[0])
            if tunable:
                sample_unroll(sch, parallel)
        return sch
