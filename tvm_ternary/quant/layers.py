"""Quantized Conv2d / Linear modules and the ``tvm_ternary::quantize`` custom op.

A quantized layer ``Q(x)`` in eval mode computes, with integer-valued float32 tensors
(exact below 2^24):

    q = quantize(x)                       # activation levels, see .activations
    y = conv2d(q, w_int)                  # or linear: the integer accumulator
    out = y * alpha + beta                # alpha = act_scale * w_scale (* BN), beta = bias (+ BN)

``alpha`` and ``beta`` (shape ``[1, K, 1, 1]`` or ``[1, K]``) and ``w_int`` are buffers
computed by :meth:`QuantLayer.freeze`, which ``eval()`` calls. The activation quantizer is
called through the custom op ``tvm_ternary::quantize(x, thresholds, lo, step, scheme)``,
so it survives ``torch.export`` and tells the Relax rewrite which kernel scheme
(:func:`tvm_ternary.make_scheme` arguments, as JSON) the layer runs. In training mode
the layer is fake-quantized with straight-through gradients.

With per-token activations (the ``bitnet`` preset) the quantizer is
``tvm_ternary::quantize_per_token(x, scheme)`` and each row's step multiplies the
accumulator first: ``out = (y * token_step(x)) * alpha + beta`` (``tvm_ternary::token_step``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import (ActivationQuantizer, BipolarQuantizer, FatnnQuantizer, PerTokenQuantizer, UniformQuantizer,
                          per_token_levels, per_token_step)
from .weights import FGQ, TNT, TWN, AbsMean, Bipolar, FatnnWeights, Symmetric, WeightQuantizer


@torch.library.custom_op("tvm_ternary::quantize", mutates_args=())
def quantize_levels(x: Tensor, thresholds: Tensor, lo: float, step: float, scheme: str) -> Tensor:
    """``lo + step * #{j : x >= thresholds[j]}`` elementwise (float32 levels). ``scheme`` is
    the consuming layer's kernel scheme as JSON; it rides along for the Relax rewrite."""
    return lo + step * torch.bucketize(x, thresholds.to(x.dtype), right=True).to(x.dtype)


@quantize_levels.register_fake
def _(x, thresholds, lo, step, scheme):
    return torch.empty_like(x)


@torch.library.custom_op("tvm_ternary::quantize_per_token", mutates_args=())
def quantize_per_token(x: Tensor, scheme: str) -> Tensor:
    """Per-token levels :func:`~.activations.per_token_levels` (float32); ``scheme`` as for
    ``tvm_ternary::quantize``."""
    return per_token_levels(x)


@quantize_per_token.register_fake
def _(x, scheme):
    return torch.empty_like(x)


@torch.library.custom_op("tvm_ternary::token_step", mutates_args=())
def token_step(x: Tensor) -> Tensor:
    """Each row's step :func:`~.activations.per_token_step` (``[..., 1]``)."""
    return per_token_step(x)


@token_step.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], 1))


@dataclass(frozen=True)
class Preset:
    """A ``quantize`` scheme name: the kernel scheme and the quantizers it pairs."""

    kernel: str
    kernel_params: dict = field(default_factory=dict)
    activation: Callable[[], ActivationQuantizer] = UniformQuantizer.ternary
    weight: Callable[[int], WeightQuantizer] = lambda out_channels: TWN()

    def scheme_json(self) -> str:
        return json.dumps({"scheme": self.kernel, **self.kernel_params}, sort_keys=True)


def presets(group_size: int | str = 4) -> dict[str, Preset]:
    """The scheme names of :func:`tvm_ternary.quantize` (FGQ groups of ``group_size``)."""
    return {
        "fatnn": Preset("fatnn", {}, FatnnQuantizer, FatnnWeights),
        "ternary": Preset("ternary", {}, UniformQuantizer.ternary, lambda k: TWN()),
        "tnt": Preset("ternary", {}, UniformQuantizer.ternary, lambda k: TNT()),
        "fgq_w2a4": Preset("fgq", {"group_size": group_size, "abits": 4}, lambda: UniformQuantizer.unsigned(4),
                           lambda k: FGQ(group_size)),
        "fgq_w2a8": Preset("fgq", {"group_size": group_size, "abits": 8}, lambda: UniformQuantizer.unsigned(8),
                           lambda k: FGQ(group_size)),
        "w1a1": Preset("bitserial", {"abits": 1, "wbits": 1, "activation_encoding": "bipolar",
                                     "weight_encoding": "bipolar"}, lambda: BipolarQuantizer(1), lambda k: Bipolar(1)),
        "w2a2": Preset("bitserial", {"abits": 2, "wbits": 2, "activation_encoding": "unipolar",
                                     "weight_encoding": "bipolar"}, lambda: UniformQuantizer.unsigned(2),
                       lambda k: Bipolar(2)),
        "bitnet": Preset("ternary_int8", {"activations": "per_token"}, PerTokenQuantizer, lambda k: AbsMean()),
    }


