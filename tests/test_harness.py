"""benchmarks/harness.py: the one timing harness of the benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import harness  # conftest puts benchmarks/ on sys.path

from .conftest import BENCHMARKS


def test_time_calls_cycles_through_every_weight_copy():
    counts = [0, 0, 0]
    calls = [lambda i=i: counts.__setitem__(i, counts[i] + 1) for i in range(3)]
    assert harness.time_calls(calls, repeat=3, min_ms=1) > 0
    assert min(counts) > 1 and max(counts) - min(counts) <= 1, counts


def test_weight_copies_exceed_twice_the_last_level_cache():
    llc = harness.last_level_cache_bytes()
    assert harness.weight_copies(4 << 20, cold=False) == 1
    copies = harness.weight_copies(4 << 20, cold=True)
    assert copies >= 2 and copies * (4 << 20) >= 2 * llc
    assert harness.weight_copies(10 * llc, cold=True) == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs 2 or more CPUs to be visible")
def test_pinned_threads_finds_a_pinned_thread():
    before = set(harness.pinned_threads())          # TVM may have pinned this process's main thread
    pinned, release = threading.Event(), threading.Event()

    def pin_and_wait():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        pinned.set()
        release.wait()

    thread = threading.Thread(target=pin_and_wait)
    thread.start()
    pinned.wait()
    try:
        assert len(set(harness.pinned_threads()) - before) == 1
    finally:
        release.set()
        thread.join()


PARALLEL_KERNEL = """
import sys
sys.path.insert(0, {benchmarks!r})
import harness
if {unpin}:
    harness.unpin_threads()
import numpy as np, tvm, tvm_ternary
f = tvm_ternary.op("dense", "ternary", (4, 256), (512, 256), target={{"kind": "llvm", "mcpu": "haswell"}})
tvm.get_global_func("runtime.config_threadpool")(1, {threads})
f(np.ones((4, 256), "int64"), np.ones((512, 256), "int64"))
print(len(harness.pinned_threads()))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs 2 or more CPUs to be visible")
@pytest.mark.parametrize("unpin", [True, False])
def test_unpin_threads_keeps_tvm_from_pinning_its_workers(unpin):
    """The benchmark sets ``TVM_BIND_THREADS=0``: without it TVM binds its threads (which the
    harness would then report), with it none is bound."""
    code = PARALLEL_KERNEL.format(benchmarks=str(BENCHMARKS), unpin=unpin, threads=len(os.sched_getaffinity(0)))
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    pinned = int(out.stdout.strip().splitlines()[-1])
    assert (pinned == 0) if unpin else (pinned > 0), out.stdout


def test_with_copies_makes_its_copies_only_when_timed(monkeypatch):
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: 1000)
    made, used = [], []

    def copy(weights):
        made.append(weights)
        return list(weights)

    weights = [1, 2]
    make_calls = harness.with_copies(weights, copy, 100, True, lambda w: used.append(id(w)))
    assert made == []                                   # nothing is held before the runner is timed
    calls = make_calls()
    assert len(calls) == harness.weight_copies(100, True) == 20 and len(made) == 19
    harness.time_calls(calls, repeat=1, min_ms=0)
    assert len(set(used)) == 20                         # every copy is a distinct object, and each was called
    assert len(harness.with_copies(weights, copy, 100, False, lambda w: None)()) == 1
