"""TE compute of the operators, generic over spatial rank (2 for conv2d, 0 for dense).

Packed schemes (ternary, fatnn, bitserial), layouts from :mod:`tvm_ternary.packing`:

* data   ``xp`` uint32 ``[N, P, *spatial, Cw]`` (device-packed by :func:`pack_data`)
* weight ``wp`` uint32 ``[Kb, Pw, *kernel, Cw, V]`` (host-packed, blocked by ``V`` output
  channels, :func:`tvm_ternary.packing.block_channels`; ``V`` is chosen per target)
* fatnn only: ``correction`` int32 ``[K]`` (``sum(w)`` per output channel)
* output int32 ``[N, K, *out_spatial]`` (NCHW for conv2d)

Stages (block names, which schedules refer to): ``pack`` (values -> planes),
``pad`` (padded planes plus the bipolar validity plane; absent when not needed),
``acc`` (the popcount reduction over kernel taps and words, one accumulator per popcount
term) and ``out`` (combines the terms, adds fatnn's correction: the epilogue).

FGQ, bytes rather than planes (``G`` = group size, ``Cg = ceil(C / G)``):

* data   ``xb`` uint8 ``[N, *spatial, Cg*G]`` (channels last, zero tail; :func:`layout_fgq_data`)
* weight ``wb`` int8  ``[K, *kernel, Cg*G]``; ``scales`` float32 ``[K, Cg, *kernel]``
* output float32 ``[N, K, *out_spatial]``; stages ``layout``, ``pad``, ``acc``.
"""

from __future__ import annotations

from typing import Sequence

from tvm.ir import Expr as PrimExpr
from tvm import te, tirx

from ..packing import pack_planes_te, valid_word_te
from ..schemes import FgqScheme, PackedScheme


def _inside(pos: Sequence[PrimExpr], sizes: Sequence[int]) -> PrimExpr:
    conds = [tirx.all(p >= 0, p < s) for p, s in zip(pos, sizes)]
    return tirx.all(*conds) if conds else tirx.const(True, "bool")


def pack_data(x: te.Tensor, scheme: PackedScheme) -> te.Tensor:
    """Values ``[N, C, *spatial]`` -> packed planes ``[N, P, *spatial, Cw]`` (stage ``pack``)."""
    return pack_planes_te(x, scheme.activation, name="pack")


def padded_planes(xp: te.Tensor, scheme: PackedScheme, channels: int,
                  padding: Sequence[int]) -> te.Tensor:
    """Zero-pad (in the value domain) the spatial axes of packed data and append the
    validity plane for bipolar activations: ``[N, kernel_planes, *(spatial + 2 pad), Cw]``.

    Padded taps hold the encoding's pad word (ternary_shift: ``t = -1``); the validity
    plane is all valid bits inside the image and 0 in padding. Returns ``xp`` unchanged
    when neither is needed.
    """
    enc = scheme.activation
    stored = enc.num_planes
    n, _, *spatial, cw = (int(d) for d in xp.shape)
    if not any(padding) and not enc.needs_validity_plane:
        return xp
    shape = (n, scheme.kernel_planes, *(s + 2 * p for s, p in zip(spatial, padding)), cw)

    def word(i, plane, *rest):
        *pos, w = rest
        src = [q - p for q, p in zip(pos, padding)]
        value = xp[(i, plane, *src, w)]
        if enc.needs_validity_plane:
            value = tirx.if_then_else(plane == stored, valid_word_te(w, channels), value)
        if not any(padding):
            return value
        return tirx.if_then_else(_inside(src, spatial), value, enc.pad_word_te(plane, w, channels))

    return te.compute(shape, word, name="pad")


MAX_SPLIT_TERMS = 4
"""Schemes with at most this many popcount terms keep one accumulator per term."""


def term_coefficients(scheme: PackedScheme) -> list[int]:
    """Coefficients of the scheme's popcount terms (they do not depend on the words)."""
    zero = lambda plane: tirx.const(0, "uint32")  # noqa: E731
    return [c for c, _ in scheme.terms(zero, zero)]


def _popc(word: PrimExpr) -> PrimExpr:
    return tirx.popcount(word).astype("int32")


