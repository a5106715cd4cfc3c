"""tvm-ternary: ternary and bit-serial neural network operators for TVM on CPUs.

Pipeline, in module names: :mod:`.schemes`/:mod:`.encodings`/:mod:`.packing` (what the
values are and how they are packed) -> :mod:`.operators` (TE compute) ->
``tvm_ternary.schedules`` (per target) -> :func:`op` (build and run).
"""

from . import reference
from .api import CompiledOperator, op
from .schemes import SCHEME_NAMES, make_scheme
from .target import resolve_target

__all__ = ["op", "CompiledOperator", "make_scheme", "SCHEME_NAMES", "reference", "resolve_target"]
