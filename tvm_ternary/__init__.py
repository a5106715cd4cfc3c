"""tvm-ternary: ternary and bit-serial neural network operators for TVM on CPUs.

Pipeline, in module names: :mod:`.quant` (PyTorch quantizers, :func:`quantize`) ->
:mod:`.frontend` (:func:`from_torch`) -> :mod:`.rewrite` (the Relax pass) ->
:mod:`.operators` (TE compute, over :mod:`.schemes`/:mod:`.encodings`/:mod:`.packing`) ->
``tvm_ternary.schedules`` (per target) -> :func:`build` (a whole model) or :func:`op`
(one operator).
"""

import os

# TVM sizes its thread pool at half the CPUs it sees (it assumes hyperthreading), so on a
# 2-core machine every parallel kernel ran on one core. Use every CPU this process may run
# on unless the user chose (TVM_NUM_THREADS is read when the pool first starts).
_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("TVM_NUM_THREADS", str(_cpus))

from . import reference  # noqa: E402
from .api import CompiledOperator, op  # noqa: E402
from .build import build  # noqa: E402
from .diagnostics import SlowPathWarning  # noqa: E402
from .frontend import from_torch  # noqa: E402
from .quant import QUANTIZE_SCHEMES, quantize  # noqa: E402
from .remote import Remote, export  # noqa: E402
from .schemes import SCHEME_NAMES, make_scheme  # noqa: E402
from .targets import PRESETS, resolve_target  # noqa: E402
from .tuning import tune, tune_model  # noqa: E402

target = resolve_target
"""``tvm_ternary.target("rasp4")``: a preset name, ``"host"``, a dict or a kind string ->
``tvm.target.Target`` (see :mod:`tvm_ternary.targets`)."""

__all__ = ["quantize", "QUANTIZE_SCHEMES", "from_torch", "build", "export", "Remote", "op", "CompiledOperator",
           "make_scheme", "SCHEME_NAMES", "reference", "resolve_target", "target", "PRESETS", "tune", "tune_model",
           "SlowPathWarning"]
