"""What a target's vector unit offers the popcount kernels.

:func:`isa_of` reads the CPU features LLVM reports for the target (``mcpu``/``mattr``),
so pinned targets give the same answer on every machine:

==========  ===========================================  ==========  ============
name        features                                      words/vec   accumulators
==========  ===========================================  ==========  ============
avx512      avx512f + avx512vl + avx512vpopcntdq          16 (zmm)    28 of 32
avx2        avx2 (popcount: ``vpshufb`` nibble lookup)    4 x u64     10 of 16
neon        aarch64 neon (``cnt`` + ``uadalp``)           8 x u16     20 of 32
baseline    anything else LLVM targets (e.g. SSE2)        4           10 of 16
==========  ===========================================  ==========  ============

The accumulator budget leaves registers for the weight vectors, broadcast inputs and the
popcount's temporaries (the AVX2 nibble lookup needs its tables and masks; NEON's
``cnt``/``uaddlp`` chain needs two). Schedules further keep a tile's accumulators under
TVM's stack limit (:func:`tiling.tile_budget`): 15 zmm on AVX-512, which measured faster
than 28 in a per-iteration heap workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from tvm.target import Target, codegen

from tvm_ternary.operators.compute import MAX_NARROW_WORDS


@dataclass(frozen=True)
class Isa:
    """A vector instruction set, as the schedules see it."""

    name: str
    lanes: int
    """Words per vector register: the output-channel block ``V`` of the popcount kernels."""
    accumulator_budget: int
    """Vector registers a register tile may fill with accumulators."""
    word_bits: int = 32
    """Kernel word size. AVX2 uses 64: its popcount is a byte lookup summed by ``vpsadbw``
    into 64-bit lanes, so 32-bit lanes cost extra regrouping (measured 1.5x slower). NEON
    uses 16: ``cnt`` counts bytes and one ``uadalp`` adds byte pairs into the 16-bit
    accumulator lanes, where 32-bit lanes need a ``uaddlp`` more per word."""

    conv_channel_blocks: int = 1
    """Output-channel blocks (of ``lanes`` words) a popcount conv tile may compute per input
    word it broadcasts. 4 on NEON, where the broadcast (``ld1r``) takes a NEON pipe slot as an
    ALU operation does (with the requantize epilogue, two 16-channel output words of two
    blocks each); x86 folds the broadcast into the operation, and two blocks measured slower
    there (spills). ``benchmarks/pi_estimate.py --layers all``, Cortex-A72 model: ternary's
    hot loops at 92-96% of the bound with up to 4 blocks, 74-94% with up to 2."""

    taps_in_tile: bool = False
    """Whether a popcount conv tile unrolls the kernel's columns inside it, so that pixels
    ``o`` and ``o + 1`` share the input word that tap columns ``c + 1`` and ``c`` read: NEON,
    where each broadcast (``ld1r``) takes a pipe slot (``benchmarks/pi_estimate.py``, ternary
    on ResNet-18's 3x3 layers: 74-76% of the bound on Cortex-A72 with one channel block,
    88-94% with two blocks and the columns inside, 93-96% with up to four)."""

    tile_registers: int = 0
    """With :attr:`taps_in_tile`: the vector values a conv tile may keep live, its
    accumulators, the broadcast inputs of its row and one column's weight vectors together
    (:class:`~.tiling.ColumnTile`). Calibrated with ``benchmarks/pi_estimate.py``'s
    Cortex-A72 model on NEON: at 36 no stride-1 3x3 or 5x5 tile spills; at 38, w1a1's
    8-pixel 3x3 tiles spill in the hot loop. Stride 2 is counted as stride 1 here (counted
    as it is, ResNet-18's 7-pixel rows got smaller, slower tiles); the ranking of tiles
    counts it (:meth:`~.tiling.ColumnTile.broadcasts_per_product`)."""

    @property
    def int32_lanes(self) -> int:
        """32-bit lanes per vector register (FGQ's int32/float32 accumulators)."""
        return self.lanes * self.word_bits // 32


AVX512 = Isa("avx512", 16, 28)
AVX2 = Isa("avx2", 4, 10, word_bits=64)
NEON = Isa("neon", 8, 20, word_bits=16, conv_channel_blocks=4, taps_in_tile=True, tile_registers=36)
BASELINE = Isa("baseline", 4, 10)


def kernel_isa(target: Target, weight_shape: Sequence[int] = ()) -> Isa:
    """The ISA a popcount kernel with weights ``weight_shape`` (``[K, C, *kernel]``) uses:
    16-bit words fall back to 32-bit ones where ``uint16`` accumulators could overflow."""
    isa = isa_of(target)
    if isa.word_bits == 16 and len(weight_shape) >= 2:
        words = -(-int(weight_shape[1]) // 16) * int(np.prod(weight_shape[2:], dtype=np.int64))
        if words > MAX_NARROW_WORDS:
            return replace(isa, lanes=isa.lanes * 16 // 32, word_bits=32)
    return isa


def isa_of(target: Target) -> Isa:
    """The best ISA the target's CPU features allow."""
    features = set(codegen.llvm_get_cpu_features(target))
    if {"avx512f", "avx512vl", "avx512vpopcntdq"} <= features:
        return AVX512
    if "avx2" in features:
        return AVX2
    if "neon" in features or "feature.has_asimd" in str(target):
        return NEON
    return BASELINE


def has_vnni(target: Target) -> bool:
    """True when the target has AVX-512 VNNI (``vpdpbusd``: u8 x s8 dot products of 4)."""
    return {"avx512f", "avx512vnni"} <= set(codegen.llvm_get_cpu_features(target))


def has_amx(target: Target) -> bool:
    """True when the target has AMX-INT8 (tile registers, ``tdpbusd``; Sapphire Rapids and
    later Xeons): int8 conv2d then runs on :mod:`tvm_ternary.operators.amx` where it fits."""
    return {"amx-tile", "amx-int8"} <= set(codegen.llvm_get_cpu_features(target))
