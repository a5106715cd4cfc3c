"""The one timing harness of the benchmarks: every contender goes through it, so that how a
contender is timed is a property of this code, not of care taken in each runner.

* **Calls as a user makes them.** On this host every contender, PyTorch and ours, is timed
  by the same Python loop around one call: a PyTorch module or functional call (which
  allocates its output), our operator's ``run(args)`` on prepared device tensors (which
  writes into a preallocated output, as inside a built model), or a built model's Relax VM
  ``main`` (which allocates its output). Call overhead is in every number.
  On a board (``--rpc``) only our kernels run, timed by TVM's ``time_evaluator`` there (the
  board's clock, no call overhead), since a Python loop would time the network.
* **Median** of ``repeat`` batches, each of as many calls as last at least ``min_ms``, after
  a warm-up call.
* **Cold weights**: a contender gives several calls with their own copies of the weights,
  and the loop cycles through them; with copies whose bytes add up to twice the last-level
  caches of the CPUs it may run on, each call finds its weights evicted, as in a model
  larger than the cache. The copies exist only while that contender is timed.
* **Threads are pinned by nobody**: :func:`unpin_threads` stops TVM from binding its workers
  to cores (``TVM_BIND_THREADS=0``, read when its pool is configured), PyTorch's OpenMP
  threads are unbound by default, and :func:`pinned_threads` checks both at the end.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np

W = TypeVar("W")

TIMING_LOCAL = ("every contender timed by the same Python loop around one call as a user makes it "
                "(PyTorch module/functional call; our operator's run() on prepared tensors; a built model's "
                "Relax VM main): call overhead included, median of batches >= 20 ms")
TIMING_BOARD = "our kernels timed on the board by TVM's time_evaluator (board clock, no call overhead)"


@dataclass
class Runner:
    """A prepared contender: ``time(repeat)`` gives its median milliseconds per call;
    ``impl`` labels the implementation in the results."""

    impl: str
    time: Callable[[int], float]


def time_calls(calls: Sequence[Callable[[], object]], repeat: int, min_ms: float = 20.0) -> float:
    """Median milliseconds per call over ``repeat`` batches lasting >= ``min_ms`` each,
    cycling through ``calls`` (one per weight copy; a single call for hot weights)."""
    cycle = itertools.cycle(calls)
    for _ in range(len(calls)):                   # warm-up: every copy once
        next(cycle)()
    start = time.perf_counter()
    next(cycle)()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, math.ceil(min_ms / 1e3 / once))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            next(cycle)()
        samples.append((time.perf_counter() - start) / number)
    return float(np.median(samples)) * 1e3


def runner(impl: str, make_calls: Callable[[], Sequence[Callable[[], object]]]) -> Runner:
    """A :class:`Runner` that makes its calls (and their weight copies) with ``make_calls``
    when it is timed, times them with :func:`time_calls` and lets them go."""
    return Runner(impl, lambda repeat: time_calls(make_calls(), repeat))


def with_copies(weights: W, copy: Callable[[W], W], nbytes: int, cold: bool,
                call: Callable[[W], object]) -> Callable[[], list[Callable[[], object]]]:
    """``make_calls`` for :func:`runner`: ``call(weights)``, and when ``cold`` the same call
    on as many fresh ``copy(weights)`` as :func:`weight_copies` asks for ``nbytes`` each.
    The copies are made when the runner is timed and dropped afterwards."""
    def make_calls():
        copies = [weights] + [copy(weights) for _ in range(weight_copies(nbytes, cold) - 1)]
        return [lambda w=w: call(w) for w in copies]
    return make_calls


def board_runner(impl: str, f, args: list, stage: str = "kernel") -> Runner:
    """A :class:`Runner` timing a :class:`tvm_ternary.CompiledOperator`'s kernel or data
    stage on its board with TVM's time evaluator (see :data:`TIMING_BOARD`)."""
    return Runner(impl, lambda repeat: float(np.median(f.time(args, repeat=repeat, min_repeat_ms=20,
                                                                stage=stage))) * 1e3)


def _size_bytes(text: str) -> int:
    """``"32768K"`` -> bytes (sysfs cache sizes)."""
    text = text.strip()
    return int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)


def last_level_cache_bytes() -> int:
    """Bytes of last-level cache the CPUs of this process's affinity mask can fill: the
    sum over the distinct instances of the highest cache level (two chiplets or sockets
    have two), from Linux sysfs; 64 MiB if unknown."""
    level, instances = 0, {}
    for cpu in sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []:
        for index in Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*"):
            try:
                this = int((index / "level").read_text())
                shared = (index / "shared_cpu_list").read_text().strip()
                size = _size_bytes((index / "size").read_text())
            except (OSError, ValueError):
                continue
            if this > level:
                level, instances = this, {}
            if this == level:
                instances[shared] = size
    return sum(instances.values()) or 64 << 20


def weight_copies(bytes_per_copy: int, cold: bool) -> int:
    """How many copies of a contender's weights to cycle through: 1 when hot; when cold,
    enough to add up to twice the last-level cache (and at least 2)."""
    if not cold:
        return 1
    return max(2, math.ceil(2 * last_level_cache_bytes() / max(bytes_per_copy, 1)))


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not all CPUs of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(n: int) -> None:
    """Use ``n`` threads in both TVM's pool and PyTorch; checks TVM took them (its pool can
    only shrink below the size it started with, see ``tvm_ternary/__init__.py``)."""
    import torch
    import tvm
    torch.set_num_threads(n)
    tvm.get_global_func("runtime.config_threadpool")(1, n)
    got = tvm.get_global_func("runtime.NumThreads")()
    if got != n:
        raise SystemExit(f"benchmarks: TVM runs {got} threads, not {n}; set TVM_NUM_THREADS={n} or more")


def unpin_threads() -> None:
    """Keep TVM from pinning its worker threads one per core (PyTorch's are not pinned
    either); call before TVM's thread pool is configured."""
    os.environ["TVM_BIND_THREADS"] = "0"


def pinned_threads() -> list[str]:
    """Threads of this process whose affinity is narrower than the process's CPUs, as
    ``"name (tid): cpus"``; empty when nothing is pinned (Linux; empty elsewhere)."""
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    pinned = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            cpus = os.sched_getaffinity(int(task.name))
            name = (task / "comm").read_text().strip()
        except (OSError, ValueError):
            continue                                  # the thread ended meanwhile
        if cpus != allowed:
            pinned.append(f"{name} ({task.name}): {sorted(cpus)}")
    return pinned
