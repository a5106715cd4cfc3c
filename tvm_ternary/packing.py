"""The bit-packing convention of tvm-ternary, defined once.

Every bit-packed tensor in this package follows these rules:

* **Word**: ``uint32`` (:data:`WORD_DTYPE`, :data:`WORD_BITS` = 32). 32-bit words keep
  32-bit popcounts feeding 32-bit accumulators (no widening), and at 64 channels leave
  two words per pixel, which keeps register tiles small. A kernel may use 64-bit words
  instead (``word_bits=64``, AVX2: there a 64-bit popcount needs no regrouping of byte
  counts); with the same bit order a ``uint64`` word holds elements ``64w .. 64w+63`` and
  its memory is that of two ``uint32`` words. NEON kernels use 16-bit words
  (``word_bits=16``): their popcounts then accumulate in 16-bit lanes (``cnt`` +
  ``uadalp``), again the same bits and memory.
* **Packed axis**: the reduction axis (input channels for conv2d, ``K`` for dense). It is
  always the innermost axis of a packed tensor, zero-padded up to a whole number of
  words: ``num_words(n) = ceil(n / 32)``.
* **Bit order**: LSB first. Element ``c`` of the packed axis is bit ``c % 32`` of word
  ``c // 32``.
* **Tail bits** (element index >= n in the last word) are always 0 in stored tensors.
  Kernels that need "this tap exists" use :func:`tail_mask` rather than relying on
  tail contents.
* **Planes**: an element of ``b`` bits is stored as ``b`` separate bit planes (plane
  ``p`` holds bit ``p`` of every element); the plane axis comes before the spatial
  axes. What the planes mean for each value set is defined in
  :mod:`tvm_ternary.encodings`.

Layouts (``P`` planes, ``Cw = num_words(C)``, ``Kw = num_words(K)``):

=====================  ==========================  ==========================
tensor                 values layout               packed layout
=====================  ==========================  ==========================
conv2d activations     ``[N, C, H, W]`` (NCHW)     ``[N, P, H, W, Cw]``
conv2d weights         ``[K, C, KH, KW]`` (OIHW)   ``[K, P, KH, KW, Cw]``
dense activations      ``[N, K]``                  ``[N, P, Kw]``
dense weights          ``[M, K]``                  ``[M, P, Kw]``
=====================  ==========================  ==========================

i.e. always ``[A, C, *spatial] -> [A, P, *spatial, words(C)]``.

**Patch layout** (conv2d with few input channels: ``2 C <= word bits`` and more than one
kernel tap, e.g. a 3-channel 7x7 stem). Packing ``C`` channels per tap would leave most of
each word empty, so the whole reduction ``C x KH x KW`` of an output pixel is packed
instead: ``T = taps_per_word(C, ...) = word_bits // C`` taps share a word, tap
``t = ky * KW + kx`` lives in word ``t // T`` and its channel ``c`` at bit
``(t % T) * C + c``; bits past ``T * C`` in a word and slots past the last tap are 0 in
every plane (like tail bits). Activations ``[N, P, OH, OW, Rw]`` (``Rw = ceil(KH*KW / T)``)
are gathered on the device from the ordinary padded planes by :func:`gather_patches_te`,
so padded taps keep their encoding's pad bits; weights ``[K, P, 1, 1, Rw]`` come from
:func:`pack_patch_planes`. The kernel is then a 1x1 convolution over ``Rw`` words.

Kernels read weights blocked by ``V`` output channels (:func:`block_channels`):
``[ceil(K/V), P, *kernel, Cw, V]``, so one vector load gives ``V`` channels' words; ``V``
is the target's vector width in words (1 = unblocked) and padded channels are zero. Weights are packed on
the host by :func:`pack_planes` (once, at compile time in a graph); activations on the
device by the TE compute of :func:`pack_planes_te`, so a graph can pack between layers.
Both produce the same words (the tests check it).

**2-bit weight codes** (the ``ternary_int8`` scheme, which multiplies them with bytes, not
bits): a ternary weight ``t`` is stored as the code ``t + 1`` (0, 1, 2) in 2 bits, four
codes per byte. Along the reduction axis (zero-padded to whole groups of 16), element
``16 s + 4 i + b`` of an output channel is bits ``2i, 2i+1`` of byte ``b`` of its quad ``s``:
shifting a quad's 4 bytes right by ``2i`` and masking with 3 gives the codes of elements
``16 s + 4 i .. + 3``, the operand of one 4-byte dot product. Blocked by ``V`` output
channels like every kernel weight: ``uint8 [ceil(M/V), K16/16, V, 4]``
(:func:`pack_ternary_codes`), so one load of ``4V`` bytes feeds four dot-product
instructions. Padded elements and channels hold code 1 (weight 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from tvm.ir import Expr as PrimExpr
from tvm import te, tirx

if TYPE_CHECKING:
    from .encodings import Encoding

WORD_BITS = 32
WORD_DTYPE = "uint32"


def word_dtype(word_bits: int = WORD_BITS) -> str:
    """dtype of a ``word_bits``-bit word (16, 32 or 64)."""
    if word_bits not in (16, 32, 64):
        raise ValueError(f"packing: words are 16, 32 or 64 bits, not {word_bits}")
    return f"uint{word_bits}"


def num_words(n: int, word_bits: int = WORD_BITS) -> int:
    """Number of words that hold ``n`` packed elements (the last one may be partial)."""
    return -(-n // word_bits)


def tail_mask(n: int, word_bits: int = WORD_BITS) -> int:
    """Bit mask of the valid elements in the last word of an ``n``-element packed axis."""
    rem = n % word_bits
    return (1 << word_bits) - 1 if rem == 0 else (1 << rem) - 1


def valid_word_te(word_index: PrimExpr, n: int, word_bits: int = WORD_BITS) -> PrimExpr:
    """TE expression: the mask of existing elements in word ``word_index`` of an
    ``n``-element packed axis (all ones except for the tail word)."""
    dtype, full_mask = word_dtype(word_bits), (1 << word_bits) - 1
    full = tirx.const(full_mask, dtype)
    if tail_mask(n, word_bits) == full_mask:
        return full
    return tirx.Select(word_index == num_words(n, word_bits) - 1,
                       tirx.const(tail_mask(n, word_bits), dtype), full)


def pack_bits(bits: np.ndarray, word_bits: int = WORD_BITS) -> np.ndarray:
    """Pack 0/1 values along the last axis into ``uint32`` (or ``uint64``) words, LSB first.

    ``bits`` has shape ``(..., n)`` with values in {0, 1}; the result has shape
    ``(..., num_words(n, word_bits))`` with zero tail bits.
    """
    bits = np.asarray(bits)
    n = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (num_words(n, word_bits) * word_bits,), dtype=np.uint8)
    padded[..., :n] = bits
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view(f"<u{word_bits // 8}").astype(word_dtype(word_bits))


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (either word size): words to ``(..., n)`` bits."""
    words = np.asarray(words)
    little = np.ascontiguousarray(words).astype(words.dtype.newbyteorder("<"))
    bits = np.unpackbits(little.view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :n]


