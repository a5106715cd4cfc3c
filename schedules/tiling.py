"""Helpers shared by the rules: tile-size choice and finding loops after ``compute_at``."""

from __future__ import annotations

from typing import Sequence

from tvm import s_tir


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
