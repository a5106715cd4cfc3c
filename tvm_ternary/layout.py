"""The channel-blocked float layout of a model's float activations between our kernels.

A float activation that our conv2d kernels write and a model's elementwise glue reads
(residual adds, ReLU, a BatchNorm's per-channel multiply and add, max pool) is kept
**channel-blocked**, ``NCHW{B}c``: ``[N, C/B, H, W, B]``, channel ``c`` at
``[.., c // B, .., c % B]``, where ``B`` is the producing kernel's output-channel block
(one vector of lanes). The kernel then stores whole vectors (in NCHW each vector of
channels is scattered over ``B`` planes), the glue runs on contiguous vectors, and the next
layer's quantize+pack stage reads a pixel's channels contiguously. The rewrite
(:mod:`tvm_ternary.rewrite`) keeps a tensor blocked only where such a data stage consumes
it, directly or through glue that stays blocked, and converts back to NCHW
(:func:`unblock`) for a user that needs NCHW (the classifier's pooling, the model's output).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

ELEMENTWISE_OPS = ("relax.add", "relax.multiply", "relax.subtract", "relax.nn.relu")
"""Relax ops that run on blocked tensors unchanged (operands blocked alike, per-channel
constants blocked by :func:`block_constant`, scalars as they are)."""

POOL_OP = "relax.nn.max_pool2d"


def block(x: relax.Expr, b: int) -> relax.Expr:
    """NCHW -> ``NCHW{b}c`` (channels a multiple of ``b``)."""
    return relax.op.layout_transform(x, lambda n, c, h, w: (n, c // b, h, w, c % b))


def unblock(x: relax.Expr, b: int) -> relax.Expr:
    """``NCHW{b}c`` -> NCHW."""
    return relax.op.layout_transform(x, lambda n, cb, h, w, v: (n, cb * b + v, h, w))


def block_constant(value: np.ndarray, channels: int, b: int) -> np.ndarray | None:
    """A constant operand of an elementwise op on a blocked ``channels``-channel tensor, in
    the blocked form: a scalar as it is, a per-channel ``[1, C, 1, 1]`` as ``[1, C/b, 1, 1, b]``;
    None for any other shape."""
    if value.size == 1:
        return value.reshape(())
    if value.shape != (1, channels, 1, 1):
        return None
    return np.ascontiguousarray(value.reshape(1, channels // b, b, 1, 1).transpose(0, 1, 3, 4, 2))


def pool_takes_blocked(call: relax.Call) -> bool:
    """True for a max pool over NCHW (which then runs on ``NCHW{b}c`` as it is)."""
    return str(call.attrs.layout) == "NCHW" and str(call.attrs.out_layout) == "NCHW"


def blocked_max_pool(call: relax.Call, x: relax.Expr, b: int) -> relax.Expr:
    """``call`` (an NCHW max pool) over the blocked ``x``, writing blocked."""
    a = call.attrs
    layout = f"NCHW{b}c"
    return relax.op.nn.max_pool2d(x, [int(v) for v in a.pool_size], [int(v) for v in a.strides],
                                  [int(v) for v in a.padding], [int(v) for v in a.dilation], bool(a.ceil_mode),
                                  bool(a.count_include_pad), layout, layout)
