"""``quantize``: post-training conversion of a float model into quantized layers."""

from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
import torch.fx
from torch import Tensor, nn

from ..schemes import FGQ_ROW, is_group_size
from .layers import LINEAR_ONLY_SCHEMES, QUANTIZE_SCHEMES, QuantConv2d, QuantLayer, QuantLinear, int8_preset, is_depthwise, presets


def _batches(calibration_data) -> list[Tensor]:
    if isinstance(calibration_data, Tensor):
        return [calibration_data]
    batches = list(calibration_data or ())
    if not batches or not all(isinstance(b, Tensor) for b in batches):
        raise ValueError("quantize: calibration_data must be a tensor or a non-empty iterable of tensors "
                         "(model inputs used to set the activation scales)")
    return batches


def _conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """Conv2d module name -> name of the BatchNorm2d that alone consumes its output."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            if user.op == "call_module" and isinstance(modules[user.target], nn.BatchNorm2d):
                pairs[node.target] = user.target
    return pairs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


FIRST_LAST = ("float", "int8", "same")
"""How :func:`quantize` treats a model's first and last Conv2d/Linear (stable spellings)."""


def quantize(model: nn.Module, scheme: str, calibration_data, first_last: str = "int8",
             keep: Iterable[str] = (), group_size: int | str = 4) -> nn.Module:
    """Post-training quantization: a copy of ``model`` with its ``Conv2d``/``Linear``
    layers replaced by :class:`QuantConv2d`/:class:`QuantLinear`, in eval mode.

    Grouped and dilated convolutions are quantized like any other (each group's channels
    packed on their own). Depthwise convolutions (one input channel per group: nothing to
    pack) stay float, with one warning naming them.

    Args:
        model: a float ``nn.Module`` (traceable by ``torch.fx`` to find BatchNorm layers
            that follow convolutions; those are folded into the quantized layer).
        scheme: one of ``"fatnn"``, ``"ternary"`` (TWN weights, ternary activations),
            ``"tnt"``, ``"fgq_w2a4"``, ``"fgq_w2a8"``, ``"w1a1"``, ``"w2a2"``, or ``"bitnet"``
            (BitNet b1.58: absmean ternary weights, 8-bit activations quantized per token at
            run time, the ``ternary_int8`` kernel; Linear layers only, convolutions stay float
            with a warning).
        calibration_data: a model input tensor, or an iterable of them; each quantized
            layer's activation quantizer is fit to what the float model feeds that layer.
        first_last: the first and the last Conv2d/Linear (in execution order). ``"int8"``
            (the default) quantizes them to per-channel symmetric 8-bit weights and 7-bit
            activations (the ``int8`` kernel scheme; signed activations where the
            calibration input goes negative, e.g. a normalized image, else unsigned): the
            whole model is then integer, within a few tenths of a percent of float first
            and last layers in accuracy and faster (the README's "First and last layers"
            gives the evidence). ``"float"`` keeps them float; ``"same"`` quantizes them
            with ``scheme`` like every other layer (cheapest, least accurate).
        keep: further module names to keep in float.
        group_size: FGQ group size: input channels per scale at each kernel tap (any int
            >= 1; the last group of a layer may be partial), or ``"row"``: one scale per
            output channel (BitNet b1.58's format). Default 4.

    Returns:
        The quantized model in eval mode; ``model.train()`` gives the fake-quantized model
        for quantization-aware training, ``eval()`` freezes it again.
    """
    if scheme not in QUANTIZE_SCHEMES:
        raise ValueError(f"quantize: unknown scheme {scheme!r}; expected one of {QUANTIZE_SCHEMES}")
    if first_last not in FIRST_LAST:
        raise ValueError(f"quantize: first_last must be one of {FIRST_LAST}, got {first_last!r}")
    if not is_group_size(group_size):
        raise ValueError(f"quantize: FGQ group_size must be an int >= 1 or {FGQ_ROW!r}, got {group_size!r}")
    preset = presets(group_size)[scheme]
    model = copy.deepcopy(model).eval()
    batches = _batches(calibration_data)
    pairs = _conv_bn_pairs(model)

    order: list[str] = []
    inputs: dict[str, list[Tensor]] = {}

    def record(name):
        def hook(module, args):
            if name not in inputs:
                order.append(name)
                inputs[name] = []
            inputs[name].append(args[0].detach())
        return hook

    layers = {n: m for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    handles = [m.register_forward_pre_hook(record(n)) for n, m in layers.items()]
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for h in handles:
        h.remove()

    kept = set(keep)
    unknown = kept - set(layers)
    if unknown:
        raise ValueError(f"quantize: keep names {sorted(unknown)} are not Conv2d/Linear modules of the model")
    ends = {order[0], order[-1]} if order else set()
    if first_last == "float":
        kept |= ends
    depthwise = [name for name in order if name not in kept and isinstance(layers[name], nn.Conv2d)
                 and is_depthwise(layers[name])]
    if depthwise:
        warnings.warn(f"quantize: {len(depthwise)} depthwise convolution(s) stay float (one input channel per "
                      f"group: nothing to pack): {', '.join(depthwise)}", stacklevel=2)
    linear_only = scheme in LINEAR_ONLY_SCHEMES
    convs = [name for name in order if name not in kept and name not in depthwise and linear_only
             and isinstance(layers[name], nn.Conv2d) and not (first_last == "int8" and name in ends)]
    if convs:
        warnings.warn(f"quantize: {scheme!r} quantizes Linear layers (per-token activations); "
                      f"{len(convs)} convolution(s) stay float: {', '.join(convs)}", stacklevel=2)
    for name in order:
        if name in kept or name in depthwise or name in convs:
            continue
        layer = layers[name]
        sample = torch.cat([x.flatten() for x in inputs[name]])
        chosen = int8_preset(signed=bool(sample.min() < 0)) if first_last == "int8" and name in ends else preset
        if isinstance(layer, nn.Conv2d):
            bn = model.get_submodule(pairs[name]) if name in pairs else None
            quant: QuantLayer = QuantConv2d(layer, chosen, bn)
            if bn is not None:
                _set_module(model, pairs[name], nn.Identity())
        else:
            quant = QuantLinear(layer, chosen)
        quant.act.calibrate(sample)
        _set_module(model, name, quant)
    return model.eval()
