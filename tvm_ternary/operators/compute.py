"""TE compute of the operators, generic over spatial rank (2 for conv2d, 0 for dense).

Packed schemes (ternary, fatnn, bitserial), layouts from :mod:`tvm_ternary.packing`, in
words of the target's size (uint32; uint64 on AVX2, with int64 accumulators; uint16 on
NEON, with uint16 accumulators):

* data   ``xp`` ``[N, P', *(spatial + 2 pad), Cw]``: packed and pre-padded on the device
  by :func:`pack_data` (``P'`` adds the bipolar validity plane)
* weight ``wp`` ``[Kb, Pw, *kernel, Cw, V]`` (host-packed, blocked by ``V`` output
  channels, :func:`tvm_ternary.packing.block_channels`; ``V`` is chosen per target)
* fatnn only: ``correction`` int32 ``[K]`` (``sum(w)`` per output channel)
* output int32 ``[N, K, *out_spatial]`` (NCHW for conv2d)

Stages (block names, which schedules refer to): ``pack`` (values -> padded planes, the
data function; a small-channel conv2d adds ``patches``, the gather into the patch layout,
and its kernel is then 1x1 over ``[N, P', OH, OW, Rw]``; from a channel-blocked input the
data function is ``bits``, ``chunk``, ``pack``, see :func:`pack_blocked_data`), ``acc``
(the popcount reduction over kernel taps and words, one accumulator per popcount term) and
``out`` (combines the terms, adds fatnn's correction: the epilogue). With the requantize
epilogue (:func:`requantize_pack`), ``bits``, ``chunk``, ``pack`` and ``repad`` follow and
the kernel writes the next layer's packed planes instead of int32; with the affine
epilogue (:func:`affine`), ``affine`` writes float32, NCHW or channel-blocked
``[N, K/V, *out_spatial, V]`` (:mod:`tvm_ternary.layout`).

FGQ, bytes rather than planes (``G`` = group size, ``Cg = ceil(C / G)``):

* data   ``xb`` uint8 ``[N, *(spatial + 2 pad), Cg*G]`` (channels last, zero-padded, zero
  tail; :func:`layout_bytes`)
* weight ``wb`` int8 ``[Kb, *kernel, Cg*G/4, V, 4]``; ``scales`` float32 ``[Kb, Cg, *kernel, V]``
  (both blocked by ``V`` output channels, like the packed weights; channels in quads)
* output float32 ``[N, K, *out_spatial]``; stages ``layout`` (data function), ``group``
  (integer dot product of one group), ``acc`` (scaled sum over groups and taps) and
  ``out`` (NCHW).

int8, bytes in the same layouts (channels padded to a whole quad, activations stored with
the scheme's offset): one int32 reduction ``dot`` over taps and quads, and ``out`` with the
per-channel correction (:func:`byte_dot_correlation`); a model's byte requantize epilogue
adds ``requant`` and ``layout``, the next int8 layer's input bytes (:func:`requantize_bytes`).

ternary_int8 (dense), bytes against 2-bit weight codes (``G`` = group width, ``Gn`` groups):

* data   ``xb`` uint8 ``[N, Gn*G]`` (:func:`layout_bytes`, zero tail)
* weight ``codes`` uint8 ``[Mb, Gn*G/16, V, 4]`` (:func:`tvm_ternary.packing.pack_ternary_codes`),
  ``multipliers`` int32 ``[Mb, Gn, V]``
* stages ``xsum`` (each group's sum of activations), ``dot`` (a group's dot product with the
  codes), ``acc`` (``sum_g multiplier * (dot - xsum)``) and ``out`` (:func:`ternary_code_dot`);
  per token, the data is float32 ``[N, Gn*G]`` and the kernel starts with ``absmax`` and
  ``tokens`` (:func:`per_token_bytes`), its affine epilogue multiplying by the row's step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tvm.ir import Expr as PrimExpr
from tvm import te, tirx

from ..packing import (WORD_BITS, WORD_DTYPE, element_bit_te, num_words, pack_planes_te, padding_bit_te,
                       valid_word_te, within_bounds, word_dtype)
from ..encodings import Encoding
from ..schemes import PER_TOKEN_LEVELS, PER_TOKEN_MIN_ABSMAX, FgqScheme, PackedScheme


def pack_data(x: te.Tensor, scheme: PackedScheme, padding: Sequence[int], word_bits: int = WORD_BITS,
              thresholds: te.Tensor | None = None, column_phases: int = 1) -> te.Tensor:
    """Values ``[N, C, *spatial]`` -> the kernel's packed, pre-padded planes
    ``[N, kernel_planes, *(spatial + 2 pad), Cw]`` (stage ``pack``): padded taps hold the
    encoding's pad bits, bipolar activations get the validity plane. With ``thresholds``,
    ``x`` is float and quantized on the way; ``column_phases`` stores the columns by phase
    for a strided patch gather (see :func:`~tvm_ternary.packing.pack_planes_te`)."""
    return pack_planes_te(x, scheme.activation, padding, scheme.activation.needs_validity_plane,
                          word_bits=word_bits, thresholds=thresholds, column_phases=column_phases)


MAX_SPLIT_TERMS = 4
"""Schemes with at most this many popcount terms keep one accumulator per term."""


def term_coefficients(scheme: PackedScheme) -> list[int]:
    """Coefficients of the scheme's popcount terms (they do not depend on the words)."""
    zero = lambda plane: tirx.const(0, WORD_DTYPE)  # noqa: E731
    return [c for c, _ in scheme.terms(zero, zero)]