def pack_words_te(
    shape: Sequence[int],
    n: int,
    bit: Callable[..., PrimExpr],
    name: str,
    word_bits: int = WORD_BITS,
) -> te.Tensor:
    """Device-side packing: a TE compute of ``shape`` whose last axis is the word axis.

    ``bit(*outer_indices, element_index)`` returns a 0/1 expression (any integer dtype)
    for element ``element_index`` < ``n`` of the packed axis; elements beyond ``n`` are
    tail bits and stay 0. The word is built as a sum of disjoint shifted bits, a
    reduction over the 32 bit positions that schedules may unroll or vectorize.
    """
    if shape[-1] != num_words(n, word_bits):
        raise ValueError(f"pack_words_te: last axis {shape[-1]} != num_words({n}, {word_bits})")
    dtype = word_dtype(word_bits)
    b = te.reduce_axis((0, min(word_bits, n)), name="bit")     # fewer elements than a word: no empty bits

    def word(*idx):
        *outer, w = idx
        element = w * word_bits + b
        value = tirx.if_then_else(element < n, bit(*outer, element).astype(dtype), tirx.const(0, dtype))
        return te.sum(tirx.shift_left(value, b.var.astype(dtype)), axis=b)

    return te.compute(tuple(shape), word, name=name)


def pack_planes(values: np.ndarray, encoding: "Encoding", word_bits: int = WORD_BITS) -> np.ndarray:
    """Host packing: values ``[A, C, *spatial]`` -> words ``[A, P, *spatial, num_words(C)]``.

    Planes come from ``encoding`` (:mod:`tvm_ternary.encodings`); ``C`` is the packed
    (reduction) axis.
    """
    planes = encoding.planes(np.moveaxis(np.asarray(values), 1, -1))  # [P, A, *spatial, C]
    return pack_bits(np.moveaxis(planes, 0, 1), word_bits)


