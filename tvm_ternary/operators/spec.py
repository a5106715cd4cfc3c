"""One operator instance: op, scheme, shapes, stride and padding, validated.

:class:`OperatorSpec` turns a request into the TE PrimFuncs of the operator (the data
stage, which packs values on the device, or quantizes and packs them, from NCHW or
channel-blocked input; the patch gather alone; the kernel) and prepares the host-side
weight arguments. conv2d is rank 2 (NCHW data, OIHW weights); dense is rank 0 (``[N, K]``
data, ``[M, K]`` weights), i.e. a 1x1 convolution without spatial axes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from tvm import te, tirx

from .. import reference
from ..packing import (block_channels, gather_patches_te, num_words, pack_patch_planes, pack_planes,
                       pack_planes_padded, pack_ternary_codes, taps_per_word, word_dtype)
from ..schemes import (FGQ_ROW, MAX_CODE_REDUCTION, MAX_MULTIPLIER, ByteScheme, FgqScheme, Int8Scheme, PackedScheme,
                       Scheme, TernaryInt8Scheme)
from .amx import LANES, amx_channels, amx_fits, conv2d_amx
from .compute import (ByteRequantizer, ConvGeometry, affine, byte_dot_correlation, fgq_correlation,
                      layout_bytes, pack_blocked_data, pack_data, packed_correlation, pad_features, per_token_bytes,
                      requantize_bytes, ternary_code_dot, token_step, UNIFORM_MIN_THRESHOLDS, UNROLLED_THRESHOLDS,
                      quantize_levels, quantizer_levels, requantize_pack, threshold_count, uniform_thresholds)

OPERATORS = {"conv2d": 2, "dense": 0}
"""Operator name -> spatial rank."""

DATA_DTYPE = "int32"
"""dtype of the value tensors the data stage reads."""

BYTE_REQUANTIZE_EPILOGUES = ("affine_requantize", "affine_relu_requantize")
"""The int8 scheme's requantize epilogues: the affine (then ReLU) value through the next
layer's activation quantizer, written as that layer's data bytes (:class:`.compute.ByteRequantizer`);
what a built model fuses between two int8 conv2d layers."""
EPILOGUES = ("int32", "affine", "affine_relu", "affine_add", "affine_add_relu", "requantize",
             *BYTE_REQUANTIZE_EPILOGUES)
RESIDUAL_EPILOGUES = ("affine_add", "affine_add_relu")
"""Epilogues that add a residual tensor (the kernel's last input, in its output's layout)
before the optional ReLU: what a built model fuses; :func:`tvm_ternary.op` does not offer them."""


def out_spatial(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int] = ()) -> list[int]:
    """Output sizes of a convolution over ``sizes`` (symmetric ``padding`` per axis; the
    kernel spans ``d * (k - 1) + 1`` inputs with ``dilation`` ``d``, default 1)."""
    dilation = tuple(dilation) or (1,) * len(kernel)
    return [(size + 2 * p - d * (w - 1) - 1) // st + 1
            for size, w, st, p, d in zip(sizes, kernel, stride, padding, dilation)]


def _as_shape(where: str, what: str, shape: Any, rank: int) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{where}: {what} must be a tuple of {rank} ints, got {shape!r}") from None
    if len(dims) != rank or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                    for d in dims):
        raise ValueError(f"{where}: {what} must be a tuple of {rank} ints, got {shape!r}")
    if any(d < 1 for d in dims):
        raise ValueError(f"{where}: {what} must be positive, got {dims}")
    return tuple(int(d) for d in dims)


def _as_pair(where: str, what: str, value: Any, rank: int, minimum: int) -> tuple[int, ...]:
    values = (value,) * rank if isinstance(value, (int, np.integer)) else value
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{where}: {what} must be an int or a tuple of {rank} ints, got {value!r}") from None
    if len(values) != rank or not all(isinstance(v, (int, np.integer)) and v >= minimum for v in values):
        raise ValueError(f"{where}: {what} must be an int >= {minimum} or a tuple of {rank} such ints,"
                         f" got {value!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class OperatorSpec:
    """A validated operator instance; build it with :meth:`create`."""

    op: str
    scheme: Scheme
    data_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    block: int = 1
    epilogue: str = "int32"
    next_padding: tuple[int, ...] = ()
    word_bits: int = 32
    dilation: tuple[int, ...] = ()
    blocked_output: bool = False
    amx: bool = False
    """Whether the kernel is the AMX one (:mod:`.amx`); :meth:`create` decides."""
    requantizer: ByteRequantizer | None = None
    """The next layer's quantizer and data layout, with a byte requantize epilogue."""

    @classmethod
    def create(cls, op: str, scheme: Scheme, data_shape: Sequence[int], weight_shape: Sequence[int],
               stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
               block: int = 1, epilogue: str = "int32",
               next_padding: int | Sequence[int] | None = None, word_bits: int = 32,
               dilation: int | Sequence[int] = 1, blocked_output: bool = False,
               target_has_amx: bool = False, requantizer: ByteRequantizer | None = None) -> "OperatorSpec":
        """Validate the request; raises ``ValueError``/``TypeError`` naming op and constraint.

        ``block`` is the output-channel block ``V`` of the kernel's weight layout (packed
        schemes), a property of the target's schedule rather than of the request.
        ``epilogue`` is ``"int32"`` (the integer result, NCHW), ``"affine"``/``"affine_relu"``
        (float32 ``y * scale[k] + bias[k]``, then ReLU), ``"affine_add"``/``"affine_add_relu"``
        (the same plus a residual tensor, then ReLU) or ``"requantize"`` (per-channel
        thresholds, then the next layer's packed planes with ``next_padding``, by default this
        layer's padding; bit-packed schemes only), or, for an int8 conv2d,
        ``"affine_requantize"``/``"affine_relu_requantize"`` (the affine value, then ReLU, through
        ``requantizer``, the next layer's quantizer: the next layer's data bytes, see
        :meth:`byte_requantizer`). ``word_bits`` is the kernel's word size (32, or
        64 where the target's popcount prefers it; same bits, see :mod:`tvm_ternary.packing`).
        ``dilation`` spaces the kernel taps (conv2d; 1 = dense taps). ``blocked_output``: an
        affine conv2d writes the channel-blocked ``[N, K/V, OH, OW, V]`` of
        :mod:`tvm_ternary.layout` (``V`` = ``block``, a divisor of ``K``) instead of NCHW.
        ``target_has_amx``: an int8 conv2d that the AMX kernel serves (:func:`.amx.amx_fits`)
        then runs on it; the spec's :attr:`amx` says whether it does."""
        if op not in OPERATORS:
            raise ValueError(f"unknown operator {op!r}; expected one of {tuple(OPERATORS)}")
        rank = OPERATORS[op]
        where = f"{op}[{scheme.label()}]"
        names = "(N, C, H, W)" if rank else "(N, K)"
        data_shape = _as_shape(where, f"data_shape {names}", data_shape, rank + 2)
        weight_shape = _as_shape(where, "weight_shape " + ("(K, C, KH, KW)" if rank else "(M, K)"),
                                 weight_shape, rank + 2)
        if rank == 0 and (stride not in (1, ()) or padding not in (0, ()) or dilation not in (1, ())):
            raise ValueError(f"{where}: dense takes no stride, padding or dilation")
        stride = _as_pair(where, "stride", stride, rank, 1)
        padding = _as_pair(where, "padding", padding, rank, 0)
        dilation = _as_pair(where, "dilation", dilation, rank, 1)
        if data_shape[1] != weight_shape[1]:
            axis = "channels" if rank else "features"
            raise ValueError(f"{where}: data has {data_shape[1]} input {axis} but the weight expects "
                             f"{weight_shape[1]} (weight_shape[1])")
        if epilogue not in EPILOGUES:
            raise ValueError(f"{where}: epilogue must be one of {EPILOGUES}, got {epilogue!r}")
        if epilogue == "requantize" and not isinstance(scheme, PackedScheme):
            raise ValueError(f"{where}: the {epilogue} epilogue needs a bit-packed scheme "
                             f"(ternary, fatnn, bitserial), not {scheme.name}")
        if (epilogue in BYTE_REQUANTIZE_EPILOGUES) != (requantizer is not None):
            raise ValueError(f"{where}: a requantizer goes with the epilogues {BYTE_REQUANTIZE_EPILOGUES}, and they "
                             f"need one (got epilogue {epilogue!r}, requantizer {requantizer!r})")
        if requantizer is not None and (type(scheme) is not Int8Scheme or op != "conv2d" or weight_shape[0] % block
                                        or scheme.per_token or blocked_output):
            raise ValueError(f"{where}: the {epilogue} epilogue needs an int8 conv2d with static activations, output "
                             f"channels a multiple of the block {block}, and no blocked output")
        if requantizer is not None and (requantizer.channels < weight_shape[0] or len(requantizer.padding) != rank
                                        or len(requantizer.phases) not in (0, rank)):
            raise ValueError(f"{where}: the requantizer writes {requantizer.channels} channels with padding "
                             f"{requantizer.padding} and phases {requantizer.phases}; the layer has "
                             f"{weight_shape[0]} output channels and {rank} spatial axes")
        next_padding = _as_pair(where, "next_padding", padding if next_padding is None else next_padding,
                                rank, 0) if epilogue == "requantize" else ()
        if isinstance(scheme, FgqScheme) and (scheme.group_size == FGQ_ROW or scheme.group_size % 4):
            raise ValueError(f"{where}: the float-scale FGQ kernel needs a group size that is a multiple of 4 "
                             f"(quads of bytes), got {scheme.group_size!r}; a model's FGQ layers run on the int8 "
                             f"kernel with any group size")
        if isinstance(scheme, TernaryInt8Scheme) and (op != "dense" or weight_shape[1] > MAX_CODE_REDUCTION):
            raise ValueError(f"{where}: the 2-bit-code kernel is a dense kernel with at most {MAX_CODE_REDUCTION} "
                             f"input features (int32 sums); got {op} with {weight_shape[1]}")
        word_dtype(word_bits)   # validates
        if blocked_output and (op != "conv2d" or not epilogue.startswith("affine") or weight_shape[0] % block):
            raise ValueError(f"{where}: a blocked output needs conv2d with an affine epilogue and output channels "
                             f"a multiple of the block {block}")
        spec = cls(op, scheme, data_shape, weight_shape, stride, padding, block, epilogue, next_padding, word_bits,
                   dilation, blocked_output, requantizer=requantizer)
        if any(o < 1 for o in spec.out_shape[2:]):
            dilated = f" and dilation {dilation}" if any(d > 1 for d in dilation) else ""
            raise ValueError(f"{where}: kernel {weight_shape[2:]} does not fit input {data_shape[2:]} "
                             f"with padding {padding}{dilated}")
        if target_has_amx and op == "conv2d" and type(scheme) is Int8Scheme and block == LANES and \
                amx_fits(weight_shape, stride, spec.out_shape[2:], data_shape[3] + 2 * padding[1]) is None:
            spec = replace(spec, amx=True)
        return spec

    @property
    def where(self) -> str:
        """Prefix of error messages, e.g. ``conv2d[ternary]``."""
        return f"{self.op}[{self.scheme.label()}]"

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of the integer result: ``(N, K, OH, OW)`` for conv2d, ``(N, M)`` for dense
        (with the requantize epilogue the kernel returns :meth:`kernel_output` instead)."""
        n, k = self.data_shape[0], self.weight_shape[0]
        return (n, k, *out_spatial(self.data_shape[2:], self.weight_shape[2:], self.stride, self.padding,
                                   self.dilation))

    @property
    def symbol(self) -> str:
        """Runtime function name of the kernel; the data stage is ``symbol + "_data"``."""
        return f"{self.op}_{self.scheme.name}"

    @property
    def scales_shape(self) -> tuple[int, ...]:
        """Group scales shape ``(K, ceil(C/G), *kernel)`` (fgq, ternary_int8)."""
        groups = self.scheme.num_groups(self.weight_shape[1])
        return (self.weight_shape[0], groups, *self.weight_shape[2:])

    @property
    def patch_taps(self) -> int:
        """Kernel taps per word when this conv2d packs whole patches (few input channels,
        see the patch layout in :mod:`tvm_ternary.packing`); 1 for the ordinary layout."""
        if self.op != "conv2d" or not isinstance(self.scheme, PackedScheme):
            return 1
        return taps_per_word(self.data_shape[1], self.weight_shape[2:], self.word_bits)

    def _pack(self, x: te.Tensor, thresholds: te.Tensor | None = None) -> te.Tensor:
        """Values (or, with ``thresholds``, a quantizer's float inputs) -> the packed planes
        the kernel reads: padded, and gathered into patches in the patch layout."""
        if self.patch_taps == 1:
            return pack_data(x, self.scheme, self.padding, self.word_bits, thresholds)
        packed = pack_data(x, self.scheme, self.padding, self.word_bits, thresholds, column_phases=self.stride[1])
        return gather_patches_te(packed, self.data_shape[1], self.weight_shape[2:], self.stride, self.out_shape[2:],
                                 self.dilation)

    @property
    def data_dtype(self) -> str:
        """dtype of the values the data stage reads: int32, float32 for per-token activations."""
        return "float32" if self.scheme.per_token else DATA_DTYPE

    def _data_stage(self, x: te.Tensor) -> te.Tensor:
        if self.scheme.per_token:                 # float rows, quantized in the kernel
            return pad_features(x, self._byte_channels)
        if isinstance(self.scheme, ByteScheme):
            return layout_bytes(x, self.padding, self._byte_channels, self.scheme.activation_offset,
                                phases=self._phases)
        return self._pack(x)

    @property
    def _phases(self) -> tuple[int, ...]:
        """The phase split of a byte scheme's data layout: a stride above 1 on AMX, else none."""
        return self.stride if self.amx and any(s > 1 for s in self.stride) else ()

    def byte_requantizer(self, lo: float, step: float, thresholds: np.ndarray) -> ByteRequantizer:
        """What a previous int8 conv2d's requantize epilogue must write to be this int8 conv2d's
        input: its activation quantizer (levels ``lo + step * #{j : x >= thresholds[j]}``, the
        float32 ``thresholds`` uniform, :func:`.compute.uniform_thresholds`) and this layer's data
        layout. Raises ``ValueError`` when the epilogue cannot compute the levels."""
        uniform = uniform_thresholds(thresholds)
        if type(self.scheme) is not Int8Scheme or self.op != "conv2d" or self.scheme.per_token:
            raise ValueError(f"{self.where}: a requantize epilogue writes bytes for an int8 conv2d only")
        if uniform is None or lo != int(lo) or step != int(step):
            raise ValueError(f"{self.where}: a requantize epilogue needs a uniform quantizer (at least "
                             f"{UNIFORM_MIN_THRESHOLDS} thresholds float32((first + j) * scale), integer levels), got "
                             f"lo={lo}, step={step} and {len(thresholds)} thresholds")
        low, high = self.scheme.activation.value_range
        if min(lo, lo + step * len(thresholds)) < low or max(lo, lo + step * len(thresholds)) > high:
            raise ValueError(f"{self.where}: the quantizer's levels {lo:g}..{lo + step * len(thresholds):g} exceed the "
                             f"activations' range {low}..{high}")
        return ByteRequantizer(int(lo), int(step), len(thresholds), *uniform, self.scheme.activation_offset,
                               self.padding, self._byte_channels, self._phases)

    @property
    def _byte_channels(self) -> int:
        """Channels of a byte scheme's data and weight layouts: whole FGQ groups, or int8 quads."""
        c = self.data_shape[1]
        if isinstance(self.scheme, FgqScheme):
            return self.scheme.num_groups(c) * self.scheme.group_size
        if isinstance(self.scheme, TernaryInt8Scheme):
            return self.scheme.num_groups(c) * self.scheme.group_width(c)
        return amx_channels(c) if self.amx else -(-c // 4) * 4

    def data_prim_func(self) -> tirx.PrimFunc:
        """PrimFunc ``(x values [data_shape] int32) -> kernel input`` (pack or byte layout)."""
        x = te.placeholder(self.data_shape, self.data_dtype, name="x")
        return te.create_prim_func([x, self._data_stage(x)]).with_attr("global_symbol", self.symbol + "_data")

    def quantize_data_prim_func(self, lo: float, step: float, num_thresholds: int,
                                ascending: bool = False, input_block: int = 0,
                                uniform: tuple[float, float] | None = None) -> tirx.PrimFunc:
        """PrimFunc ``(x float32 [data_shape], thresholds float32 [num_thresholds]) -> kernel
        input``: the activation quantizer (:func:`.compute.quantize_levels`) fused with the
        data stage, for graphs whose activations arrive in float. When the thresholds are
        ``ascending`` and the quantizer's levels are the activation encoding's values, the
        planes come straight from the threshold compares (no level count in between: two
        compares serve both ternary planes). With ``input_block`` ``B`` (conv2d: bit-packed schemes
        in the ordinary layout, or the int8 scheme), ``x`` arrives channel-blocked,
        ``[N, C/B, H, W, B]`` (:mod:`tvm_ternary.layout`).
        ``uniform`` ``(first, scale)``: the thresholds are exactly ``float32((first + j) * scale)``
        (:func:`.compute.uniform_thresholds`), so levels are computed, not counted."""
        shape = self.data_shape
        if input_block:
            n, c, *spatial = self.data_shape
            packed = isinstance(self.scheme, PackedScheme) and self.word_bits % input_block == 0 \
                and self.patch_taps == 1
            if self.op != "conv2d" or not (packed or type(self.scheme) is Int8Scheme) or c % input_block:
                raise ValueError(f"{self.where}: a channel-blocked input needs conv2d, input channels a multiple of "
                                 f"the block {input_block}, and the int8 scheme or a bit-packed one in the ordinary "
                                 f"layout with a block dividing the {self.word_bits}-bit word")
            shape = (n, c // input_block, *spatial, input_block)
        x = te.placeholder(shape, "float32", name="x")
        thresholds = te.placeholder((num_thresholds,), "float32", name="thresholds")
        direct = ascending and self._levels_are_encoding_values(lo, step, num_thresholds)
        if input_block and isinstance(self.scheme, ByteScheme):
            staged = layout_bytes(quantize_levels(x, thresholds, lo, step, DATA_DTYPE, uniform), self.padding,
                                  self._byte_channels, self.scheme.activation_offset, input_block, self._phases)
        elif input_block:
            values = x if direct else quantize_levels(x, thresholds, lo, step, DATA_DTYPE, uniform)
            staged = pack_blocked_data(values, self.scheme, self.padding, self.word_bits, thresholds if direct else None)
        elif direct:
            staged = self._pack(x, thresholds)
        else:
            staged = self._data_stage(quantize_levels(x, thresholds, lo, step, DATA_DTYPE, uniform))
        return te.create_prim_func([x, thresholds, staged]).with_attr("global_symbol", self.symbol + "_quantize")

    def gather_prim_func(self) -> tirx.PrimFunc:
        """PrimFunc ``(padded planes [N, P', H + 2 pad, W + 2 pad, 1]) -> patches``: the patch
        gather alone, for a patch-layout layer whose input a previous kernel's requantize
        epilogue packed (ordinary layout, this layer's padding)."""
        padded = pack_data(te.placeholder(self.data_shape, DATA_DTYPE), self.scheme, self.padding, self.word_bits)
        planes = te.placeholder(padded.shape, padded.dtype, name="planes")
        patches = gather_patches_te(planes, self.data_shape[1], self.weight_shape[2:], self.stride, self.out_shape[2:],
                                    self.dilation)
        return te.create_prim_func([planes, patches]).with_attr("global_symbol", self.symbol + "_gather")

    def _levels_are_encoding_values(self, lo: float, step: float, num_thresholds: int) -> bool:
        if not isinstance(self.scheme, PackedScheme) or num_thresholds > UNROLLED_THRESHOLDS:
            return False
        return (lo, step, num_thresholds) == quantizer_levels(self.scheme.activation)

    @lru_cache(maxsize=None)   # specs are immutable; building the TE stage costs ~0.1 ms
    def kernel_input_shape(self) -> tuple[tuple[int, ...], str]:
        """Shape and dtype of the data-stage output that the kernel reads."""
        staged = self._data_stage(te.placeholder(self.data_shape, self.data_dtype, name="x"))
        return tuple(int(d) for d in staged.shape), str(staged.dtype)

    def kernel_output(self) -> tuple[tuple[int, ...], str]:
        """Shape and dtype of what the kernel writes: the int32/float32 result, or with the
        requantize epilogue the next layer's packed planes."""
        if self.blocked_output:
            n, k, *spatial = self.out_shape
            return (n, k // self.block, *spatial, self.block), "float32"
        if self.requantizer is not None:
            return self.requantizer.layout_shape(self.out_shape[0], self.out_shape[2:]), "uint8"
        if self.epilogue != "requantize":
            return self.out_shape, "float32" if self.epilogue.startswith("affine") else self.scheme.out_dtype
        enc = self.scheme.activation
        spatial = [o + 2 * p for o, p in zip(self.out_shape[2:], self.next_padding)]
        planes = enc.num_planes + int(enc.needs_validity_plane)
        return ((self.out_shape[0], planes, *spatial, num_words(self.weight_shape[0], self.word_bits)),
                word_dtype(self.word_bits))

    @property
    def threshold_count(self) -> int:
        """Thresholds per output channel of the requantize epilogue."""
        return threshold_count(self.scheme.activation)

    def kernel_prim_func(self) -> tirx.PrimFunc:
        """PrimFunc of the kernel: ``(data, *weight_args[, thresholds]) -> out``, see :mod:`.compute`."""
        shape, dtype = self.kernel_input_shape()
        templates = self._weight_arg_templates()
        if self.amx:
            return conv2d_amx(self.symbol, shape, templates[0].shape, self.out_shape[2:], self.stride, self.dilation,
                              len(templates) > 1, self.epilogue, self.blocked_output, self.requantizer)
        data = te.placeholder(shape, dtype, name="data")
        weight_args = [te.placeholder(a.shape, str(a.dtype), name=name)
                       for name, a in zip(("weight", "extra", "correction"), templates)]
        out_spatial = self.out_shape[2:]
        if isinstance(self.scheme, FgqScheme):
            out = fgq_correlation(data, *weight_args, self.scheme, self.weight_shape[0], out_spatial, self.stride,
                                  self.dilation)
        elif isinstance(self.scheme, TernaryInt8Scheme):
            levels = data
            if self.scheme.per_token:
                absmax, levels = per_token_bytes(data)
                row_scale = token_step(absmax)
            codes, multipliers, *correction = weight_args
            out = ternary_code_dot(levels, codes, multipliers, self.weight_shape[0],
                                   self.scheme.group_width(self.data_shape[1]), *correction)
        elif isinstance(self.scheme, Int8Scheme):
            out = byte_dot_correlation(data, weight_args[0], self.weight_shape[0], out_spatial, self.stride,
                                       self.dilation, weight_args[1] if len(weight_args) > 1 else None)
        else:
            correction = weight_args[1] if len(weight_args) > 1 else None
            geometry = ConvGeometry(self.data_shape[1], self.weight_shape[2:], self.stride, self.padding,
                                    self.data_shape[2:], self.dilation)
            ordinary = self.patch_taps == 1                 # else patches: a 1x1 kernel with unit stride
            out = packed_correlation(data, weight_args[0], self.scheme, self.weight_shape[0], out_spatial,
                                     self.stride if ordinary else (1,) * len(self.stride), correction, geometry,
                                     self.dilation if ordinary else ())
        if self.epilogue.startswith("affine"):          # the byte requantize epilogues too
            scale, bias = (te.placeholder((self.weight_shape[0],), "float32", name=n) for n in ("scale", "bias"))
            weight_args += [scale, bias]
        if self.requantizer is not None:
            out = requantize_bytes(out, scale, bias, "_relu" in self.epilogue, self.requantizer, self.block)
        elif self.epilogue.startswith("affine"):
            residual = None
            if self.epilogue in RESIDUAL_EPILOGUES:
                residual = te.placeholder(self.kernel_output()[0], "float32", name="residual")
                weight_args.append(residual)
            out = affine(out, scale, bias, self.epilogue.endswith("_relu"), self.block if self.blocked_output else 0,
                         residual, row_scale if self.scheme.per_token else None)
        if self.epilogue == "requantize":
            thresholds = te.placeholder((self.threshold_count, self.weight_shape[0]), "int32", name="thresholds")
            out = requantize_pack(out, thresholds, self.scheme.activation, self.next_padding, self.block,
                                  self.word_bits)
            weight_args.append(thresholds)
        return te.create_prim_func([data, *weight_args, out]).with_attr("global_symbol", self.symbol)

    def _threshold_arg(self, thresholds: np.ndarray | None, correction: np.ndarray | None) -> np.ndarray:
        """Validate ``(K, L)`` per-channel ascending integer thresholds; returns the kernel's
        ``[L, K]`` int32 layout with the scheme's per-channel constant folded in
        (``y + c >= t`` is ``y >= t - c``: fatnn's ``sum(w)`` costs nothing at run time)."""
        if thresholds is None:
            raise ValueError(f"{self.where}: the requantize epilogue needs thresholds of shape "
                             f"{(self.weight_shape[0], self.threshold_count)}")
        t = np.asarray(thresholds)
        expected = (self.weight_shape[0], self.threshold_count)
        if t.shape != expected:
            raise ValueError(f"{self.where}: thresholds have shape {t.shape}, expected {expected} "
                             f"(output channels, levels - 1 of {self.scheme.activation.describe()})")
        if not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"{self.where}: thresholds must be integers (they compare int32 sums), got {t.dtype}")
        if np.any(np.diff(t, axis=1) < 0):
            raise ValueError(f"{self.where}: thresholds must ascend along each channel")
        folded = t.astype(np.int64) - (0 if correction is None else correction[:, None])
        return np.ascontiguousarray(folded.T, np.int32)

    def _affine_args(self, scale: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
        k = self.weight_shape[0]
        out = []
        for name, v in (("scale", scale), ("bias", bias)):
            v = np.asarray(v)
            if v.shape != (k,):
                raise ValueError(f"{self.where}: {name} has shape {v.shape}, expected ({k},) (one per output channel)")
            if not np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_:
                raise TypeError(f"{self.where}: {name} must be a float array, got dtype {v.dtype}")
            out.append(np.ascontiguousarray(v, np.float32))
        return out

    def reference_affine(self, x: np.ndarray, w: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                         scales: np.ndarray | None = None) -> np.ndarray:
        """Reference of the affine epilogues (float64 math, float32 result)."""
        y = self.reference(x, w, scales).astype(np.float64)
        if self.scheme.per_token:                 # the row's step first, as the kernel multiplies
            y = y * reference.quantize_per_token(x)[1].astype(np.float64)[:, None]
        index = (slice(None), slice(None)) + (None,) * (y.ndim - 2)
        v = y * np.asarray(scale, np.float64)[index[1:]] + np.asarray(bias, np.float64)[index[1:]]
        return (np.maximum(v, 0) if self.epilogue == "affine_relu" else v).astype(np.float32)

    def reference_requantized_bytes(self, x: np.ndarray, w: np.ndarray, scale: np.ndarray, bias: np.ndarray
                                    ) -> np.ndarray:
        """Reference of the byte requantize epilogues: the next layer's data bytes from the
        affine value in float32 (the product rounded, then the sum, as the graph computes it),
        its levels counted against the quantizer's thresholds."""
        r = self.requantizer
        y = self.reference(x, w).astype(np.float32)
        v = y * np.asarray(scale, np.float32)[:, None, None] + np.asarray(bias, np.float32)[:, None, None]
        if "_relu" in self.epilogue:
            v = np.maximum(v, np.float32(0))
        levels = reference.uniform_levels(v, r.lo, r.step, r.count, r.first, r.scale)
        return reference.layout_bytes(levels, r.padding, r.channels, r.offset, r.phases or 1)

    def reference_requantized(self, x: np.ndarray, w: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """Reference of the requantize epilogue: the next layer's packed, padded planes."""
        y = self.reference(x, w).astype(np.int64)
        enc = self.scheme.activation
        q = enc.value_range[0] + enc.level_step * (y[..., None] >= np.asarray(thresholds)[
            (slice(None),) + (None,) * (y.ndim - 2)]).sum(-1)
        return pack_planes_padded(q, enc, self.next_padding, enc.needs_validity_plane, self.word_bits)

    def _weight_arg_templates(self) -> list[np.ndarray]:
        zeros = np.zeros(self.weight_shape, np.int32)
        scales = np.ones(self.scales_shape, np.float32) if isinstance(self.scheme, FgqScheme) else None
        return self._weight_args(zeros, scales)

    def check_data(self, x: np.ndarray) -> np.ndarray:
        """Validate data values and shape; returns int32 values."""
        values = self.scheme.check_values(self.op, "data", x)
        if values.shape != self.data_shape:
            raise ValueError(f"{self.where}: data has shape {values.shape}, expected {self.data_shape}")
        return values

    def weight_args(self, w: np.ndarray, scales: np.ndarray | None = None,
                    thresholds: np.ndarray | None = None, affine: tuple | None = None) -> list[np.ndarray]:
        """Validate weights (FGQ scales, requantize thresholds, affine ``(scale, bias)``) and
        prepare the kernel's arguments after the data on the host: packed planes (+ fatnn
        correction; with the requantize epilogue the thresholds with the correction folded
        in; with the affine one the per-channel scale and bias), or FGQ bytes and scales."""
        values = self.scheme.check_values(self.op, "weight", w)
        if values.shape != self.weight_shape:
            raise ValueError(f"{self.where}: weight has shape {values.shape}, expected {self.weight_shape}")
        if isinstance(self.scheme, FgqScheme):
            if scales is None:
                raise ValueError(f"{self.where}: scales of shape {self.scales_shape} are required")
            scales = np.asarray(scales)
            if not np.issubdtype(scales.dtype, np.number) or scales.dtype == np.bool_:
                raise TypeError(f"{self.where}: scales must be a float array, got dtype {scales.dtype}")
            if scales.shape != self.scales_shape:
                raise ValueError(f"{self.where}: scales have shape {scales.shape}, expected "
                                 f"{self.scales_shape} (K, ceil(C/{self.scheme.group_size}), *kernel)")
        elif isinstance(self.scheme, TernaryInt8Scheme):
            scales = self._multipliers(scales)
        elif scales is not None:
            raise ValueError(f"{self.where}: scales apply only to the fgq and ternary_int8 schemes")
        if thresholds is not None and self.epilogue != "requantize":
            raise ValueError(f"{self.where}: thresholds apply only to the requantize epilogue")
        if (affine is not None) != self.epilogue.startswith("affine"):
            raise ValueError(f"{self.where}: scale and bias go with the affine epilogues (this one is "
                             f"{self.epilogue!r})")
        if affine is not None:
            return [*self._weight_args(values, scales), *self._affine_args(*affine)]
        if self.epilogue != "requantize":
            return self._weight_args(values, scales)
        return [*self._weight_args(values, scales),
                self._threshold_arg(thresholds, self.scheme.weight_correction(values))]

    def _multipliers(self, scales: np.ndarray | None) -> np.ndarray:
        """ternary_int8's integer group multipliers ``scales_shape`` (all ones when None), validated."""
        if scales is None:
            return np.ones(self.scales_shape, np.int32)
        m = np.asarray(scales)
        if m.dtype == np.bool_ or not np.issubdtype(m.dtype, np.number) or \
                (np.issubdtype(m.dtype, np.floating) and not np.all(m == np.round(m))):
            raise TypeError(f"{self.where}: group multipliers (scales) must be integers, got {m.dtype} values")
        if m.shape != self.scales_shape:
            raise ValueError(f"{self.where}: group multipliers have shape {m.shape}, expected {self.scales_shape} "
                             f"(output features, groups)")
        if np.any(np.abs(m) > MAX_MULTIPLIER):
            raise ValueError(f"{self.where}: group multipliers must be in -{MAX_MULTIPLIER}..{MAX_MULTIPLIER}, "
                             f"got {int(np.abs(m).max())}")
        return m.astype(np.int32)

    def _grouped_weights(self, w: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
        """ternary_int8's integer weights: each ternary weight times its group's multiplier (int64 ``[M, K]``)."""
        k = w.shape[1]
        return np.asarray(w, np.int64) * np.repeat(multipliers, self.scheme.group_width(k), axis=1)[:, :k]

    def _weight_args(self, w: np.ndarray, scales: np.ndarray | None) -> list[np.ndarray]:
        if isinstance(self.scheme, TernaryInt8Scheme):
            codes = pack_ternary_codes(w, self._byte_channels, self.block)
            multipliers = self._multipliers(scales)
            args = [codes, block_channels(multipliers, self.block)]
            correction = self.scheme.weight_correction(self._grouped_weights(w, multipliers))   # the offset's
            return args if correction is None else [*args, correction]
        if isinstance(self.scheme, ByteScheme):
            channels_last = np.moveaxis(w, 1, -1)                      # [K, *kernel, C]
            wb = np.zeros(channels_last.shape[:-1] + (self._byte_channels,), np.int8)
            wb[..., : w.shape[1]] = channels_last
            quads = block_channels(wb.reshape(*wb.shape[:-1], self._byte_channels // 4, 4), self.block)
            args = [np.ascontiguousarray(np.swapaxes(quads, -1, -2))]          # [Kb, .., C/4, V, 4]
            if isinstance(self.scheme, FgqScheme):
                return [*args, block_channels(np.asarray(scales, np.float32), self.block)]
            correction = self.scheme.weight_correction(w)
            return args if correction is None else [*args, correction]
        assert isinstance(self.scheme, PackedScheme)
        whole = self.word_bits if self.epilogue == "requantize" else 1   # the epilogue packs whole words
        pack = pack_planes if self.patch_taps == 1 else pack_patch_planes
        args = [block_channels(pack(w, self.scheme.weight, self.word_bits), self.block, whole)]
        correction = self.scheme.weight_correction(w) if self.epilogue != "requantize" else None
        return args if correction is None else [*args, correction]

    def reference(self, x: np.ndarray, w: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
        """The numpy reference output for these values (see :mod:`tvm_ternary.reference`)."""
        fgq = isinstance(self.scheme, FgqScheme)
        if isinstance(self.scheme, TernaryInt8Scheme):      # the integer weights t * m
            levels = reference.quantize_per_token(x)[0] if self.scheme.per_token else x
            return reference.dense(levels, self._grouped_weights(w, self._multipliers(scales)))
        if self.op == "dense":
            return reference.dense_fgq(x, w, scales, self.scheme.group_size) if fgq else reference.dense(x, w)
        if fgq:
            return reference.conv2d_fgq_nchw(x, w, scales, self.scheme.group_size,
                                             self.stride, self.padding, self.dilation)
        return reference.conv2d_nchw(x, w, self.stride, self.padding, self.dilation)