def accumulator_dtype(word: str, split: bool = True) -> str:
    """Accumulators as wide as the words: a 64-bit popcount's count stays in its 64-bit lane
    (narrowing it would cost a shuffle per popcount), and a 16-bit one in a ``uint16`` lane
    (NEON: ``cnt`` + ``uadalp`` per word; callers keep the sum below 2^16, see
    :data:`MAX_NARROW_WORDS`). A weighted sum of terms (``split=False``) needs signed 32 bits."""
    if word == "uint64":
        return "int64"
    return "uint16" if word == "uint16" and split else "int32"


MAX_NARROW_WORDS = 4095
"""Most 16-bit words one output may reduce over with ``uint16`` accumulators (16 per word)."""


def valid_taps(o: Sequence[PrimExpr], kernel: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], spatial: Sequence[int], dilation: Sequence[int]) -> PrimExpr:
    """Number of kernel positions of output ``o`` that fall inside the unpadded input:
    per axis ``#{t < k : 0 <= o*s + t*d - p < size}``, multiplied over the axes."""
    count = tirx.const(1, "int32")
    for oi, k, s, p, size, d in zip(o, kernel, stride, padding, spatial, dilation):
        first = oi * s - p
        lo = tirx.max(tirx.floordiv(d - 1 - first, d), 0)          # first t with first + t*d >= 0
        hi = tirx.min(tirx.floordiv(size - first + d - 1, d), k)    # first t with first + t*d >= size
        count = count * tirx.max(hi - lo, 0)
    return count


@dataclass(frozen=True)
class ConvGeometry:
    """What the valid-tap term needs of a convolution: input channels, kernel, stride,
    padding, the unpadded spatial size and dilation (empty tuples for dense)."""

    channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    spatial: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()


