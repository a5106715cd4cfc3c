"""The int8 conv2d kernel on Intel AMX tiles (AMX-INT8 ``tdpbusd``), written as TIR.

A TE schedule cannot keep AMX's tile registers live across a reduction, so this kernel is
built directly (TVM's IR builder) and the schedules pass it through
(:class:`tvm_ternary.schedules.AmxKernel`). It serves the int8 scheme's conv2d (a model's
FGQ layers run on that scheme) on targets with ``amx-int8``, with the same inputs, outputs
and epilogues as the VNNI kernel of :func:`.compute.byte_dot_correlation`.

Layouts (``C'`` = input channels padded to a multiple of :data:`TILE_BYTES`):

* data uint8 ``[N, sh * sw * Hq, Wq, C']``: :func:`.compute.layout_bytes` with the stride's
  phases (``[N, Hp, Wp, C']`` at stride 1), padded on the device
* weight int8 ``[K/16, KH, KW, C'/4, 16, 4]``: the byte schemes' layout with ``V = 16``;
  the 16 quads of one tap and 64-channel chunk are one B tile (16 rows of 64 bytes)
* output: as the VNNI kernel's (NCHW int32 or float32, or channel-blocked float32), or with
  a byte requantize epilogue the next layer's data bytes (:class:`.compute.ByteRequantizer`):
  the tasks store each output pixel's bytes at its place in the next layer's padded
  (phase-split) layout, then one more parallel loop writes that layout's padding

**The padded grid.** The kernel computes output positions ``p = oh * Wq + ow`` of a
phase's grid, ``ow < Wq``, and drops the columns ``ow >= OW``. A tap ``(kh, kw)`` at
dilation ``(dh, dw)`` reads the input pixel ``(sh*oh + kh*dh, sw*ow + kw*dw)``: in phase
``(kh*dh % sh, kw*dw % sw)``, at the constant offset ``(kh*dh // sh) * Wq + kw*dw // sw``
from ``p``. So 16 consecutive positions are one A tile (16 rows of 64 channel bytes,
stride ``C'``) for any stride. Positions run to ``P = (OH - 1) * Wq + OW``; the last tile
of a row of tasks starts at ``P - 32`` (recomputing a few positions) so no tile reads past
the phase.

**A task** (one parallel iteration) loads its own tile configuration (``ldtilecfg`` is per
thread, and each task reloads it, so no task releases the tiles) and takes up to
:data:`TILES_PER_TASK` runs of 32 positions in turn for 32 output channels: each holds
32 x 32 int32 sums in four C tiles, fed by two A and two B tiles per tap and chunk (four
``tdpbusd`` per four tile loads), stores them to the task's 4 KB buffer (TVM's workspace
allocator: over its stack limit) and runs the epilogue from there, vectorized along the
32 channels.
Every call first asks Linux for the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``,
needed once per process, also in RPC servers and tuning workers).
"""

from __future__ import annotations

from typing import Sequence

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .compute import ByteRequantizer, affine_value

TILE_ROWS = 16
"""Rows of an AMX tile: output positions of an A/C tile, channel quads of a B tile."""
TILE_BYTES = 64
"""Bytes of a tile row: 64 input channels of an A tile, 16 output channels x 4 of a B tile."""
LANES = 16
"""Output channels of a B/C tile: the weight layout's block ``V``."""
AMX_ATTR = "tvm_ternary.amx"
"""PrimFunc attribute that marks the AMX kernel (:class:`tvm_ternary.schedules.AmxKernel` looks for it)."""
TASK_POSITIONS = 2 * TILE_ROWS
TASK_CHANNELS = 2 * LANES
TILES_PER_TASK = 4
"""Runs of :data:`TASK_POSITIONS` positions one parallel task computes in turn: the tile
configuration and the C tiles' buffer serve them all."""

MIN_CHANNELS = 16
"""Input channels below this stay on VNNI: channels are padded to 64, so at 16 three quarters
of each tile row is padding, and more below (the stem's 3 channels: 95%). A judgement of the
waste, not a measured crossover."""

