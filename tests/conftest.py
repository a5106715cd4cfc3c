"""Shared test helpers: pinned targets and a per-test random generator."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


AVX2 = {"kind": "llvm", "mcpu": "haswell"}
"""x86 target pinned to AVX2 so results and asm do not depend on the test machine."""

RASP4 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "mcpu": "cortex-a72"}


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded by the test id, so each case is random but reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
