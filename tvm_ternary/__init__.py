"""tvm-ternary: ternary and bit-serial neural network operators for TVM on CPUs.

Pipeline, in module names: :mod:`.schemes`/:mod:`.encodings`/:mod:`.packing` (what the
values are and how they are packed) -> :mod:`.operators` (TE compute) ->
``tvm_ternary.schedules`` (per target) -> :func:`op` (build and run).
"""

import os

# TVM sizes its thread pool at half the CPUs it sees (it assumes hyperthreading), so on a
# 2-core machine every parallel kernel ran on one core. Use every CPU this process may run
# on unless the user chose (TVM_NUM_THREADS is read when the pool first starts).
_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("TVM_NUM_THREADS", str(_cpus))

from . import reference  # noqa: E402
from .api import CompiledOperator, op  # noqa: E402
from .schemes import SCHEME_NAMES, make_scheme  # noqa: E402
from .target import resolve_target  # noqa: E402

__all__ = ["op", "CompiledOperator", "make_scheme", "SCHEME_NAMES", "reference", "resolve_target"]