def packed_correlation(xp: te.Tensor, wp: te.Tensor, scheme: PackedScheme, out_channels: int,
                       out_spatial: Sequence[int], stride: Sequence[int],
                       correction: te.Tensor | None = None, geometry: "ConvGeometry | None" = None,
                       dilation: Sequence[int] = ()) -> te.Tensor:
    """Popcount correlation in two stages.

    ``acc`` ``[N, Kb, *out_spatial, G, V]`` int32: for output channel ``ko * V + ki``, the
    sum over kernel taps and words of each popcount term (split accumulators, ``G`` = number
    of terms) or, for schemes with more than :data:`MAX_SPLIT_TERMS` terms, of their
    weighted sum (``G`` = 1). ``wp`` is blocked by ``V`` output channels:
    ``[Kb, Pw, *kernel, Cw, V]``. ``stride`` and ``dilation`` (default 1) place the taps
    of ``wp``'s kernel on ``xp``: for the patch layout, a 1x1 kernel with unit stride,
    while ``geometry`` keeps the convolution's own.

    ``out`` ``[N, K, *out_spatial]`` int32: the terms combined with their coefficients, plus
    ``correction[k]`` when given, plus the scheme's valid-tap term (input channels times
    :func:`valid_taps` of the convolution's ``geometry``, which the patch layout needs
    because its kernel is 1x1 over whole patches); the epilogue stage that schedules fuse
    into the tile.
    """
    n = int(xp.shape[0])
    kb, _, *kernel, cw, v = (int(d) for d in wp.shape)
    coefficients = term_coefficients(scheme)
    split = len(coefficients) <= MAX_SPLIT_TERMS
    acc_dtype = accumulator_dtype(str(xp.dtype), split)
    if acc_dtype == "uint16" and cw * int(np.prod(kernel)) > MAX_NARROW_WORDS:
        raise ValueError(f"packed_correlation: {cw * int(np.prod(kernel))} 16-bit words per output overflow "
                         f"uint16 accumulators (at most {MAX_NARROW_WORDS}); use 32-bit words")
    wide = "int64" if acc_dtype == "int64" else "int32"
    taps = [te.reduce_axis((0, s), name=f"r{d}") for d, s in enumerate(kernel)]
    word = te.reduce_axis((0, cw), name="rw")

    dilation = tuple(dilation) or (1,) * len(kernel)

    def acc(i, ko, *rest):
        *o, g, ki = rest
        pos = [oi * st + t * d for oi, st, t, d in zip(o, stride, taps, dilation)]
        terms = scheme.terms(lambda p: xp[(i, p, *pos, word)], lambda q: wp[(ko, q, *taps, word, ki)])
        popc = lambda w: tirx.popcount(w).astype(acc_dtype)  # noqa: E731
        if split:
            value = popc(terms[-1][1])
            for t in reversed(range(len(terms) - 1)):
                value = tirx.Select(g == t, popc(terms[t][1]), value)
        else:
            value = sum(c * popc(term) for c, term in terms)
        return te.sum(value, axis=[*taps, word])

    groups = len(coefficients) if split else 1
    accumulated = te.compute((n, kb, *out_spatial, groups, v), acc, name="acc")
    weights = coefficients if split else [1]

    def out(i, oc, *o):
        value = sum(c * accumulated[(i, oc // v, *o, g, oc % v)].astype(wide)
                    for g, c in enumerate(weights)).astype("int32")
        if scheme.valid_tap_coefficient:
            taps = valid_taps(o, geometry.kernel, geometry.stride, geometry.padding, geometry.spatial,
                              geometry.dilation)
            value = value + scheme.valid_tap_coefficient * geometry.channels * taps
        return value + correction[oc] if correction is not None else value

    return te.compute((n, out_channels, *out_spatial), out, name="out")


def _fence(v: PrimExpr) -> PrimExpr:
    """``v`` behind an arithmetic fence: LLVM may not contract it into a neighbouring FMA."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", v)


def affine_value(y: PrimExpr, scale: PrimExpr, bias: PrimExpr, relu: bool, residual: PrimExpr | None = None
                 ) -> PrimExpr:
    """One output of :func:`affine`: float32 ``y * scale + bias (+ residual)``, ReLU'd with
    ``relu``, the product rounded before the sum (see :func:`affine`)."""
    v = _fence(y * scale) + bias
    if residual is not None:
        v = v + residual
    return tirx.max(v, tirx.const(0.0, "float32")) if relu else v


def affine(y: te.Tensor, scale: te.Tensor, bias: te.Tensor, relu: bool, block: int = 0,
           residual: te.Tensor | None = None, row_scale=None) -> te.Tensor:
    """Epilogue to float: ``y * scale[k] + bias[k]`` per output channel (a folded BatchNorm,
    the dequantization scale, the layer's bias), plus ``residual`` (a residual add's other
    operand, in the output's layout), then ``max(., 0)`` with ``relu`` (stage ``affine``;
    float32, the shape of ``y`` ``[N, K, *o]``, or with ``block`` ``B`` the channel-blocked
    ``[N, K/B, *o, B]`` of :mod:`tvm_ternary.layout`).

    The product is rounded before the sum, as PyTorch and Relax's separate multiply and
    add do: an arithmetic fence keeps LLVM (which TVM lets contract freely) from fusing
    them into one FMA, whose single rounding would differ in the last bit. ``row_scale``
    (``i -> float32``, per-token activations) multiplies first: ``(y * row_scale[i]) * scale[k]``."""
    def value(index, i, oc, *o):
        y_value = y[(i, oc, *o)].astype("float32")
        if row_scale is not None:
            y_value = _fence(y_value * row_scale(i))
        return affine_value(y_value, scale[oc], bias[oc], relu, None if residual is None else residual[index])

    if not block:
        return te.compute(y.shape, lambda *index: value(index, *index), name="affine")
    n, k, *o = (int(d) for d in y.shape)
    return te.compute((n, k // block, *o, block),
                      lambda i, kb, *rest: value((i, kb, *rest), i, kb * block + rest[-1], *rest[:-1]), name="affine")


UNROLLED_THRESHOLDS = 16
"""Quantizers with up to this many thresholds count them in one expression (inlinable into
the packing stage); more (8-bit levels) use a reduction stage."""

UNIFORM_MIN_THRESHOLDS = 8
"""Uniform quantizers with at least this many thresholds (4-bit levels and up) compute
their levels from ``x / scale`` (:func:`uniform_thresholds`) instead of comparing with
every threshold."""


def quantize_levels(x: te.Tensor, thresholds: te.Tensor, lo: float, step: float, dtype: str,
                    uniform: tuple[float, float] | None = None) -> te.Tensor:
    """Activation quantizer: ``lo + step * #{j : x >= thresholds[j]}`` elementwise, in
    ``dtype`` (stage ``levels``). Float compares and small integer sums: exact, and equal to
    ``tvm_ternary::quantize`` in PyTorch (see :mod:`tvm_ternary.quant.activations`).

    With ``uniform`` ``(first, scale)``, the thresholds are exactly ``fl((first + j) * scale)``
    in float32 (a uniform quantizer's, see :func:`uniform_thresholds`) and the count is
    computed, not counted: an estimate from ``x / scale``, then one compare on each side of
    it, with thresholds recomputed by that same float32 multiply, makes it exact (the
    estimate is off by at most one). A few vector operations per value instead of one
    compare per threshold, for quantizers of 4 bits and up. NaN inputs have no defined level (this path
    gives the top one, as PyTorch's ``bucketize`` does; counting gives the bottom one)."""
    count_thresholds = int(thresholds.shape[0])
    if uniform is not None:
        def count(*i):
            return tirx.Cast(dtype, uniform_count(x(*i), *uniform, count_thresholds))
    elif count_thresholds <= UNROLLED_THRESHOLDS:
        def count(*i):
            return sum((tirx.Cast(dtype, x(*i) >= thresholds[j]) for j in range(1, count_thresholds)),
                       tirx.Cast(dtype, x(*i) >= thresholds[0]))
    else:
        j = te.reduce_axis((0, count_thresholds), name="j")
        count = te.compute(x.shape, lambda *i: te.sum(tirx.Cast(dtype, x(*i) >= thresholds[j]), axis=j),
                           name="count")
    return te.compute(x.shape, lambda *i: tirx.const(lo, dtype) + tirx.const(step, dtype) * count(*i),
                      name="levels")


def uniform_count(v: PrimExpr, first: float, scale: float, count: int) -> PrimExpr:
    """int32 ``#{j < count : v >= float32((first + j) * scale)}`` for float32 ``v``: the
    computed count of :func:`quantize_levels` (an estimate from ``v / scale``, then one compare
    on each side of it against thresholds recomputed by the same float32 multiply)."""
    def threshold(j: PrimExpr) -> PrimExpr:          # thresholds[j], bit for bit
        return (j.astype("float32") + tirx.const(first, "float32")) * tirx.const(scale, "float32")

    position = tirx.max(tirx.min(v * tirx.const(1.0 / scale, "float32") - tirx.const(first - 1, "float32"),
                                 tirx.const(count, "float32")), tirx.const(0.0, "float32"))
    guess = position.astype("int32")            # 0..count thresholds reached, estimated (truncation: floor)
    above = tirx.all(guess < count, v >= threshold(guess))                 # reaches the next one too
    below = tirx.all(guess > 0, v < threshold(guess - 1))                  # misses the last one counted
    return guess + above.astype("int32") - below.astype("int32")


def uniform_thresholds(thresholds: np.ndarray) -> tuple[float, float] | None:
    """``(first, scale)`` with ``thresholds[j] == float32((first + j) * scale)`` exactly, where
    ``first`` is a half-integer (a uniform quantizer's ``(level + 0.5) * scale``, as
    :class:`~tvm_ternary.quant.activations.UniformQuantizer` computes them), when there are
    at least :data:`UNIFORM_MIN_THRESHOLDS` of them; else None (:func:`quantize_levels` counts)."""
    t = np.asarray(thresholds, np.float32)
    if len(t) < UNIFORM_MIN_THRESHOLDS or not np.all(np.isfinite(t)) or t[-1] <= t[0]:
        return None
    spacing = (float(t[-1]) - float(t[0])) / (len(t) - 1)
    first = np.floor(float(t[0]) / spacing) + 0.5
    steps = np.float32(first) + np.arange(len(t), dtype=np.float32)
    up = down = np.float32(float(t[-1]) / float(steps[-1]))
    if abs(first) + len(t) >= 2 ** 22:  # levels that far out: float32 estimates lose their one-step margin
        return None
    for _ in range(4):                  # the estimate, and up to 3 ulps either side of it
        for scale in (up, down):
            with np.errstate(over="ignore", divide="ignore"):
                inverse = np.float32(1) / scale
            if np.array_equal(steps * scale, t) and np.isfinite(inverse) and scale > 0:
                return float(first), float(scale)
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
    return None


def threshold_count(encoding: Encoding) -> int:
    """Thresholds that requantize to ``encoding``: one fewer than its number of levels."""
    lo, hi = encoding.value_range
    return (hi - lo) // encoding.level_step


def quantizer_levels(encoding: Encoding) -> tuple[float, float, int]:
    """``(lo, step, number of thresholds)`` of the activation quantizer (see
    :func:`quantize_levels`) whose levels are exactly ``encoding``'s values."""
    return float(encoding.value_range[0]), float(encoding.level_step), threshold_count(encoding)


def pack_bit_chunks(bits: te.Tensor, lanes: int, word_bits: int) -> te.Tensor:
    """0/1 ``bits`` ``[..., words * word_bits]`` -> words ``[..., words]`` in two stages:
    ``chunk``, ``lanes`` consecutive bits as one integer (a movemask, which schedules
    tensorize), and ``pack``, the chunks of a word shifted into place."""
    *outer, elements = (int(d) for d in bits.shape)
    dtype = word_dtype(word_bits)
    lane = te.reduce_axis((0, lanes), name="lane")
    chunk = te.compute((*outer, elements // lanes), lambda *i: te.sum(
        tirx.shift_left(bits[(*i[:-1], i[-1] * lanes + lane)].astype(WORD_DTYPE), lane.var.astype(WORD_DTYPE)),
        axis=lane), name="chunk")
    part = te.reduce_axis((0, word_bits // lanes), name="part")
    return te.compute((*outer, elements // word_bits), lambda *i: te.sum(
        tirx.shift_left(chunk[(*i[:-1], i[-1] * (word_bits // lanes) + part)].astype(dtype),
                        (part.var * lanes).astype(dtype)), axis=part), name="pack")


def pack_blocked_data(x: te.Tensor, scheme: PackedScheme, padding: Sequence[int], word_bits: int,
                      thresholds: te.Tensor | None = None) -> te.Tensor:
    """:func:`pack_data` for a channel-blocked ``x`` ``[N, C/B, *spatial, B]`` (the layout of
    :mod:`tvm_ternary.layout`; ``B`` divides the word), with the same result, in the
    requantize epilogue's stages: ``bits`` (each plane's 0/1 per channel, the encoding's pad
    bits in the padding, 0 past the channels), then :func:`pack_bit_chunks` with ``B``
    lanes, so a schedule turns each vector of ``B`` channels into ``B`` bits at once."""
    n, blocks, *spatial, lanes = (int(d) for d in x.shape)
    channels = blocks * lanes
    enc = scheme.activation
    stored, validity = enc.num_planes, enc.needs_validity_plane
    padded = [s + 2 * p for s, p in zip(spatial, padding)]

    def bit(i, plane, *rest):
        *pos, ch = rest
        src = [q - p for q, p in zip(pos, padding)]
        clamped = [tirx.min(tirx.max(s_, 0), size - 1) for s_, size in zip(src, spatial)]   # loads stay in bounds
        x_value = x[(i, tirx.min(ch // lanes, blocks - 1), *clamped, ch % lanes)]
        value = tirx.Select(within_bounds(src, spatial), element_bit_te(enc, x_value, plane, validity, thresholds),
                            padding_bit_te(enc, plane))
        return tirx.Select(ch < channels, value, 0)

    bits = te.compute((n, stored + int(validity), *padded, num_words(channels, word_bits) * word_bits), bit,
                      name="bits")
    return pack_bit_chunks(bits, lanes, word_bits)


def requantize_pack(y: te.Tensor, thresholds: te.Tensor, encoding: Encoding,
                    padding: Sequence[int], lanes: int, word_bits: int = WORD_BITS) -> te.Tensor:
    """Epilogue for a quantized next layer: int32 ``y`` ``[N, K, *o]`` -> its packed,
    pre-padded planes ``[N, P', *(o + 2 pad), Kw]`` (what :func:`pack_data` would produce).

    ``bits``: each plane's 0/1 per channel (channels padded to whole words; the validity
    plane for bipolar encodings) of ``q = lo + step * #{l : y >= thresholds[l, k]}``, with
    ``thresholds`` ``[L, K]`` int32 ascending per channel (per-channel scale, bias, BatchNorm
    and the next quantizer fold into them; a channel with a negative scale is handled by
    negating its weights), by :meth:`Encoding.plane_bit_of_levels`. ``chunk``: ``lanes`` consecutive bits as one
    integer (a movemask, which schedules tensorize). ``pack``: the chunks of a word.
    ``repad``: the next layer's value-domain padding, when it has any.
    """
    n, k, *o = (int(d) for d in y.shape)
    levels = int(thresholds.shape[0])
    stored = encoding.num_planes
    planes = stored + int(encoding.needs_validity_plane)
    words = num_words(k, word_bits)
    dtype = word_dtype(word_bits)

    def bit(i, plane, *rest):
        *pos, c = rest
        value = encoding.plane_bit_of_levels([y[(i, c, *pos)] >= thresholds[level, c] for level in range(levels)],
                                             plane)
        if encoding.needs_validity_plane:
            value = tirx.if_then_else(plane == stored, 1, value)
        return tirx.if_then_else(c < k, value, 0)

    bits = te.compute((n, planes, *o, words * word_bits), bit, name="bits")
    packed = pack_bit_chunks(bits, lanes, word_bits)
    if not any(padding):
        return packed
    shape = (n, planes, *(s + 2 * p for s, p in zip(o, padding)), words)

    def word(i, plane, *rest):
        *pos, w = rest
        src = [q_ - p for q_, p in zip(pos, padding)]
        pad = tirx.const(0, dtype)
        for p in range(encoding.num_planes):
            if encoding.pad_bit(p):
                pad = tirx.if_then_else(plane == p, valid_word_te(w, k, word_bits), pad)
        return tirx.if_then_else(within_bounds(src, o), packed[(i, plane, *src, w)], pad)

    return te.compute(shape, word, name="repad")


def phase_grid(padded: Sequence[int], phases: Sequence[int]) -> tuple[int, int]:
    """``(Hq, Wq)``: the rows and columns of one phase of a padded image ``[Hp, Wp]`` split by
    ``phases`` ``(sh, sw)`` (see :func:`layout_bytes`)."""
    (hp, wp), (sh, sw) = padded, phases
    return -(-hp // sh), -(-wp // sw)


def phased_position(y: PrimExpr, x: PrimExpr, phases: Sequence[int], rows: int) -> tuple[PrimExpr, PrimExpr]:
    """Where padded pixel ``(y, x)`` lies in the phase-split layout of :func:`layout_bytes`
    (``rows`` = ``Hq``): row ``((y % sh) * sw + x % sw) * Hq + y // sh``, column ``x // sw``."""
    sh, sw = phases
    return ((y % sh) * sw + x % sw) * rows + y // sh, x // sw


def padded_pixel(row: PrimExpr, col: PrimExpr, phases: Sequence[int], rows: int) -> tuple[PrimExpr, PrimExpr]:
    """The padded pixel ``(y, x)`` at ``(row, col)`` of the phase-split layout: the inverse of
    :func:`phased_position` (positions past the padded image map past it too)."""
    sh, sw = phases
    phase = row // rows
    return (row % rows) * sh + phase // sw, col * sw + phase % sw


def byte_layout_shape(n: int, padded: Sequence[int], channels: int, phases: Sequence[int] = ()) -> tuple[int, ...]:
    """Shape of :func:`layout_bytes`' result for a padded image of sizes ``padded``."""
    if any(s > 1 for s in phases):
        hq, wq = phase_grid(padded, phases)
        return (n, phases[0] * phases[1] * hq, wq, channels)
    return (n, *padded, channels)


def layout_bytes(x: te.Tensor, padding: Sequence[int], channels: int, offset: int = 0, block: int = 0,
                 phases: Sequence[int] = (), stored: bool = False) -> te.Tensor:
    """Byte-scheme data: values ``[N, C, *spatial]`` -> uint8 ``[N, *(spatial + 2 pad), channels]``
    (stage ``layout``): each value plus ``offset``, padded taps ``offset`` (value 0), channels
    beyond ``C`` (to ``channels``, a whole number of quads or groups) 0 (their weights are 0).
    With ``block`` ``B`` the values arrive channel-blocked, ``[N, C/B, *spatial, B]``; with
    ``stored``, they are the bytes already (value plus ``offset``, :func:`requantize_bytes`).

    ``phases`` ``(sh, sw)`` (conv2d) splits the padded image ``[Hp, Wp]`` by row and column
    phase: ``[N, sh * sw * Hq, Wq, channels]`` with ``Hq = ceil(Hp / sh)``, ``Wq = ceil(Wp / sw)``,
    padded pixel ``(y, x)`` at row ``((y % sh) * sw + x % sw) * Hq + y // sh``, column ``x // sw``
    (positions beyond the padded image hold padding). A stride-``s`` conv2d reads each phase
    as a stride-1 one (:mod:`.amx`); ``(1, 1)`` is the plain layout."""
    n, c, *spatial = (int(d) for d in x.shape)
    if block:
        c, spatial = c * block, spatial[:-1]
    padded = [s + 2 * p for s, p in zip(spatial, padding)]
    phased = any(s > 1 for s in phases)
    shape = byte_layout_shape(n, padded, channels, phases)
    rows = phase_grid(padded, phases)[0] if phased else 0

    def byte(i, *rest):
        *pos, ch = rest
        if phased:                                 # back to the padded image's (y, x)
            pos = padded_pixel(*pos, phases, rows)
        src = [q - p for q, p in zip(pos, padding)]
        inside = tirx.all(ch < c, within_bounds(src, spatial)) if src else ch < c
        outside = tirx.if_then_else(ch < c, offset, 0)           # a padded tap, or a channel beyond C
        value = x[(i, ch // block, *src, ch % block)] if block else x[(i, ch, *src)]
        return tirx.if_then_else(inside, value.astype("int32") + (0 if stored else offset), outside).astype("uint8")

    return te.compute(shape, byte, name="layout")


@dataclass(frozen=True)
class ByteRequantizer:
    """What the int8 scheme's requantize epilogues write: the affine epilogue's float32 value
    ``v`` through the next layer's uniform activation quantizer, level
    ``lo + step * uniform_count(v, first, scale, count)`` (:func:`uniform_count`), stored as
    ``level + offset`` in the next layer's data layout (:func:`layout_bytes` with ``padding``,
    ``channels`` and ``phases``). These are the float32 operations the next layer's quantize
    stage runs on ``v``, so the bytes are the ones it would write, with no float tensor between
    the two kernels."""

    lo: int
    step: int
    count: int
    first: float
    scale: float
    offset: int
    padding: tuple[int, ...]
    channels: int
    phases: tuple[int, ...] = ()

    def byte(self, v: PrimExpr) -> PrimExpr:
        """The stored uint8 byte of float32 ``v``."""
        count = uniform_count(v, self.first, self.scale, self.count)
        return (tirx.const(self.lo + self.offset, "int32") + tirx.const(self.step, "int32") * count).astype("uint8")

    def padded(self, spatial: Sequence[int]) -> list[int]:
        """The next layer's padded image sizes for this layer's output sizes ``spatial``."""
        return [s + 2 * p for s, p in zip(spatial, self.padding)]

    def layout_shape(self, n: int, spatial: Sequence[int]) -> tuple[int, ...]:
        """Shape of the bytes written for an output ``[n, K, *spatial]``."""
        return byte_layout_shape(n, self.padded(spatial), self.channels, self.phases)

    def position(self, pixel: Sequence[PrimExpr], spatial: Sequence[int]) -> tuple[PrimExpr, PrimExpr]:
        """Where output pixel ``(y, x)`` of an output of sizes ``spatial`` lies in the layout."""
        y, x = (q + p for q, p in zip(pixel, self.padding))
        if not any(s > 1 for s in self.phases):
            return y, x
        return phased_position(y, x, self.phases, phase_grid(self.padded(spatial), self.phases)[0])

    def padded_pixel(self, row: PrimExpr, col: PrimExpr, spatial: Sequence[int]) -> tuple[PrimExpr, PrimExpr]:
        """The padded pixel at ``(row, col)`` of the layout (:func:`padded_pixel`)."""
        if not any(s > 1 for s in self.phases):
            return row, col
        return padded_pixel(row, col, self.phases, phase_grid(self.padded(spatial), self.phases)[0])


def requantize_bytes(y: te.Tensor, scale: te.Tensor, bias: te.Tensor, relu: bool, requantizer: ByteRequantizer,
                     block: int) -> te.Tensor:
    """The int8 scheme's requantize epilogue over int32 ``y`` ``[N, K, *o]`` (``K`` a multiple
    of ``block`` ``B``): ``requant`` ``[N, K/B, *o, B]`` uint8, each output's byte
    (:meth:`ByteRequantizer.byte` of :func:`affine_value`, what the affine epilogue computes),
    then ``layout``, the next layer's padded (phase-split) bytes from it
    (:func:`layout_bytes` with ``stored``)."""
    n, k, *o = (int(d) for d in y.shape)

    def byte(i, kb, *rest):
        channel = kb * block + rest[-1]
        v = affine_value(y[(i, channel, *rest[:-1])].astype("float32"), scale[channel], bias[channel], relu)
        return requantizer.byte(v)

    stored = te.compute((n, k // block, *o, block), byte, name="requant")
    return layout_bytes(stored, requantizer.padding, requantizer.channels, requantizer.offset, block,
                        requantizer.phases, stored=True)


def byte_dot_correlation(xb: te.Tensor, wb: te.Tensor, out_channels: int, out_spatial: Sequence[int],
                         stride: Sequence[int], dilation: Sequence[int] = (),
                         correction: te.Tensor | None = None) -> te.Tensor:
    """The int8 scheme's kernel over pre-padded ``xb`` (:func:`layout_bytes`) and weights
    ``wb`` int8 ``[Kb, *kernel, C4/4, V, 4]`` (blocked by ``V`` output channels, channels in
    quads, as FGQ's): ``dot`` ``[N, Kb, *out, 1, V]`` int32 sums
    ``xb[.., 4q + b] * wb[.., q, v, b]`` over taps, quads and bytes (schedules tensorize the
    ``(v, b)`` loops into one dot-product instruction); ``out`` ``[N, K, *out]`` adds the
    scheme's per-channel ``correction`` (int32 ``[K]``) if any."""
    n = int(xb.shape[0])
    kb, *kernel, quads, v, _ = (int(d) for d in wb.shape)
    quad = te.reduce_axis((0, quads), name="rq")
    byte = te.reduce_axis((0, 4), name="rb")
    taps = [te.reduce_axis((0, k), name=f"r{d}") for d, k in enumerate(kernel)]
    dilation = tuple(dilation) or (1,) * len(kernel)

    def dot(i, ko, *rest):
        *o, _, vi = rest
        pos = [oi * st + t * d for oi, st, t, d in zip(o, stride, taps, dilation)]
        return te.sum(xb[(i, *pos, quad * 4 + byte)].astype("int32") * wb[(ko, *taps, quad, vi, byte)].astype("int32"),
                      axis=[*taps, quad, byte])

    summed = te.compute((n, kb, *out_spatial, 1, v), dot, name="dot")

    def out(i, oc, *o):
        y = summed[(i, oc // v, *o, 0, oc % v)]
        return y if correction is None else y + correction[oc]

    return te.compute((n, out_channels, *out_spatial), out, name="out")


def pad_features(x: te.Tensor, channels: int) -> te.Tensor:
    """Float rows ``x`` ``[N, C]`` zero-padded to ``[N, channels]`` (stage ``layout``): the data
    stage of per-token activations, which the kernel quantizes."""
    n, c = (int(d) for d in x.shape)
    return te.compute((n, channels), lambda i, k: tirx.if_then_else(k < c, x[i, tirx.min(k, c - 1)],
                                                                    tirx.const(0.0, x.dtype)), name="layout")


def _per_token_absmax_te(x: te.Tensor) -> te.Tensor:
    """``absmax`` ``x.shape[:-1]`` float32: each row's ``max_k |x|`` (stage ``absmax``)."""
    *rows, c = (int(d) for d in x.shape)
    k = te.reduce_axis((0, c), name="rk")
    return te.compute(tuple(rows), lambda *i: te.max(tirx.abs(x[(*i, k)]), axis=k), name="absmax")


def _row_absmax(absmax: te.Tensor, row) -> PrimExpr:
    return tirx.max(absmax[row], tirx.const(PER_TOKEN_MIN_ABSMAX, "float32"))


def _per_token_level(x_value: PrimExpr, absmax: PrimExpr) -> PrimExpr:
    """``clip(rint(x * ((1 / absmax) * 127)), -127, 127)`` in float32: the scale as PyTorch
    computes ``127 / absmax`` (a reciprocal, then a multiply; a true division differs in the
    last bit for a quarter of the values), rounded half to even as ``torch.round``."""
    top = tirx.const(PER_TOKEN_LEVELS, "float32")
    scale = tirx.const(1.0, "float32") / absmax * top
    return tirx.max(tirx.min(tirx.nearbyint(x_value * scale), top), -top)


def per_token_levels_te(x: te.Tensor) -> te.Tensor:
    """Per-token levels of float32 rows (the last axis) of any rank, as float32 (stage
    ``levels``): what ``tvm_ternary::quantize_per_token`` computes, for a graph that runs
    without our kernels."""
    absmax = _per_token_absmax_te(x)
    return te.compute(x.shape, lambda *i: _per_token_level(x(*i), _row_absmax(absmax, i[:-1])), name="levels")


def per_token_step_te(x: te.Tensor) -> te.Tensor:
    """Each row's step ``max(absmax, 1e-5) / 127``, ``[..., 1]`` (stage ``step``)."""
    absmax = _per_token_absmax_te(x)
    return te.compute((*x.shape[:-1], 1), lambda *i: token_step(absmax)(i[:-1]), name="step")


def per_token_bytes(x: te.Tensor) -> tuple[te.Tensor, te.Tensor]:
    """Per-token activations (BitNet's) for the kernel: float32 rows ``x`` ``[N, C]`` ->
    ``(absmax, tokens)``: ``absmax`` ``[N]`` float32, ``max_k |x|``; ``tokens`` uint8 ``[N, C]``,
    the level (:func:`_per_token_level` with ``a = max(absmax, 1e-5)``) plus 128.
    :func:`token_step` is the row's dequantization step."""
    absmax = _per_token_absmax_te(x)

    def token(i, j):
        return (_per_token_level(x[i, j], _row_absmax(absmax, (i,))).astype("int32") + 128).astype("uint8")

    return absmax, te.compute(x.shape, token, name="tokens")


def token_step(absmax: te.Tensor):
    """``row -> max(absmax[row], 1e-5) / 127``: the float value of one level of a row (per-token
    activations); ``row`` an index or a tuple of them."""
    return lambda row: _row_absmax(absmax, row) / tirx.const(PER_TOKEN_LEVELS, "float32")


def ternary_code_dot(xb: te.Tensor, codes: te.Tensor, multipliers: te.Tensor, out_channels: int,
                     group: int, correction: te.Tensor | None = None) -> te.Tensor:
    """The ternary_int8 dense kernel: bytes ``xb`` uint8 ``[N, Gn*G]`` against 2-bit weight
    codes ``codes`` uint8 ``[Mb, Gn*G/16, V, 4]`` (code ``t + 1``, see
    :mod:`tvm_ternary.packing`) with ``multipliers`` int32 ``[Mb, Gn, V]``, groups of ``group``
    (``G``, a multiple of 16) inputs, in four stages:

    ``xsum`` ``[N, Gn]`` int32: each group's sum of activations;
    ``dot`` ``[N, Mb, Gn, V]`` int32: ``sum_{s, i, b} xb[.., 16s + 4i + b] * ((codes[.., s, v, b] >> 2i) & 3)``
    over the group's quads ``s`` (schedules tensorize a quad's ``(v, i, b)`` loops into four
    dot-product instructions on the shifted, masked codes);
    ``acc`` ``[N, Mb, V]`` int32: ``sum_g multipliers[.., g, v] * (dot - xsum[g])``, which is
    ``sum_k x_k t_k m_g`` because ``code = t + 1``;
    ``out`` ``[N, M]``, plus ``correction`` (int32 ``[M]``, the stored offset's) if any."""
    n, padded = (int(d) for d in xb.shape)
    blocks, _, v, _ = (int(d) for d in codes.shape)
    groups, quads = padded // group, group // 16
    element = te.reduce_axis((0, group), name="rk")
    xsum = te.compute((n, groups), lambda i, g: te.sum(xb[i, g * group + element].astype("int32"), axis=element),
                      name="xsum")
    quad = te.reduce_axis((0, quads), name="rs")
    shift = te.reduce_axis((0, 4), name="ri")
    byte = te.reduce_axis((0, 4), name="rb")

    def dot(i, kb, g, vi):
        s = g * quads + quad
        code = tirx.bitwise_and(tirx.shift_right(codes[kb, s, vi, byte].astype("int32"), shift * 2), 3)
        return te.sum(xb[i, s * 16 + shift * 4 + byte].astype("int32") * code, axis=[quad, shift, byte])

    summed = te.compute((n, blocks, groups, v), dot, name="dot")
    rg = te.reduce_axis((0, groups), name="rg")
    acc = te.compute((n, blocks, v), lambda i, kb, vi: te.sum(
        multipliers[kb, rg, vi] * (summed[i, kb, rg, vi] - xsum[i, rg]), axis=rg), name="acc")
    def out(i, m):
        y = acc[i, m // v, m % v]
        return y if correction is None else y + correction[m]

    return te.compute((n, out_channels), out, name="out")


def fgq_correlation(xb: te.Tensor, wb: te.Tensor, scales: te.Tensor, scheme: FgqScheme,
                    out_channels: int, out_spatial: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int] = ()) -> te.Tensor:
    """FGQ in three stages over pre-padded ``xb``, weights blocked by ``V`` output channels
    with the channels in quads (``wb`` int8 ``[Kb, *kernel, Cg*G/4, V, 4]``: the 4 weights
    of one quad for ``V`` channels are contiguous, the operand of a 4-way byte dot product)
    and ``scales`` float32 ``[Kb, Cg, *kernel, V]``:

    ``group`` ``[N, Kb, *out, *kernel, Cg, V]`` int32: the exact integer dot product of one
    group, ``sum_{j,b} x[.., g*G+4j+b] * w[.., g*G/4+j, v, b]`` (schedules compute it inside
    ``acc``'s loop, never whole in memory);
    ``acc`` ``[N, Kb, *out, V]`` float32: ``sum_{taps, g} scales[.., g, *taps, v] * group``;
    ``out`` ``[N, K, *out]``: back to NCHW.
    """
    n = int(xb.shape[0])
    padded_c = int(xb.shape[-1])
    kb, *kernel, _, v, _ = (int(d) for d in wb.shape)
    size = scheme.group_size
    groups = padded_c // size
    quad = te.reduce_axis((0, size // 4), name="rj")
    byte = te.reduce_axis((0, 4), name="rb")
    dilation = tuple(dilation) or (1,) * len(kernel)

    def group_sum(i, ko, *rest):
        o, taps, (g, vi) = rest[:len(kernel)], rest[len(kernel):-2], rest[-2:]
        pos = [oi * st + t * d for oi, st, t, d in zip(o, stride, taps, dilation)]
        q = g * (size // 4) + quad
        return te.sum(xb[(i, *pos, q * 4 + byte)].astype("int32") * wb[(ko, *taps, q, vi, byte)].astype("int32"),
                      axis=[quad, byte])

    grouped = te.compute((n, kb, *out_spatial, *kernel, groups, v), group_sum, name="group")
    taps = [te.reduce_axis((0, s), name=f"r{d}") for d, s in enumerate(kernel)]
    group = te.reduce_axis((0, groups), name="rg")

    def acc(i, ko, *rest):
        *o, vi = rest
        return te.sum(scales[(ko, group, *taps, vi)] * grouped[(i, ko, *o, *taps, group, vi)].astype("float32"),
                      axis=[*taps, group])

    accumulated = te.compute((n, kb, *out_spatial, v), acc, name="acc")
    return te.compute((n, out_channels, *out_spatial),
                      lambda i, oc, *o: accumulated[(i, oc // v, *o, oc % v)], name="out")


def pad_nchw(x: te.Tensor, padding: Sequence[int]) -> te.Tensor:
    """Zero padding of a float NCHW tensor (stage ``pad``), the data stage of :func:`float_conv_nchw`."""
    n, c, *spatial = (int(d) for d in x.shape)
    shape = (n, c, *(size + 2 * p for size, p in zip(spatial, padding)))

    def value(i, ch, *pos):
        inner = [q - p for q, p in zip(pos, padding)]
        return tirx.if_then_else(within_bounds(inner, spatial), x[(i, ch, *inner)], tirx.const(0.0, x.dtype))

    return te.compute(shape, value, name="pad")


def float_conv_nchw(xpad: te.Tensor, wb: te.Tensor, out_channels: int, out_spatial: Sequence[int],
                    stride: Sequence[int], blocked: bool = False) -> te.Tensor:
    """Float conv2d in the popcount kernels' form, so their schedule rule applies: ``acc``
    ``[N, Kb, *out, 1, V]`` sums ``xpad[n, c, o*s + t] * wb[kb, c, *t, v]`` over channels and
    taps (weights ``[Kb, C, *kernel, V]``, blocked by ``V`` output channels), and ``out``
    writes NCHW, or with ``blocked`` the channel-blocked ``[N, Kb, *out, V]`` (``K``
    a multiple of ``V``)."""
    n = int(xpad.shape[0])
    kb, c, *kernel, v = (int(d) for d in wb.shape)
    rc = te.reduce_axis((0, c), name="rc")
    taps = [te.reduce_axis((0, k), name=f"r{d}") for d, k in enumerate(kernel)]

    def acc(i, ko, *rest):
        *o, g, ki = rest
        pos = [oi * st + t for oi, st, t in zip(o, stride, taps)]
        return te.sum(xpad[(i, rc, *pos)] * wb[(ko, rc, *taps, ki)], axis=[rc, *taps])

    accumulated = te.compute((n, kb, *out_spatial, 1, v), acc, name="acc")
    if blocked:
        return te.compute((n, kb, *out_spatial, v), lambda i, ko, *rest: accumulated[(i, ko, *rest[:-1], 0, rest[-1])],
                          name="out")
    return te.compute((n, out_channels, *out_spatial),
                      lambda i, oc, *o: accumulated[(i, oc // v, *o, 0, oc % v)], name="out")
