"""Shared test helpers: pinned targets, a per-test random generator and the benchmark
scripts on ``sys.path`` (for the tests that check them)."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

AVX2 = {"kind": "llvm", "mcpu": "haswell"}
"""x86 target pinned to AVX2 so results and asm do not depend on the test machine."""

AVX512 = {"kind": "llvm", "mcpu": "znver4"}
"""x86 target with AVX-512 VPOPCNTDQ (Zen 4; Ice Lake and later have it too)."""

RASP4 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "mcpu": "cortex-a72"}


def host_isa() -> str:
    """The vector ISA our schedules pick for this CPU (``"host"``): avx512, avx2, neon, ..."""
    import tvm_ternary
    return tvm_ternary.schedules.isa_of(tvm_ternary.resolve_target("host")).name


def host_has_avx512_popcount() -> bool:
    """True when this CPU can run the AVX512 target's kernels (flags read from /proc/cpuinfo)."""
    try:
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}
    except OSError:
        return False
    return {"avx512f", "avx512vl", "avx512_vpopcntdq"} <= flags


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded by the test id, so each case is random but reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def board():
    """An emulated Raspberry Pi 4 (qemu-user, Cortex-A72) serving TVM RPC on 127.0.0.1 for
    the whole test run. Sets the emulator up first if needed (idempotent; ``.ci/run`` does
    it before the tests): a missing setup is an error, never a skip."""
    from tvm_ternary import emulator
    emulator.setup()
    with emulator.Board() as started:
        yield started
