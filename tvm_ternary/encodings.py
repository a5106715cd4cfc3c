"""How integer values become bit planes (see :mod:`tvm_ternary.packing` for words).

An :class:`Encoding` names a value set and its planes. Each gives the same planes on
the host (numpy, for weights and tests) and on the device (TE, for activations), and
the word a *padded* tap holds, because zero in the value domain is not the zero bit
pattern in every encoding:

================  =====================  =========================================  ==================
encoding          values                 planes                                     padded tap
================  =====================  =========================================  ==================
``ternary``       {-1, 0, 1}             0: mask ``v != 0``; 1: sign ``v < 0``     zero word (exact)
``ternary_shift`` {0, 1, 2} (FATNN)      ternary planes of ``t = v - 1``           ``t = -1``: both
                                                                                    planes = valid bits
``unipolar(b)``   0 .. 2^b - 1           plane i: bit i of ``v``                   zero word (exact)
``bipolar(b)``    odd, ±(2^b - 1)        plane i: bit i of ``(v + 2^b - 1) / 2``;  zero word; the
                                         ``v = sum_i 2^i (2 bit_i - 1)``           kernel adds a
                                                                                    validity plane
``signed(b)``     -2^(b-1) .. 2^(b-1)-1  none: byte schemes store bytes            (see the scheme)
================  =====================  =========================================  ==================

Padded taps are written by the device packing stage (:func:`tvm_ternary.packing.pack_planes_te`).
``ternary_shift`` pads with ``t = -1`` so that the per-channel constant ``sum(w)``
folded in by FATNN stays exact at borders (kernels.md, "padding trap"). Tail bits of a
word are never taps and stay 0 in every plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from tvm.ir import Expr as PrimExpr
from tvm import tirx



@dataclass(frozen=True)
class Encoding:
    """A set of integer values and its bit-plane representation."""

    name: ClassVar[str]
    bits: int

    @property
    def num_planes(self) -> int:
        """Number of stored bit planes."""
        return self.bits

    @property
    def needs_validity_plane(self) -> bool:
        """True when a kernel must know which taps exist (no value encodes as all-zero)."""
        return False

    @property
    def value_range(self) -> tuple[int, int]:
        """Smallest and largest representable value."""
        raise NotImplementedError

    @property
    def level_step(self) -> int:
        """Distance between consecutive values (2 for bipolar's odd values)."""
        return 1

    def describe(self) -> str:
        """The value set in words, for error messages."""
        raise NotImplementedError

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Boolean array: which of the (integer-valued) ``values`` belong to the set."""
        lo, hi = self.value_range
        return (values >= lo) & (values <= hi)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Uniformly random members of the value set (int32), for tests and benchmarks."""
        lo, hi = self.value_range
        return rng.integers(lo, hi + 1, shape).astype(np.int32)

    def planes(self, values: np.ndarray) -> np.ndarray:
        """Host encoding: ``(num_planes, *values.shape)`` array of 0/1 (uint8)."""
        v = np.asarray(values, dtype=np.int64)
        return np.stack([self._plane_numpy(v, p) for p in range(self.num_planes)]).astype(np.uint8)

    def plane_bit_te(self, value: PrimExpr, plane: PrimExpr) -> PrimExpr:
        """Device encoding: 0/1 (int32) for bit ``plane`` of the int32 ``value``."""
        raise NotImplementedError

    def plane_bit_of_levels(self, reached: list[PrimExpr], plane: PrimExpr) -> PrimExpr:
        """Device requantization: 0/1 (int32) for bit ``plane`` of the value whose level is
        ``#{l : reached[l]}`` (``reached[l]``: the input is at or above threshold ``l``;
        level ``j`` is ``lo + step * j``). Encodings may override it with a shorter logic
        formula of the same planes."""
        level = sum(r.astype("int32") for r in reached)
        return self.plane_bit_te(self.value_range[0] + self.level_step * level, plane)

    def pad_bit(self, plane: int) -> int:
        """The bit a padded tap holds in ``plane`` (tail bits beyond the packed axis are 0
        regardless)."""
        return 0

    def _plane_numpy(self, v: np.ndarray, plane: int) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class TernaryEncoding(Encoding):
    """Values {-1, 0, 1}: plane 0 is the nonzero mask, plane 1 the sign (0 where v = 0)."""

    name: ClassVar[str] = "ternary"
    bits: int = 2
    MASK: ClassVar[int] = 0
    SIGN: ClassVar[int] = 1

    @property
    def value_range(self) -> tuple[int, int]:
        return (-1, 1)

    def describe(self) -> str:
        return "{-1, 0, 1}"

    def _plane_numpy(self, v: np.ndarray, plane: int) -> np.ndarray:
        return v != 0 if plane == self.MASK else v < 0

    def plane_bit_te(self, value, plane):
        return tirx.Select(plane == self.MASK, value != 0, value < 0).astype("int32")

    def plane_bit_of_levels(self, reached, plane):
        """Three levels (two thresholds): negative below the first, positive at or above
        the second. Two compares and an or, where the level count takes three compares."""
        negative = tirx.Not(reached[0])
        return tirx.Select(plane == self.MASK, tirx.Or(negative, reached[1]), negative).astype("int32")


@dataclass(frozen=True)
class ShiftedTernaryEncoding(TernaryEncoding):
    """FATNN activations {0, 1, 2}, stored as the ternary planes of ``t = v - 1``.

    A padded tap (value 0) is ``t = -1``: mask and sign set on every valid bit.
    """

    name: ClassVar[str] = "ternary_shift"

    @property
    def value_range(self) -> tuple[int, int]:
        return (0, 2)

    def describe(self) -> str:
        return "{0, 1, 2}"

    def _plane_numpy(self, v, plane):
        return super()._plane_numpy(v - 1, plane)

    def plane_bit_te(self, value, plane):
        return super().plane_bit_te(value - 1, plane)

    def pad_bit(self, plane):
        return 1


@dataclass(frozen=True)
class UnipolarEncoding(Encoding):
    """Unsigned ``bits``-bit values 0 .. 2^bits - 1; plane i is bit i."""

    name: ClassVar[str] = "unipolar"

    @property
    def value_range(self) -> tuple[int, int]:
        return (0, (1 << self.bits) - 1)

    def describe(self) -> str:
        return f"integers 0..{(1 << self.bits) - 1} ({self.bits}-bit unipolar)"

    def _plane_numpy(self, v, plane):
        return (v >> plane) & 1

    def plane_bit_te(self, value, plane):
        return tirx.bitwise_and(tirx.shift_right(value, plane), 1)


@dataclass(frozen=True)
class BipolarEncoding(Encoding):
    """Each plane bit means ±1: ``v = sum_i 2^i (2 bit_i - 1)``, the odd integers in
    [-(2^bits - 1), 2^bits - 1]. 1-bit bipolar is BNN's {-1, +1}.

    No value is the all-zero pattern, so kernels use a validity plane for padding.
    """

    name: ClassVar[str] = "bipolar"

    @property
    def needs_validity_plane(self) -> bool:
        return True

    @property
    def level_step(self) -> int:
        return 2

    @property
    def value_range(self) -> tuple[int, int]:
        top = (1 << self.bits) - 1
        return (-top, top)

    def describe(self) -> str:
        top = (1 << self.bits) - 1
        return f"odd integers in [-{top}, {top}] ({self.bits}-bit bipolar)"

    def contains(self, values):
        return super().contains(values) & (np.abs(values) % 2 == 1)

    def sample(self, rng, shape):
        top = (1 << self.bits) - 1          # odd integers -top, -top + 2, ..., top
        return (2 * rng.integers(0, top + 1, shape) - top).astype(np.int32)

    def _offset(self) -> int:
        return (1 << self.bits) - 1

    def _plane_numpy(self, v, plane):
        return (((v + self._offset()) >> 1) >> plane) & 1

    def plane_bit_te(self, value, plane):
        unsigned = tirx.shift_right(value + self._offset(), 1)
        return tirx.bitwise_and(tirx.shift_right(unsigned, plane), 1)


@dataclass(frozen=True)
class SignedEncoding(Encoding):
    """Two's-complement ``bits``-bit values -2^(bits-1) .. 2^(bits-1) - 1. A value set of the
    byte schemes (:class:`tvm_ternary.schemes.Int8Scheme`), which store bytes, not planes."""

    name: ClassVar[str] = "signed"

    @property
    def value_range(self) -> tuple[int, int]:
        half = 1 << (self.bits - 1)
        return (-half, half - 1)

    def describe(self) -> str:
        lo, hi = self.value_range
        return f"integers {lo}..{hi} ({self.bits}-bit signed)"


ENCODING_NAMES = ("unipolar", "bipolar")


def bitserial_encoding(name: str, bits: int) -> Encoding:
    """The bit-serial encoding called ``name`` ("unipolar" or "bipolar") with ``bits`` planes."""
    if name == "unipolar":
        return UnipolarEncoding(bits=bits)
    if name == "bipolar":
        return BipolarEncoding(bits=bits)
    raise ValueError(f"unknown encoding {name!r}; expected one of {ENCODING_NAMES}")
