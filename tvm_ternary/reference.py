"""Plain numpy references: PyTorch ``conv2d``/``linear`` semantics on the *values*.

No packing, no encodings: the integer schemes (ternary, fatnn, bitserial) all mean the
same thing, an integer convolution or matrix product of the values with zero padding,
so one reference per operator serves them all (computed in int64, returned as int32).
FGQ multiplies each group's integer partial sum by its float scale (float64, returned
as float32).
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np


Pair = Union[int, Tuple[int, int]]


def _pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _pad_and_size(x, w, stride: Pair, padding: Pair, dilation: Pair):
    """Zero-pad x (int64) and return it with the stride and dilation pairs and the output size."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    x = np.pad(np.asarray(x, np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (x.shape[2] - dh * (w.shape[2] - 1) - 1) // sh + 1
    ow = (x.shape[3] - dw * (w.shape[3] - 1) - 1) // sw + 1
    return x, (sh, sw), (dh, dw), (oh, ow)


def _taps(x: np.ndarray, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int],
          out: tuple[int, int]) -> np.ndarray:
    """The input pixels that kernel position (kh, kw) meets: ``[N, C, OH, OW]``."""
    (sh, sw), (oh, ow) = stride, out
    y, x0 = kh * dilation[0], kw * dilation[1]
    return x[:, :, y: y + sh * (oh - 1) + 1: sh, x0: x0 + sw * (ow - 1) + 1: sw]


def conv2d_nchw(x: np.ndarray, w: np.ndarray, stride: Pair = 1, padding: Pair = 0, dilation: Pair = 1) -> np.ndarray:
    """Integer conv2d: ``x`` [N, C, H, W], ``w`` [K, C, KH, KW] -> int32 [N, K, OH, OW]."""
    w = np.asarray(w, np.int64)
    x, stride, dilation, out_size = _pad_and_size(x, w, stride, padding, dilation)
    out = np.zeros((x.shape[0], w.shape[0], *out_size), np.int64)
    for kh in range(w.shape[2]):
        for kw in range(w.shape[3]):
            out += np.einsum("nchw,kc->nkhw", _taps(x, kh, kw, stride, dilation, out_size), w[:, :, kh, kw])
    return out.astype(np.int32)


def dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Integer dense: ``x`` [N, K], ``w`` [M, K] -> int32 [N, M] (``x @ w.T``)."""
    return (np.asarray(x, np.int64) @ np.asarray(w, np.int64).T).astype(np.int32)


def conv2d_fgq_nchw(x: np.ndarray, w: np.ndarray, scales: np.ndarray, group_size: int,
                    stride: Pair = 1, padding: Pair = 0, dilation: Pair = 1) -> np.ndarray:
    """FGQ conv2d: groups of ``group_size`` input channels at each kernel position.

    ``scales`` [K, ceil(C/G), KH, KW]; output float32 [N, K, OH, OW] =
    ``sum_{kh,kw,g} scales[k,g,kh,kw] * sum_{c in g} x[n,c,..] * w[k,c,kh,kw]``.
    """
    w = np.asarray(w, np.int64)
    scales = np.asarray(scales, np.float64)
    x, stride, dilation, out_size = _pad_and_size(x, w, stride, padding, dilation)
    out = np.zeros((x.shape[0], w.shape[0], *out_size), np.float64)
    for kh in range(w.shape[2]):
        for kw in range(w.shape[3]):
            taps = _taps(x, kh, kw, stride, dilation, out_size)
            for g, start in enumerate(range(0, x.shape[1], group_size)):
                part = slice(start, start + group_size)
                partial = np.einsum("nchw,kc->nkhw", taps[:, part], w[:, part, kh, kw])
                out += partial * scales[None, :, g, kh, kw, None, None]
    return out.astype(np.float32)


def dense_fgq(x: np.ndarray, w: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """FGQ dense: ``scales`` [M, ceil(K/G)]; float32 [N, M] = sum_g scales[m,g] * (x_g @ w_g.T)."""
    out = 0.0
    for g, start in enumerate(range(0, x.shape[1], group_size)):
        part = slice(start, start + group_size)
        partial = dense(x[:, part], w[:, part]).astype(np.float64)
        out = out + partial * np.asarray(scales, np.float64)[None, :, g]
    return np.asarray(out, np.float32)


def quantize_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token 8-bit activations (BitNet's, the ``ternary_int8`` kernel's with
    ``activations="per_token"``), in float32 as the kernel and PyTorch compute them:
    ``absmax`` per row (at least 1e-5), ``levels = clip(rint(x * ((1 / absmax) * 127)), -127, 127)``
    (int32; PyTorch's ``127 / absmax`` is that reciprocal times 127) and the row's
    ``step = absmax / 127`` (float32 ``[N]``)."""
    x = np.asarray(x, np.float32)
    absmax = np.maximum(np.abs(x).max(axis=1), np.float32(1e-5)).astype(np.float32)
    top = np.float32(127)
    scale = (np.float32(1) / absmax).astype(np.float32) * top
    levels = np.clip(np.rint(x * scale[:, None]), -top, top).astype(np.int32)
    return levels, (absmax / top).astype(np.float32)


def uniform_levels(v: np.ndarray, lo: int, step: int, count: int, first: float, scale: float) -> np.ndarray:
    """A uniform activation quantizer's levels of float32 ``v``: ``lo + step * #{j < count :
    v >= float32((first + j) * scale)}``, counted against the thresholds."""
    thresholds = (np.float32(first) + np.arange(count, dtype=np.float32)) * np.float32(scale)
    return lo + step * np.searchsorted(thresholds, np.asarray(v, np.float32), side="right")


def layout_bytes(x: np.ndarray, padding: Pair, channels: int, offset: int = 0, phases: Pair = 1) -> np.ndarray:
    """The byte schemes' conv2d data layout of NCHW values ``x`` (uint8, see
    :func:`tvm_ternary.operators.compute.layout_bytes`): channels last, each value plus
    ``offset``, ``padding`` pixels of ``offset`` around the image, channels ``C..channels``
    zero; with ``phases`` ``(sh, sw)`` the padded image split by row and column phase."""
    n, c, h, w = x.shape
    (ph, pw), (sh, sw) = _pair(padding), _pair(phases)
    padded = np.zeros((n, h + 2 * ph, w + 2 * pw, channels), np.int64)
    padded[..., :c] = offset
    padded[:, ph:ph + h, pw:pw + w, :c] = np.moveaxis(np.asarray(x, np.int64), 1, -1) + offset
    if (sh, sw) == (1, 1):
        return padded.astype(np.uint8)
    hq, wq = -(-padded.shape[1] // sh), -(-padded.shape[2] // sw)
    phased = np.zeros((n, sh * sw * hq, wq, channels), np.int64)
    phased[..., :c] = offset
    for a in range(sh):
        for b in range(sw):
            part = padded[:, a::sh, b::sw]
            first = (a * sw + b) * hq
            phased[:, first:first + part.shape[1], :part.shape[2]] = part
    return phased.astype(np.uint8)