def within_bounds(pos: Sequence[PrimExpr], sizes: Sequence[int]) -> PrimExpr:
    """TE condition: every index in ``pos`` lies in ``[0, size)``."""
    return tirx.all(*[tirx.all(p >= 0, p < s) for p, s in zip(pos, sizes)])


def pack_planes_te(x: te.Tensor, encoding: "Encoding", padding: Sequence[int] = (),
                   validity: bool = False, name: str = "pack", word_bits: int = WORD_BITS,
                   thresholds: te.Tensor | None = None, column_phases: int = 1) -> te.Tensor:
    """Device packing: ``x`` ``[A, C, *spatial]`` (any integer or float dtype holding integer
    values) -> ``uint32 [A, P + validity, *(spatial + 2 * padding), Cw]``.

    With ``column_phases`` ``s > 1`` (conv2d), the padded columns are stored by phase,
    ``[A, P', H', s, ceil(W' / s), Cw]`` (column ``w`` at ``[.., w % s, w // s, ..]``), so a
    stride-``s`` reader of the patch gather loads contiguous words.

    With ``thresholds`` (``[L]``, ascending), ``x`` holds the float inputs of a quantizer
    whose levels are the encoding's values: each element's planes come straight from its
    compares ``x >= thresholds[j]`` (:meth:`~tvm_ternary.encodings.Encoding.plane_bit_of_levels`).

    Without padding and validity this is the layout of :func:`pack_planes`. Spatial
    ``padding`` is written here, in the value domain (each plane holds the encoding's
    :meth:`~tvm_ternary.encodings.Encoding.pad_bit`), so kernels read pre-padded planes. With
    ``validity``, a last plane has a 1 for every existing tap (0 in padding and word tails),
    which bipolar kernels need because no bipolar value is the zero pattern.
    """
    a, c, *spatial = (int(d) for d in x.shape)
    padding = tuple(padding) or (0,) * len(spatial)
    stored = encoding.num_planes
    padded = [s + 2 * p for s, p in zip(spatial, padding)]
    if column_phases > 1:
        padded = [padded[0], column_phases, -(-padded[1] // column_phases)]
    shape = (a, stored + int(validity), *padded, num_words(c, word_bits))

    def bit(i, plane, *rest):
        *pos, element = rest
        if column_phases > 1:
            row, phase, column = pos
            pos = [row, column * column_phases + phase]
        src = [q - p for q, p in zip(pos, padding)]
        value = element_bit_te(encoding, x[(i, element, *src)], plane, validity, thresholds)
        if not src:
            return value
        return tirx.if_then_else(within_bounds(src, spatial), value, padding_bit_te(encoding, plane))

    return pack_words_te(shape, c, bit, name, word_bits)


def element_bit_te(encoding: "Encoding", value: PrimExpr, plane: PrimExpr, validity: bool,
                   thresholds: te.Tensor | None = None) -> PrimExpr:
    """TE expression: plane ``plane``'s bit of an existing element, ``value`` being its level
    or, with ``thresholds`` (``[L]``, ascending), the float its quantizer compares; with
    ``validity``, the validity plane (index ``encoding.num_planes``) is 1."""
    if thresholds is None:
        bit = encoding.plane_bit_te(value.astype("int32"), plane)
    else:
        bit = encoding.plane_bit_of_levels([value >= thresholds[j] for j in range(int(thresholds.shape[0]))], plane)
    return tirx.if_then_else(plane == encoding.num_planes, 1, bit) if validity else bit


def padding_bit_te(encoding: "Encoding", plane: PrimExpr) -> PrimExpr:
    """TE expression: plane ``plane``'s bit of a padded tap, the encoding's
    :meth:`~tvm_ternary.encodings.Encoding.pad_bit` (0 in the validity plane)."""
    pad = tirx.const(0, "int32")
    for p in range(encoding.num_planes):
        if encoding.pad_bit(p):
            pad = tirx.if_then_else(plane == p, 1, pad)
    return pad


def pack_planes_padded(values: np.ndarray, encoding: "Encoding", padding: Sequence[int] = (),
                       validity: bool = False, word_bits: int = WORD_BITS) -> np.ndarray:
    """Host version of :func:`pack_planes_te`: packed planes with value-domain padding and,
    with ``validity``, the validity plane: ``[A, P + validity, *(spatial + 2 pad), Cw]``."""
    values = np.asarray(values)
    planes = [pack_planes(values, encoding, word_bits)]
    if validity:
        planes.append(pack_bits(np.ones(np.moveaxis(values, 1, -1).shape, np.uint8), word_bits)[:, None])
    packed = np.concatenate(planes, axis=1)
    padding = tuple(padding) or (0,) * (values.ndim - 2)
    if not any(padding):
        return packed
    full = pack_bits(np.ones(values.shape[1], np.uint8), word_bits)     # valid bits of each word
    pad_words = np.array([full if p < encoding.num_planes and encoding.pad_bit(p) else 0 * full
                          for p in range(packed.shape[1])], word_dtype(word_bits))
    shape = (packed.shape[0], packed.shape[1], *(s + 2 * p for s, p in zip(values.shape[2:], padding)),
             packed.shape[-1])
    out = np.broadcast_to(pad_words.reshape(1, -1, *([1] * len(padding)), packed.shape[-1]), shape).copy()
    out[(slice(None), slice(None), *(slice(p, p + s) for p, s in zip(padding, values.shape[2:])))] = packed
    return out


def block_channels(packed: np.ndarray, block: int, multiple: int = 1) -> np.ndarray:
    """``[K, ...]`` -> ``[Kb, ..., block]``: output channels blocked, block innermost, zero-padded
    to a whole number of blocks covering a multiple of ``multiple`` channels (32 when an
    epilogue packs whole output words)."""
    k = packed.shape[0]
    step = block * multiple // np.gcd(block, multiple)
    blocks = -(-k // step) * step // block
    padded = np.zeros((blocks * block, *packed.shape[1:]), packed.dtype)
    padded[:k] = packed
    blocked = padded.reshape(blocks, block, *packed.shape[1:])
    return np.ascontiguousarray(np.moveaxis(blocked, 1, -1))


def pack_ternary_codes(values: np.ndarray, channels: int, block: int) -> np.ndarray:
    """Host packing of ternary weights ``[M, K]`` as 2-bit codes (see the module doc):
    ``uint8 [ceil(M/block), channels/16, block, 4]``, the reduction axis zero-padded (code 1)
    to ``channels`` (a multiple of 16, at least ``K``)."""
    values = np.asarray(values)
    m, k = values.shape
    if channels % 16 or channels < k:
        raise ValueError(f"pack_ternary_codes: channels {channels} must be a multiple of 16 and at least {k}")
    codes = np.ones((m, channels), np.uint8)
    codes[:, :k] = values + 1
    by_shift = codes.reshape(m, channels // 16, 4, 4)                   # [M, s, i, b]
    packed = np.zeros((m, channels // 16, 4), np.uint8)
    for i in range(4):
        packed |= by_shift[:, :, i, :] << np.uint8(2 * i)
    blocked = block_channels(packed, block)                              # [Mb, s, 4, V]; padded channels 0
    padded_channels = np.arange(blocked.shape[0] * block).reshape(-1, block) >= m
    blocked[np.broadcast_to(padded_channels[:, None, None, :], blocked.shape)] = 0x55   # code 1 everywhere
    return np.ascontiguousarray(np.swapaxes(blocked, -1, -2))


def taps_per_word(channels: int, kernel: Sequence[int], word_bits: int = WORD_BITS) -> int:
    """Kernel taps that share one word in the patch layout (see the module doc), or 1 when
    a conv2d with ``channels`` inputs and ``kernel`` keeps the ordinary layout (one tap per
    word: more than half a word of channels, or a single tap)."""
    taps = int(np.prod(kernel, dtype=np.int64)) if len(kernel) else 1
    per_word = word_bits // channels
    return per_word if per_word >= 2 and taps >= 2 else 1


def pack_patch_planes(values: np.ndarray, encoding: "Encoding", word_bits: int = WORD_BITS) -> np.ndarray:
    """Host packing of conv2d weights ``[K, C, KH, KW]`` in the patch layout:
    ``[K, P, 1, 1, ceil(KH*KW / T)]`` words, ``T = taps_per_word(C, (KH, KW), word_bits)``."""
    values = np.asarray(values)
    k, c, *kernel = values.shape
    per_word = taps_per_word(c, kernel, word_bits)
    taps = int(np.prod(kernel))
    words = -(-taps // per_word)
    planes = encoding.planes(np.moveaxis(values.reshape(k, c, taps), 1, 2))    # [P, K, taps, C]
    slots = np.zeros((planes.shape[0], k, words * per_word, c), np.uint8)
    slots[:, :, :taps] = planes
    bits = np.zeros((planes.shape[0], k, words, word_bits), np.uint8)
    bits[..., :per_word * c] = slots.reshape(planes.shape[0], k, words, per_word * c)
    packed = pack_bits(bits, word_bits)[..., 0]                                  # [P, K, words]
    return np.ascontiguousarray(np.moveaxis(packed, 0, 1)[:, :, None, None, :])


def gather_patches_te(xp: te.Tensor, channels: int, kernel: Sequence[int], stride: Sequence[int],
                      out_spatial: Sequence[int], dilation: Sequence[int] = (1, 1), name: str = "patches") -> te.Tensor:
    """Device gather into the patch layout: padded planes ``xp`` ``[N, P, H', W', 1]`` (one
    word of ``channels`` bits per pixel, from :func:`pack_planes_te`; stored by column phase,
    ``[N, P, H', s, W'/s, 1]``, for a column stride ``s > 1``) -> ``[N, P, OH, OW, Rw]``, each
    word the or of its ``T`` taps' words shifted to their slots (stage ``patches``)."""
    n, planes = (int(d) for d in xp.shape[:2])
    dtype = str(xp.dtype)
    word_bits = int(dtype[4:])
    per_word = taps_per_word(channels, kernel, word_bits)
    taps = int(np.prod(kernel))
    words = -(-taps // per_word)
    kw = int(kernel[1])
    slot = te.reduce_axis((0, per_word), name="slot")

    def word(i, plane, oh, ow, w):
        tap = w * per_word + slot
        clamped = tirx.min(tap, taps - 1)            # slots past the last tap read a real word, then drop it
        row, column = oh * stride[0] + clamped // kw * dilation[0], clamped % kw * dilation[1]
        if len(xp.shape) == 6:                       # by column phase: contiguous along ow
            value = xp[i, plane, row, column % stride[1], ow + column // stride[1], 0]
        else:
            value = xp[i, plane, row, ow * stride[1] + column, 0]
        shifted = tirx.shift_left(value, (slot.var * channels).astype(dtype))
        return te.sum(tirx.if_then_else(tap < taps, shifted, tirx.const(0, dtype)), axis=slot)

    return te.compute((n, planes, *out_spatial, words), word, name=name)


def gather_patches(packed: np.ndarray, channels: int, kernel: Sequence[int], stride: Sequence[int],
                   dilation: Sequence[int] = (1, 1)) -> np.ndarray:
    """Host version of :func:`gather_patches_te` (tests): padded planes ``[N, P, H', W', 1]``
    -> the patch layout ``[N, P, OH, OW, Rw]``."""
    word_bits = packed.dtype.itemsize * 8
    per_word = taps_per_word(channels, kernel, word_bits)
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = ((size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(packed.shape[2:4], kernel, stride, dilation))
    out = np.zeros((*packed.shape[:2], oh, ow, -(-kh * kw // per_word)), packed.dtype)
    for tap in range(kh * kw):
        ky, kx = (t * d for t, d in zip(divmod(tap, kw), dilation))
        window = packed[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw, 0]
        out[..., tap // per_word] |= window << packed.dtype.type((tap % per_word) * channels)
    return out
