"""Quantization schemes: which values each operand holds and how a word pair multiplies.

A scheme is chosen by name plus parameters (:func:`make_scheme`):

* ``ternary``: activations and weights in {-1, 0, 1}. Per 32-bit word
  ``popc(mx & mw) - 2 * popc((sx ^ sw) & mx & mw)`` (two popcounts).
* ``fatnn``: activations in {0, 1, 2}, weights in {-1, 0, 1}. Computed as ternary on
  ``a - 1`` plus the per-output-channel constant ``sum(w)`` (padding stays exact because
  padded taps are encoded as ``a - 1 = -1``).
* ``bitserial``: ``abits``/``wbits`` in 1..8, each operand ``unipolar`` or ``bipolar``;
  one AND (or XOR) and popcount per plane pair, weighted by ``2^(i+j)``; bipolar operands
  add one popcount per plane of the other operand (or of the validity plane). W1A1
  bipolar × bipolar is BNN's XNOR-popcount, W2A2 unipolar the conventional 2-bit kernel.
* ``fgq``: ternary weights in groups of ``group_size`` along the reduction axis with one
  float scale per (output channel, group), times unsigned ``abits`` (4 or 8) activations;
  float32 output. This float-scale kernel takes group sizes that are multiples of 4 (quads
  of bytes); models quantize with any group size, or ``"row"``, and run on ``int8``. Stored as bytes, not bit planes: at 4–8
  activation bits a bit-serial product needs 2·abits popcounts per word, more than a
  byte dot product (``vpmaddubsw``, NEON ``smull``/``sadalp``) costs.
* ``int8``: signed 8-bit weights (-128..127) × 7-bit activations, ``unsigned`` (0..127)
  or ``signed`` (-64..63, stored as ``v + 64``, with ``-64 * sum(w)`` per output channel
  and padded taps stored as 64; with ``abits`` bits the offset is ``2^(abits-1)``); int32 output. A byte dot product like fgq's, for the
  first and last layers of a model (PyTorch's x86 int8 likewise keeps activations to 7
  bits, ``reduce_range``): then every pair of products fits the int16 sums of AVX2's
  ``vpmaddubsw`` (``2 * 127 * 128 < 2^15``), so one definition is exact on every target.
  ``abits``/``wbits`` trade bits under the same bound (``abits + wbits <= 15``): FGQ
  layers of models, whose weights times group multipliers are integers -7..7, run as
  4-bit weights × 8-bit (or 4-bit) activations with one float scale per output channel.
* ``ternary_int8`` (dense only): ternary weights times an integer multiplier per group of
  ``group_size`` inputs (a multiple of :data:`CODE_GROUP`, or ``"row"``: one per output
  channel, BitNet b1.58's format) × unsigned ``abits``-bit activations (default 8); int32
  output, exact. The weights stay at 2 bits in memory (:func:`tvm_ternary.packing.pack_ternary_codes`)
  and are expanded to bytes in registers, so a batch-1 layer, which streams its weights once
  per call, reads a quarter of int8's bytes. Each group's byte dot product runs on the codes
  ``w + 1`` (0..2) and subtracts the group's sum of activations. With
  ``activations="per_token"`` (BitNet's activations) the kernel takes float32 data and
  quantizes each row itself: ``q = clip(rint(x * ((1 / absmax_row) * 127)), -127, 127)`` (signed,
  stored as ``q + 128``), and the affine epilogue multiplies by the row's step
  ``absmax_row / 127`` (:data:`PER_TOKEN_LEVELS`).

Every scheme means exactly PyTorch's ``conv2d``/``linear`` applied to the values, with
zero padding in the value domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
from tvm.ir import Expr as PrimExpr
from tvm import tirx

from .encodings import (
    ENCODING_NAMES,
    BipolarEncoding,
    Encoding,
    ShiftedTernaryEncoding,
    SignedEncoding,
    TernaryEncoding,
    UnipolarEncoding,
    bitserial_encoding,
)

SCHEME_NAMES = ("ternary", "fatnn", "bitserial", "fgq", "int8", "ternary_int8")
FGQ_ROW = "row"
"""FGQ ``group_size`` of one group per output channel (all its inputs share one scale:
BitNet b1.58's per-channel format)."""


def is_group_size(value) -> bool:
    """Whether ``value`` is an FGQ group size the quantizer takes: an int >= 1 or :data:`FGQ_ROW`."""
    return value == FGQ_ROW or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
FGQ_ACTIVATION_BITS = (4, 8)
MAX_BITS = 8
INT8_ACTIVATIONS = ("unsigned", "signed")
INT8_ACTIVATION_BITS = 7
INT8_MAX_BITS = 15
"""``abits + wbits`` of the int8 scheme at most: two products of stored bytes fit an int16."""
FGQ_MULTIPLIER_MAX = 7
"""FGQ group scales are deployed as ``m * channel_scale`` with integer ``m <= 7`` (3 bits;
:class:`tvm_ternary.quant.FGQ`), so a layer's weights times multipliers are integers -7..7."""
FGQ_INTEGER_WEIGHT_BITS = 4
"""Signed bits of an FGQ weight times its group multiplier (``-7..7``): the int8 scheme's
``wbits`` for FGQ layers of models, which then take 8-bit activations."""
CODE_GROUP = 16
"""Reduction elements per byte lane of the 2-bit weight codes (4 codes per byte × a quad of
bytes per lane, :func:`tvm_ternary.packing.pack_ternary_codes`): ``ternary_int8`` group
sizes are multiples of it."""
MAX_MULTIPLIER = 127
"""Largest magnitude of a ``ternary_int8`` group multiplier (int32 sums stay exact for
reductions up to :data:`MAX_CODE_REDUCTION` inputs)."""
TERNARY_INT8_ACTIVATIONS = ("static", "per_token")
"""``ternary_int8`` activations: integer values from a calibrated quantizer (``static``, the
default) or float32 rows quantized per token inside the kernel (``per_token``)."""
PER_TOKEN_LEVELS = 127
"""Per-token quantization's top level: ``q = clip(rint(x * (127 / absmax)), -127, 127)`` per row
(``127 / absmax`` computed as PyTorch does, ``(1 / absmax) * 127``)."""
PER_TOKEN_MIN_ABSMAX = 1e-5
"""A row's absmax is at least this (an all-zero row quantizes to zeros, not NaNs)."""
MAX_CODE_REDUCTION = (2**31 - 1) // (255 * MAX_MULTIPLIER)
"""Most reduction inputs of a ``ternary_int8`` dense layer: every output, a sum of 8-bit
activations times ternary weights times multipliers, stays within int32."""

WordOf = Callable[[int], PrimExpr]
"""``plane -> word`` accessor for one operand at the current reduction point."""

Term = tuple[int, PrimExpr]
"""``(coefficient, word)``: the word's popcount, times the coefficient, adds to the sum."""


@dataclass(frozen=True)
class Scheme:
    """Base of all schemes: operand value sets and output type."""

    name: ClassVar[str]
    out_dtype: ClassVar[str] = "int32"

    @property
    def per_token(self) -> bool:
        """Whether the kernel takes float32 rows and quantizes each itself (``ternary_int8``
        with ``activations="per_token"``); every other scheme takes integer values."""
        return False

    @property
    def activation(self) -> Encoding:
        """Encoding of the activations (input data)."""
        raise NotImplementedError

    @property
    def weight(self) -> Encoding:
        """Encoding of the weights."""
        raise NotImplementedError

    def label(self) -> str:
        """Short human-readable name used in messages, e.g. ``bitserial(a2u,w2u)``."""
        return self.name

    def check_values(self, op: str, role: str, values: np.ndarray) -> np.ndarray:
        """Return ``values`` as int32 if every element is in the operand's value set.

        ``op`` is the operator name ("conv2d"), ``role`` is ``"data"`` or ``"weight"``.
        Raises ``TypeError`` for non-numeric arrays and ``ValueError`` naming the operator
        and the value set otherwise.
        """
        encoding = self.activation if role == "data" else self.weight
        arr = np.asarray(values)
        where = f"{op}[{self.label()}]"
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise TypeError(f"{where}: {role} must be an integer or float array, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise ValueError(f"{where}: {role} values must be integers in {encoding.describe()}")
        bad = ~encoding.contains(arr.astype(np.int64, copy=False)) if arr.size else np.zeros(0, bool)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: {role} values must be in {encoding.describe()}; "
                f"found {arr[index]} at index {index}"
            )
        return arr.astype(np.int32)


@dataclass(frozen=True)
class PackedScheme(Scheme):
    """A scheme computed by popcounts over bit-packed planes."""

    @property
    def kernel_planes(self) -> int:
        """Activation planes the kernel reads: stored planes plus a validity plane
        (index :attr:`validity_plane`) when the activation encoding needs one."""
        return self.activation.num_planes + int(self.activation.needs_validity_plane)

    @property
    def validity_plane(self) -> int:
        """Index of the validity plane (meaningful only if the encoding needs one)."""
        return self.activation.num_planes

    def terms(self, x: WordOf, w: WordOf) -> list[Term]:
        """The inner product of one word pair as ``sum_t coefficient_t * popc(word_t)``.

        ``x(plane)``/``w(plane)`` give the operands' words (uint32 or uint64) (``x(validity_plane)``
        the validity word). Keeping the terms apart lets a kernel accumulate each in its
        own register and combine them once per output (split accumulators).
        """
        raise NotImplementedError

    def weight_correction(self, weight: np.ndarray) -> np.ndarray | None:
        """Per-output-channel int32 constant added to every output, or None."""
        return None

    @property
    def valid_tap_coefficient(self) -> int:
        """Coefficient of the number of valid (non-padding) taps of an output, a term that
        depends on neither weights nor data, so the epilogue adds it in closed form."""
        return 0


@dataclass(frozen=True)
class TernaryScheme(PackedScheme):
    """Ternary activations × ternary weights."""

    name: ClassVar[str] = "ternary"

    @property
    def activation(self) -> Encoding:
        return TernaryEncoding()

    @property
    def weight(self) -> Encoding:
        return TernaryEncoding()

    def terms(self, x, w):
        m, s = TernaryEncoding.MASK, TernaryEncoding.SIGN
        both = tirx.bitwise_and(x(m), w(m))                        # product is nonzero
        negative = tirx.bitwise_and(tirx.bitwise_xor(x(s), w(s)), both)  # ... and negative
        return [(1, both), (-2, negative)]


@dataclass(frozen=True)
class FatnnScheme(TernaryScheme):
    """FATNN: activations {0, 1, 2} × ternary weights, via ``a - 1`` and ``sum(w)``."""

    name: ClassVar[str] = "fatnn"

    @property
    def activation(self) -> Encoding:
        return ShiftedTernaryEncoding()

    def weight_correction(self, weight):
        """``sum(w)`` over all taps of each output channel: sum x·w = sum (x-1)·w + sum w."""
        return weight.reshape(weight.shape[0], -1).sum(axis=1, dtype=np.int64).astype(np.int32)


@dataclass(frozen=True)
class BitSerialScheme(PackedScheme):
    """``abits``-bit activations × ``wbits``-bit weights, each unipolar or bipolar."""

    name: ClassVar[str] = "bitserial"
    abits: int = 2
    wbits: int = 2
    activation_encoding: str = "unipolar"
    weight_encoding: str = "unipolar"

    @property
    def activation(self) -> Encoding:
        return bitserial_encoding(self.activation_encoding, self.abits)

    @property
    def weight(self) -> Encoding:
        return bitserial_encoding(self.weight_encoding, self.wbits)

    def label(self) -> str:
        return (f"bitserial(a{self.abits}{self.activation_encoding[0]},"
                f"w{self.wbits}{self.weight_encoding[0]})")

    def terms(self, x, w):
        a, b = self.abits, self.wbits
        pairs = [(i, j) for i in range(a) for j in range(b)]
        a_bipolar = isinstance(self.activation, BipolarEncoding)
        w_bipolar = isinstance(self.weight, BipolarEncoding)
        and_ = tirx.bitwise_and
        if a_bipolar and w_bipolar:   # (2x-1)(2w-1) on valid taps: [n_valid] - 2 popc((x ^ w) & v)
            valid = x(self.validity_plane)
            return [(-(2 ** (i + j + 1)), and_(tirx.bitwise_xor(x(i), w(j)), valid)) for i, j in pairs]
        if a_bipolar:                 # (2x-1) w on valid taps: 2 popc(x & w) - popc(v & w)
            valid = x(self.validity_plane)
            return [(2 ** (i + j + 1), and_(x(i), w(j))) for i, j in pairs] + [
                (-(2**a - 1) * 2**j, and_(valid, w(j))) for j in range(b)]
        if w_bipolar:                 # x (2w-1): 2 popc(x & w) - popc(x)
            return [(2 ** (i + j + 1), and_(x(i), w(j))) for i, j in pairs] + [
                (-(2**b - 1) * 2**i, x(i)) for i in range(a)]
        return [(2 ** (i + j), and_(x(i), w(j))) for i, j in pairs]

    @property
    def valid_tap_coefficient(self):
        both = self.activation_encoding == self.weight_encoding == "bipolar"
        return (2**self.abits - 1) * (2**self.wbits - 1) if both else 0


@dataclass(frozen=True)
class ByteScheme(Scheme):
    """A scheme computed as byte dot products: activations stored as unsigned bytes
    (value + :attr:`activation_offset`), weights as signed bytes, channels last in quads
    (the operands of ``vpdpbusd``/``vpmaddubsw``)."""

    @property
    def activation_offset(self) -> int:
        """Added to an activation value to get its stored byte (padded taps store it too)."""
        return 0

    def weight_correction(self, weight: np.ndarray) -> np.ndarray | None:
        """Per-output-channel int32 constant added to every output (``-offset * sum(w)``,
        which cancels the stored offset over every tap, padded ones included), or None."""
        if not self.activation_offset:
            return None
        sums = weight.reshape(weight.shape[0], -1).sum(axis=1, dtype=np.int64)
        return (-self.activation_offset * sums).astype(np.int32)


@dataclass(frozen=True)
class Int8Scheme(ByteScheme):
    """Signed ``wbits``-bit weights × ``abits``-bit activations, ``unsigned`` or ``signed``
    (module doc), stored as bytes; by default 8-bit weights and 7-bit activations. Any
    ``abits + wbits <= 15`` keeps every pair of products within AVX2's int16 sums: 8-bit
    activations with 4-bit weights is how FGQ layers run (ternary weights times group
    multipliers 0..7, see :data:`FGQ_INTEGER_WEIGHT_BITS`)."""

    name: ClassVar[str] = "int8"
    activation_encoding: str = "unsigned"
    abits: int = INT8_ACTIVATION_BITS
    wbits: int = 8

    def __post_init__(self) -> None:
        if not (2 <= self.abits <= 8 and 2 <= self.wbits <= 8 and self.abits + self.wbits <= INT8_MAX_BITS):
            raise ValueError(f"int8: abits and wbits must be in 2..8 with abits + wbits <= {INT8_MAX_BITS}, got "
                             f"{self.abits} and {self.wbits}")

    @property
    def activation(self) -> Encoding:
        if self.activation_encoding == "signed":
            return SignedEncoding(bits=self.abits)
        return UnipolarEncoding(bits=self.abits)

    @property
    def weight(self) -> Encoding:
        return SignedEncoding(bits=self.wbits)

    @property
    def activation_offset(self) -> int:
        return -self.activation.value_range[0]

    def label(self) -> str:
        weights = "" if self.wbits == 8 else f",w{self.wbits}"
        return f"int8(a{self.abits}{self.activation_encoding[0]}{weights})"


@dataclass(frozen=True)
class FgqScheme(ByteScheme):
    """Ternary weights grouped by ``group_size`` with float scales × unsigned activations."""

    name: ClassVar[str] = "fgq"
    out_dtype: ClassVar[str] = "float32"
    group_size: int | str = 64
    abits: int = 8

    @property
    def activation(self) -> Encoding:
        return UnipolarEncoding(bits=self.abits)

    @property
    def weight(self) -> Encoding:
        return TernaryEncoding()

    def label(self) -> str:
        return f"fgq(g{self.group_size},a{self.abits})"

    def num_groups(self, channels: int) -> int:
        """Groups along a reduction axis of ``channels`` elements (the last may be partial)."""
        return -(-channels // self.group_size)


@dataclass(frozen=True)
class TernaryInt8Scheme(ByteScheme):
    """Ternary weights × integer group multipliers (``-127..127``) × unsigned ``abits``-bit
    activations, int32 output; weights stored as 2-bit codes (module doc). Dense only."""

    name: ClassVar[str] = "ternary_int8"
    group_size: int | str = FGQ_ROW
    abits: int = 8
    activations: str = "static"

    @property
    def per_token(self) -> bool:
        """Whether the kernel quantizes float32 rows itself (``activations="per_token"``)."""
        return self.activations == "per_token"

    @property
    def activation(self) -> Encoding:
        """The integer levels the kernel multiplies: unsigned ``abits`` bits, or per token
        the signed ``-127..127`` (within :class:`SignedEncoding` of 8 bits)."""
        return SignedEncoding(bits=8) if self.per_token else UnipolarEncoding(bits=self.abits)

    @property
    def activation_offset(self) -> int:
        return 128 if self.per_token else 0

    def check_values(self, op: str, role: str, values: np.ndarray) -> np.ndarray:
        """Per token, data is any finite float32 array (quantized in the kernel)."""
        if role != "data" or not self.per_token:
            return super().check_values(op, role, values)
        arr = np.asarray(values)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{op}[{self.label()}]: per-token data must be a float array, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{op}[{self.label()}]: per-token data must be finite (it holds inf or nan)")
        return arr.astype(np.float32)

    @property
    def weight(self) -> Encoding:
        return TernaryEncoding()

    def label(self) -> str:
        tokens = ",per_token" if self.per_token else ""
        return f"ternary_int8(g{self.group_size},a{self.abits}{tokens})"

    def group_width(self, channels: int) -> int:
        """Reduction elements per group (a whole row, rounded up to :data:`CODE_GROUP`, for ``"row"``)."""
        if self.group_size == FGQ_ROW:
            return -(-channels // CODE_GROUP) * CODE_GROUP
        return int(self.group_size)

    def num_groups(self, channels: int) -> int:
        """Groups along a reduction axis of ``channels`` elements (the last may be partial)."""
        return -(-channels // self.group_width(channels))


def _check_bits(op: str, scheme: str, name: str, value, allowed) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}[{scheme}]: {name} must be an int, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{op}[{scheme}]: {name} must be in {_show(allowed)}, got {value}")
    return int(value)


def _check_group_size(op: str, scheme: str, value) -> int | str:
    if value == FGQ_ROW:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}[{scheme}]: group_size must be an int or {FGQ_ROW!r}, got {value!r}")
    if value < 1:
        raise ValueError(f"{op}[{scheme}]: group_size must be >= 1 or {FGQ_ROW!r}, got {value}")
    return int(value)


def _show(allowed) -> str:
    allowed = list(allowed)
    if len(allowed) > 3 and allowed == list(range(allowed[0], allowed[-1] + 1)):
        return f"{allowed[0]}..{allowed[-1]}"
    return "{" + ", ".join(str(a) for a in allowed) + "}"


_PARAMETERS = {
    "ternary": (),
    "fatnn": (),
    "bitserial": ("abits", "wbits", "activation_encoding", "weight_encoding"),
    "fgq": ("group_size", "abits"),
    "int8": ("activation_encoding", "abits", "wbits"),
    "ternary_int8": ("group_size", "abits", "activations"),
}


def make_scheme(op: str, scheme: str, **params) -> Scheme:
    """Build and validate a scheme for operator ``op`` (used in error messages).

    ``bitserial`` takes ``abits``, ``wbits`` (1..8, default 2) and
    ``activation_encoding``/``weight_encoding`` ("unipolar" default, or "bipolar");
    ``fgq`` takes ``group_size`` (an int >= 1 or ``"row"``, default 64; the float-scale
    kernel needs a multiple of 4) and ``abits`` (4 or 8, default 8);
    ``int8`` takes ``activation_encoding`` ("unsigned" default, or "signed"), ``abits``
    (default 7) and ``wbits`` (default 8), 2..8 each with ``abits + wbits <= 15``;
    ``ternary_int8`` takes ``group_size`` (a multiple of 16, or ``"row"``, the default),
    ``abits`` (1..8, default 8) and ``activations`` (``"static"``, the default, or
    ``"per_token"``: float32 data quantized per row to 8 bits in the kernel).
    """
    if scheme not in _PARAMETERS:
        raise ValueError(f"{op}: unknown scheme {scheme!r}; expected one of {SCHEME_NAMES}")
    extra = sorted(set(params) - set(_PARAMETERS[scheme]))
    if extra:
        raise ValueError(f"{op}[{scheme}]: parameter(s) {extra} do not apply to scheme {scheme!r}"
                         f" (it takes {list(_PARAMETERS[scheme]) or 'none'})")
    if scheme == "ternary":
        return TernaryScheme()
    if scheme == "fatnn":
        return FatnnScheme()
    if scheme == "fgq":
        return FgqScheme(
            group_size=_check_group_size(op, scheme, params.get("group_size", 64)),
            abits=_check_bits(op, scheme, "abits", params.get("abits", 8), FGQ_ACTIVATION_BITS),
        )
    if scheme == "ternary_int8":
        group = _check_group_size(op, scheme, params.get("group_size", FGQ_ROW))
        if group != FGQ_ROW and group % CODE_GROUP:
            raise ValueError(f"{op}[{scheme}]: group_size must be a multiple of {CODE_GROUP} (the inputs of one "
                             f"lane of 2-bit weight codes) or {FGQ_ROW!r}, got {group}")
        abits = _check_bits(op, scheme, "abits", params.get("abits", 8), range(1, 9))
        activations = params.get("activations", "static")
        if activations not in TERNARY_INT8_ACTIVATIONS:
            raise ValueError(f"{op}[{scheme}]: activations must be one of {TERNARY_INT8_ACTIVATIONS}, "
                             f"got {activations!r}")
        if activations == "per_token" and abits != 8:
            raise ValueError(f"{op}[{scheme}]: per-token activations have 8 bits, got abits={abits}")
        return TernaryInt8Scheme(group_size=group, abits=abits, activations=activations)
    if scheme == "int8":
        encoding = params.get("activation_encoding", "unsigned")
        if encoding not in INT8_ACTIVATIONS:
            raise ValueError(f"{op}[{scheme}]: activation_encoding must be one of {INT8_ACTIVATIONS}, "
                             f"got {encoding!r}")
        abits = _check_bits(op, scheme, "abits", params.get("abits", INT8_ACTIVATION_BITS), range(2, 9))
        wbits = _check_bits(op, scheme, "wbits", params.get("wbits", 8), range(2, 9))
        if abits + wbits > INT8_MAX_BITS:
            raise ValueError(f"{op}[{scheme}]: abits + wbits must be at most {INT8_MAX_BITS} (two products of "
                             f"stored bytes must fit AVX2's int16 sums), got {abits} + {wbits}")
        return Int8Scheme(activation_encoding=encoding, abits=abits, wbits=wbits)
    bits = range(1, MAX_BITS + 1)
    encodings = {}
    for key in ("activation_encoding", "weight_encoding"):
        encodings[key] = params.get(key, "unipolar")
        if encodings[key] not in ENCODING_NAMES:
            raise ValueError(f"{op}[{scheme}]: {key} must be one of {ENCODING_NAMES}, "
                             f"got {encodings[key]!r}")
    return BitSerialScheme(
        abits=_check_bits(op, scheme, "abits", params.get("abits", 2), bits),
        wbits=_check_bits(op, scheme, "wbits", params.get("wbits", 2), bits),
        **encodings,
    )