def packed_correlation(xpad: te.Tensor, wp: te.Tensor, scheme: PackedScheme, out_channels: int,
                       out_spatial: Sequence[int], stride: Sequence[int],
                       correction: te.Tensor | None = None) -> te.Tensor:
    """Popcount correlation in two stages.

    ``acc`` ``[N, Kb, *out_spatial, G, V]`` int32: for output channel ``ko * V + ki``, the
    sum over kernel taps and words of each popcount term (split accumulators, ``G`` = number
    of terms) or, for schemes with more than :data:`MAX_SPLIT_TERMS` terms, of their
    weighted sum (``G`` = 1). ``wp`` is blocked by ``V`` output channels:
    ``[Kb, Pw, *kernel, Cw, V]``.

    ``out`` ``[N, K, *out_spatial]`` int32: the terms combined with their coefficients, plus
    ``correction[k]`` when given; the epilogue stage that schedules fuse into the tile.
    """
    n = int(xpad.shape[0])
    kb, _, *kernel, cw, v = (int(d) for d in wp.shape)
    coefficients = term_coefficients(scheme)
    split = len(coefficients) <= MAX_SPLIT_TERMS
    taps = [te.reduce_axis((0, s), name=f"r{d}") for d, s in enumerate(kernel)]
    word = te.reduce_axis((0, cw), name="rw")

    def acc(i, ko, *rest):
        *o, g, ki = rest
        pos = [oi * st + t for oi, st, t in zip(o, stride, taps)]
        terms = scheme.terms(lambda p: xpad[(i, p, *pos, word)], lambda q: wp[(ko, q, *taps, word, ki)])
        if split:
            value = _popc(terms[-1][1])
            for t in reversed(range(len(terms) - 1)):
                value = tirx.Select(g == t, _popc(terms[t][1]), value)
        else:
            value = sum(c * _popc(term) for c, term in terms)
        return te.sum(value, axis=[*taps, word])

    groups = len(coefficients) if split else 1
    accumulated = te.compute((n, kb, *out_spatial, groups, v), acc, name="acc")
    weights = coefficients if split else [1]

    def out(i, oc, *o):
        value = sum(c * accumulated[(i, oc // v, *o, g, oc % v)] for g, c in enumerate(weights))
        return value + correction[oc] if correction is not None else value

    return te.compute((n, out_channels, *out_spatial), out, name="out")


def layout_fgq_data(x: te.Tensor, scheme: FgqScheme) -> te.Tensor:
    """FGQ data: values ``[N, C, *spatial]`` -> uint8 ``[N, *spatial, Cg*G]`` (stage ``layout``)."""
    n, c, *spatial = (int(d) for d in x.shape)
    padded_c = scheme.num_groups(c) * scheme.group_size

    def byte(i, *rest):
        *pos, ch = rest
        return tirx.if_then_else(ch < c, x[(i, ch, *pos)].astype("int32"), 0).astype("uint8")

    return te.compute((n, *spatial, padded_c), byte, name="layout")


def fgq_correlation(xb: te.Tensor, wb: te.Tensor, scales: te.Tensor, scheme: FgqScheme,
                    padding: Sequence[int], out_spatial: Sequence[int],
                    stride: Sequence[int]) -> te.Tensor:
    """``out[n, k, *o] = sum_{taps, g, i} scales[k, g, *taps] * x[.., g*G+i] * w[k, *taps, g*G+i]``
    accumulated in float32 (stages ``pad`` when padded, ``acc``)."""
    n, *spatial, padded_c = (int(d) for d in xb.shape)
    k, *kernel, _ = (int(d) for d in wb.shape)
    size = scheme.group_size
    if any(padding):
        shape = (n, *(s + 2 * p for s, p in zip(spatial, padding)), padded_c)

        def padded(i, *rest):
            *pos, ch = rest
            src = [q - p for q, p in zip(pos, padding)]
            return tirx.if_then_else(_inside(src, spatial), xb[(i, *src, ch)], tirx.const(0, "uint8"))

        xb = te.compute(shape, padded, name="pad")
    taps = [te.reduce_axis((0, s), name=f"r{d}") for d, s in enumerate(kernel)]
    group = te.reduce_axis((0, padded_c // size), name="rg")
    lane = te.reduce_axis((0, size), name="ri")

    def acc(i, oc, *o):
        pos = [oi * st + t for oi, st, t in zip(o, stride, taps)]
        ch = group * size + lane
        product = xb[(i, *pos, ch)].astype("int32") * wb[(oc, *taps, ch)].astype("int32")
        return te.sum(scales[(oc, group, *taps)] * product.astype("float32"), axis=[*taps, group, lane])

    return te.compute((n, k, *out_spatial), acc, name="acc")