_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def amx_channels(channels: int) -> int:
    """Input channels padded to whole A-tile rows (a multiple of :data:`TILE_BYTES`)."""
    return -(-channels // TILE_BYTES) * TILE_BYTES


def amx_positions(out_spatial: Sequence[int], phase_width: int) -> int:
    """Positions ``P`` of a phase's grid (``Wq`` wide) up to the last output pixel (see module doc)."""
    oh, ow = out_spatial
    return (oh - 1) * phase_width + ow


def amx_fits(weight_shape: Sequence[int], stride: Sequence[int], out_spatial: Sequence[int],
             padded_width: int) -> str | None:
    """Why the AMX kernel cannot run this conv2d (None when it can): at least
    :data:`MIN_CHANNELS` input channels, output channels a multiple of :data:`TASK_CHANNELS`,
    and at least one task's positions ``P`` (:func:`amx_positions`, on a phase's grid)."""
    if weight_shape[1] < MIN_CHANNELS:
        return f"{weight_shape[1]} input channels (at least {MIN_CHANNELS})"
    if weight_shape[0] % TASK_CHANNELS:
        return f"{weight_shape[0]} output channels (a multiple of {TASK_CHANNELS} needed)"
    if amx_positions(out_spatial, -(-padded_width // stride[1])) < TASK_POSITIONS:
        return f"output {tuple(out_spatial)} too small for a {TASK_POSITIONS}-position tile"
    return None


def _intrin(name: str, *args) -> None:
    T.evaluate(tirx.call_llvm_intrin("void", f"llvm.x86.{name}", *args))


def _tile(index: int):
    return tirx.const(index, "uint8")


def conv2d_amx(symbol: str, data_shape: Sequence[int], weight_shape: Sequence[int], out_spatial: Sequence[int],
               stride: Sequence[int], dilation: Sequence[int], correction: bool, epilogue: str,
               blocked: bool, requantizer: ByteRequantizer | None = None) -> tirx.PrimFunc:
    """The kernel PrimFunc ``(data, weight[, correction][, scale, bias[, residual]], out)``.

    ``data_shape`` is the data stage's ``[N, sh * sw * Hq, Wq, C']``, ``weight_shape`` the weight
    layout's ``[K/16, KH, KW, C'/4, 16, 4]``; ``epilogue`` one of the spec's (``int32``,
    ``affine``, ``affine_relu``, ``affine_add``, ``affine_add_relu``, and with ``requantizer``
    ``affine_requantize``, ``affine_relu_requantize``); ``blocked`` writes
    ``[N, K/16, OH, OW, 16]`` (affine only)."""
    n, rows, wq, c = (int(d) for d in data_shape)
    kb, kh, kw, quads = (int(d) for d in weight_shape[:4])
    oh, ow = (int(d) for d in out_spatial)
    sh, sw = (int(d) for d in stride)
    dh, dw = (int(d) for d in dilation)
    phase_size = rows // (sh * sw) * wq            # Hq * Wq
    k = kb * LANES
    positions = amx_positions(out_spatial, wq)
    tiles = -(-positions // TASK_POSITIONS)
    pairs = k // TASK_CHANNELS
    affine = epilogue.startswith("affine")
    out_shape = (n, kb, oh, ow, LANES) if blocked else (n, k, oh, ow)
    out_dtype = "float32" if affine else "int32"
    if requantizer is not None:
        out_shape, out_dtype = requantizer.layout_shape(n, out_spatial), "uint8"

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(symbol)
            T.func_attr({"global_symbol": symbol, "tirx.noalias": True, AMX_ATTR: True})
            data = T.arg("data", T.buffer(tuple(data_shape), "uint8"))
            weight = T.arg("weight", T.buffer(tuple(weight_shape), "int8"))
            corr = T.arg("correction", T.buffer((k,), "int32")) if correction else None
            scale = T.arg("scale", T.buffer((k,), "float32")) if affine else None
            bias = T.arg("bias", T.buffer((k,), "float32")) if affine else None
            residual = T.arg("residual", T.buffer(out_shape, "float32")) if epilogue.startswith("affine_add") else None
            out = T.arg("out", T.buffer(out_shape, out_dtype))
            granted = tirx.call_extern("int64", "syscall", tirx.const(_SYS_ARCH_PRCTL, "int64"),
                                       tirx.const(_ARCH_REQ_XCOMP_PERM, "int64"),
                                       tirx.const(_XFEATURE_XTILEDATA, "int64"))
            with T.Assert(granted == 0, f"{symbol}: Linux refused the AMX tile state (ARCH_REQ_XCOMP_PERM); "
                                        f"the AMX kernel needs Linux 5.16 or later on a CPU with AMX"):
                pass
            x = T.decl_buffer((n * rows * wq * c,), "uint8", data=data.data)
            w = T.decl_buffer((kb * kh * kw * quads * LANES * 4,), "int8", data=weight.data)
            groups = -(-tiles // TILES_PER_TASK)
            with T.parallel(0, pairs * n * groups) as task:
                pair = task // (n * groups)
                image = task % (n * groups) // groups
                config = T.decl_buffer((64,), "uint8", scope="local")
                with T.serial(0, 64) as i:      # palette 1; tiles 0-7: 16 rows of 64 bytes
                    byte = tirx.Select(i == 0, 1, tirx.Select(tirx.all(i >= 16, i < 32, i % 2 == 0), TILE_BYTES,
                                                              tirx.Select(tirx.all(i >= 48, i < 56), TILE_ROWS, 0)))
                    T.buffer_store(config, tirx.Cast("uint8", byte), [i])
                _intrin("ldtilecfg", tirx.address_of(config[0]))
                acc = T.decl_buffer((TASK_POSITIONS * TASK_CHANNELS,), "int32", scope="local")
                with T.serial(0, tirx.min(TILES_PER_TASK, tiles - task % groups * TILES_PER_TASK)) as g:
                    start = tirx.min((task % groups * TILES_PER_TASK + g) * TASK_POSITIONS, positions - TASK_POSITIONS)
                    for t in range(4):
                        _intrin("tilezero", _tile(t))
                    with T.serial(0, kh) as r:
                        with T.serial(0, kw) as s:
                            with T.serial(0, c // TILE_BYTES) as chunk:
                                dy, dx = r * dh, s * dw
                                phase = (dy % sh) * sw + dx % sw
                                row = (image * sh * sw + phase) * phase_size + start + dy // sh * wq + dx // sw
                                for a in range(2):
                                    _intrin("tileloadd64", _tile(4 + a),
                                            tirx.address_of(x[(row + a * TILE_ROWS) * c + chunk * TILE_BYTES]),
                                            tirx.const(c, "int64"))
                                for b in range(2):
                                    tap = ((pair * 2 + b) * kh + r) * kw + s
                                    _intrin("tileloadd64", _tile(6 + b),
                                            tirx.address_of(w[(tap * quads + chunk * TILE_ROWS) * LANES * 4]),
                                            tirx.const(TILE_BYTES, "int64"))
                                for a in range(2):
                                    for b in range(2):
                                        _intrin("tdpbusd", _tile(2 * a + b), _tile(4 + a), _tile(6 + b))
                    for a in range(2):
                        for b in range(2):
                            _intrin("tilestored64", _tile(2 * a + b),
                                    tirx.address_of(acc[a * TILE_ROWS * TASK_CHANNELS + b * LANES]),
                                    tirx.const(TASK_CHANNELS * 4, "int64"))
                    with T.serial(0, TASK_POSITIONS) as i:
                        position = start + i
                        y, xo = position // wq, position % wq
                        with T.If(xo < ow):
                            with T.Then():
                                for b in range(2):
                                    with T.vectorized(0, LANES) as j:
                                        channel = (pair * 2 + b) * LANES + j
                                        value = acc[i * TASK_CHANNELS + b * LANES + j]
                                        if corr is not None:
                                            value = value + corr[channel]
                                        index = (image, pair * 2 + b, y, xo, j) if blocked else (image, channel, y, xo)
                                        if affine:
                                            value = affine_value(value.astype("float32"), scale[channel], bias[channel],
                                                                 "_relu" in epilogue,
                                                                 residual[index] if residual is not None else None)
                                        if requantizer is not None:
                                            value = requantizer.byte(value)
                                            index = (image, *requantizer.position((y, xo), out_spatial), channel)
                                        T.buffer_store(out, value, list(index))
            if requantizer is not None:
                _store_padding(out, requantizer, out_spatial, k)
    return ib.get()


def _store_padding(out, requantizer: ByteRequantizer, out_spatial: Sequence[int], channels: int) -> None:
    """Write what the kernel's tasks leave out of the next layer's data layout ``out``: the
    padding pixels (``offset``, and 0 past the ``channels`` outputs) and, in the image, the
    channels past ``channels`` (0)."""
    n, rows, cols, padded_channels = (int(d) for d in out.shape)
    (oh, ow), (ph, pw) = out_spatial, requantizer.padding
    assert padded_channels % LANES == 0 and channels % LANES == 0

    def store(image, row, col, first_chunk, value):
        with T.serial(first_chunk, padded_channels // LANES) as chunk:
            with T.vectorized(0, LANES) as j:
                channel = chunk * LANES + j
                T.buffer_store(out, tirx.Cast("uint8", value(channel)), [image, row, col, channel])

    with T.parallel(0, n * rows) as task:
        image, row = task // rows, task % rows
        with T.serial(0, cols) as col:
            y, x = requantizer.padded_pixel(row, col, out_spatial)
            outside = tirx.any(y < ph, y >= ph + oh, x < pw, x >= pw + ow)
            with T.If(outside):
                with T.Then():
                    store(image, row, col, 0, lambda channel: tirx.Select(channel < channels, requantizer.offset, 0))
                if padded_channels > channels:
                    with T.Else():
                        store(image, row, col, channels // LANES, lambda channel: 0)