QUANTIZE_SCHEMES = tuple(presets())
"""Scheme names accepted by :func:`tvm_ternary.quantize` (stable)."""
LINEAR_ONLY_SCHEMES = ("bitnet",)
"""Schemes that quantize Linear layers only (per-token activations, for language models):
a CNN keeps its convolutions float under them."""


def int8_preset(signed: bool) -> Preset:
    """The 8-bit first/last layer (:func:`tvm_ternary.quantize` with ``first_last="int8"``):
    per-channel symmetric int8 weights and 7-bit activations, signed (-64..63) for inputs
    that go negative (a normalized image), else unsigned (0..127), as the ``int8`` kernel
    scheme defines them."""
    return Preset("int8", {"activation_encoding": "signed" if signed else "unsigned"},
                  (lambda: UniformQuantizer(-64, 63)) if signed else (lambda: UniformQuantizer.unsigned(7)),
                  lambda k: Symmetric(8))


class QuantLayer(nn.Module):
    """Shared part of :class:`QuantConv2d` and :class:`QuantLinear`."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, preset: Preset, bn: nn.BatchNorm2d | None = None):
        super().__init__()
        self.preset = preset
        self.scheme = preset.scheme_json()
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.bn = bn
        self.act = preset.activation()
        self.per_token = isinstance(self.act, PerTokenQuantizer)
        self.weight_quantizer = preset.weight(self.weight.shape[0])
        k = self.weight.shape[0]
        view = (1, k) + (1,) * (self.weight.dim() - 2)
        self.register_buffer("w_int", torch.zeros_like(self.weight))
        self.register_buffer("alpha", torch.ones(view))
        self.register_buffer("beta", torch.zeros(view))
        self.register_buffer("thresholds", torch.zeros(len(self.act.thresholds())))

    def _linear(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def freeze(self) -> None:
        """Compute the inference buffers from the current parameters (and BatchNorm
        statistics, folded in): ``w_int``, ``alpha``, ``beta``, ``thresholds``."""
        w_int, w_scale = self.weight_quantizer.quantize(self.weight)
        multiplier = w_scale.double() * float(self.act.scale())
        shift = torch.zeros_like(multiplier) if self.bias is None else self.bias.double()
        if self.bn is not None:
            gain = self.bn.weight.double() / torch.sqrt(self.bn.running_var.double() + self.bn.eps)
            multiplier, shift = multiplier * gain, (shift - self.bn.running_mean.double()) * gain + self.bn.bias.double()
        self.w_int.copy_(w_int)
        self.alpha.copy_(multiplier.reshape(self.alpha.shape).float())
        self.beta.copy_(shift.reshape(self.beta.shape).float())
        self.thresholds.copy_(self.act.thresholds().float())

    def train(self, mode: bool = True) -> "QuantLayer":
        super().train(mode)
        if not mode:
            self.freeze()
        return self

    def integer_output(self, x: Tensor) -> Tensor:
        """Eval semantics up to the accumulator: ``y = conv(quantize(x), w_int)``."""
        if self.per_token:
            q = torch.ops.tvm_ternary.quantize_per_token(x, self.scheme)
        else:
            q = torch.ops.tvm_ternary.quantize(x, self.thresholds, float(self.act.lo), float(self.act.step),
                                               self.scheme)
        return self._linear(q, self.w_int)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            y = self.integer_output(x)
            if self.per_token:              # each row's step, then the channel's scale
                y = y * torch.ops.tvm_ternary.token_step(x)
            return y * self.alpha + self.beta
        y = self._linear(self.act(x), self.weight_quantizer(self.weight))
        if self.bias is not None:
            y = y + self.bias.reshape(self.alpha.shape)
        return y if self.bn is None else self.bn(y)


def is_depthwise(conv: nn.Conv2d) -> bool:
    """True for a depthwise ``Conv2d``: one input channel per group, nothing to pack."""
    return conv.groups > 1 and conv.in_channels == conv.groups


class QuantConv2d(QuantLayer):
    """Quantized ``nn.Conv2d`` (any stride, dilation and groups but depthwise, integer zero
    padding), optionally with its following ``BatchNorm2d`` folded in at :meth:`freeze`.
    Each group's input channels are packed on their own (``build`` runs a kernel per group)."""

    def __init__(self, conv: nn.Conv2d, preset: Preset, bn: nn.BatchNorm2d | None = None):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"QuantConv2d: only integer zero padding is supported, got {conv}")
        if is_depthwise(conv):
            raise ValueError(f"QuantConv2d: a depthwise convolution has one input channel per group, nothing to "
                             f"pack; keep it float (quantize does), got {conv}")
        if preset.activation is PerTokenQuantizer:
            raise ValueError(f"QuantConv2d: per-token activations are for Linear layers (language models' "
                             f"linears), got {conv}")
        super().__init__(conv, preset, bn)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def _linear(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(QuantLayer):
    """Quantized ``nn.Linear`` (input ``[N, features]``)."""

    def _linear(self, x, w):
        return F.linear(x, w)
