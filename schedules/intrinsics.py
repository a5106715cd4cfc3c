"""Tensor intrinsics used by the schedules.

``movemask_<V>``: ``V`` 0/1 int32 lanes -> one integer with bit ``l`` = lane ``l`` (the
"movemask" that packs threshold results into words). Its description is the plain loop
``out += bits[l] << l``; its implementation shifts the whole vector by the lane index and
or-reduces it (``llvm.vector.reduce.or``), which LLVM lowers to vector compares and a
shuffle tree instead of ``V`` scalar extract/shift/or steps.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

MOVEMASK_LANES = (4, 8, 16)


def movemask_name(lanes: int) -> str:
    """Registered name of the movemask intrinsic for ``lanes`` lanes."""
    return f"tvm_ternary_movemask_{lanes}"


def _movemask(lanes: int):
    @T.prim_func(s_tir=True)
    def desc(bits: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
             out: T.Buffer((1,), "uint32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(out[0:1], bits[0:lanes])
            T.writes(out[0:1])
            for lane in T.serial(lanes):
                with T.sblock("update"):
                    v = T.axis.reduce(lanes, lane)
                    out[0] = out[0] + T.shift_left(T.Cast("uint32", bits[v]), T.Cast("uint32", v))

    @T.prim_func(s_tir=True)
    def impl(bits: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
             out: T.Buffer((1,), "uint32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(out[0:1], bits[0:lanes])
            T.writes(out[0:1])
            out[0] = out[0] + T.call_llvm_pure_intrin(
                "uint32", "llvm.vector.reduce.or",
                T.shift_left(T.Cast(f"uint32x{lanes}", bits[T.ramp(0, 1, lanes)]),
                             T.ramp(T.uint32(0), T.uint32(1), lanes)))

    return desc, impl


for _lanes in MOVEMASK_LANES:
    TensorIntrin.register(movemask_name(_lanes), *_movemask(_lanes), override=True)
