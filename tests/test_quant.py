"""Quantizers, quantized layers and post-training ``quantize``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tvm_ternary import make_scheme
from tvm_ternary import reference
from tvm_ternary.quant import (FGQ, LINEAR_ONLY_SCHEMES, QUANTIZE_SCHEMES, TNT, TWN, AbsMean, Bipolar,
                               BipolarQuantizer, FatnnQuantizer, FatnnWeights, PerTokenQuantizer, QuantConv2d,
                               QuantLinear, UniformQuantizer, Unipolar, quantize)
from tvm_ternary.quant.layers import presets
from tvm_ternary.quant.weights import FGQ_MULTIPLIER_MAX


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 3 * 3, 20), nn.ReLU(), nn.Linear(20, 5))


def quantized_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


CNN_SCHEMES = [s for s in QUANTIZE_SCHEMES if s not in LINEAR_ONLY_SCHEMES]


@pytest.mark.parametrize("scheme", CNN_SCHEMES)
def test_value_sets_match_the_kernel_scheme(scheme):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    q = quantize(small_net(), scheme, x)
    layers = quantized_layers(q)
    assert len(layers) == 5                    # the first conv and last linear in int8 (the default)
    assert [json.loads(layer.scheme)["scheme"] for layer in layers] == \
        ["int8", *[presets()[scheme].kernel] * 3, "int8"]
    for layer in layers:
        params = json.loads(layer.scheme)
        kernel = make_scheme("conv2d", params.pop("scheme"), **params)
        weights = layer.w_int.numpy()
        if kernel.name == "fgq":               # t * m: ternary times a small group multiplier
            assert np.all(np.abs(weights) <= FGQ_MULTIPLIER_MAX) and np.all(weights == np.round(weights))
        else:
            kernel.check_values("conv2d", "weight", weights)
        lo, hi = kernel.activation.value_range
        levels = layer.act.levels(torch.randn(1000) * 3).numpy()
        kernel.check_values("conv2d", "data", levels)
        assert levels.min() == lo and levels.max() == hi   # every level reachable


@pytest.mark.parametrize("scheme", CNN_SCHEMES)
def test_ste_gradients_reach_weights_inputs_and_scales(scheme):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6)
    q = quantize(small_net(), scheme, x).train()
    xin = x.clone().requires_grad_()
    q(xin).square().sum().backward()
    assert xin.grad.abs().sum() > 0
    for layer in quantized_layers(q):
        assert layer.weight.grad.abs().sum() > 0
        scale_params = [p for p in layer.act.parameters()]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scale_params), scheme


def test_fatnn_weight_thresholds_are_learned():
    torch.manual_seed(2)
    w = torch.randn(6, 10, requires_grad=True)
    quantizer = FatnnWeights(6)
    (quantizer(w) * torch.randn(6, 10)).sum().backward()
    assert quantizer.d_pos.grad.abs().sum() > 0 and quantizer.d_neg.grad.abs().sum() > 0
    w_int, scale = quantizer.quantize(w)
    assert set(w_int.unique().tolist()) <= {-1.0, 0.0, 1.0} and torch.all(scale >= 0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_tnt_cosine_similarity_is_at_least_twn():
    torch.manual_seed(3)
    for _ in range(20):
        w = torch.randn(16, 64) * torch.rand(16, 1) + 0.1 * torch.randn(16, 64) ** 3
        tnt, _ = TNT().quantize(w)
        twn, _ = TWN().quantize(w)
        assert torch.all(cosine(tnt, w) >= cosine(twn, w) - 1e-6)
        best = max(float(cosine(torch.sign(w) * (w.abs() >= w.abs().topk(n, 1).values[:, -1:]), w)[0])
                   for n in range(1, 65))
        assert float(cosine(tnt, w)[0]) == pytest.approx(best, abs=1e-6)   # the optimum, by brute force


def test_twn_threshold_and_scale():
    w = torch.tensor([[0.1, -0.9, 0.5, -0.2, 1.3]])
    w_int, scale = TWN().quantize(w)
    delta = 0.7 * w.abs().mean()              # 0.42: keeps -0.9, 0.5, 1.3
    assert w_int.tolist() == [[0, -1, 1, 0, 1]] and delta == pytest.approx(0.42)
    assert float(scale[0]) == pytest.approx((0.9 + 0.5 + 1.3) / 3)


@pytest.mark.parametrize("group_size", [4, 64, 3])
def test_fgq_groups_share_one_scale(group_size):
    torch.manual_seed(4)
    w = torch.randn(5, 70, 3, 3)
    quantizer = FGQ(group_size)
    t, s = quantizer.group_scales(w)
    assert t.shape == (5, -(-70 // group_size), group_size, 9) and s.shape == (5, t.shape[1], 9)
    w_int, channel = quantizer.quantize(w)
    padded = torch.zeros(5, t.shape[1] * group_size, 3, 3)
    padded[:, :70] = w_int
    groups = padded.reshape(5, t.shape[1], group_size, 9).abs()
    magnitude = groups.amax(2, keepdim=True)
    assert torch.all((groups == 0) | (groups == magnitude))             # one magnitude per group
    expected = torch.round(s / channel[:, None, None]).clamp(0, FGQ_MULTIPLIER_MAX)
    assert torch.equal(magnitude[:, :, 0], expected * (t.abs().sum(2) > 0))
    # groups run along input channels at one kernel tap: channel c belongs to group c // G
    # (a group whose scale rounds to multiplier 0 is dropped)
    kept = t * (expected[:, :, None, :] > 0)
    assert torch.equal(torch.sign(w_int), kept.reshape(5, -1, 9)[:, :70].reshape(5, 70, 3, 3))


def test_fgq_row_groups_give_one_scale_per_output_channel():
    """``group_size="row"``: every weight of an output channel (all inputs, all taps) is
    ternary times one multiplier, the top one (7) since the channel's scale is its own."""
    torch.manual_seed(5)
    w = torch.randn(6, 10, 3, 3)
    w_int, channel = FGQ("row").quantize(w)
    assert w_int.shape == w.shape and channel.shape == (6,)
    magnitudes = [set(row[row != 0].abs().tolist()) for row in w_int.reshape(6, -1)]
    assert magnitudes == [{7.0}] * 6
    t, s = FGQ("row").group_scales(w)
    assert torch.equal(torch.sign(w_int).reshape(6, 1, -1, 1), t)
    with pytest.raises(ValueError, match=r"FGQ: group_size must be an int >= 1 or 'row', got 0"):
        FGQ(0)


def test_bipolar_weights():
    w = torch.tensor([[-0.8, -0.1, 0.0, 0.3, 0.9]])
    assert Bipolar(1).quantize(w)[0].tolist() == [[-1, -1, 1, 1, 1]]
    levels, scale = Bipolar(2).quantize(w)
    assert levels.tolist() == [[-3, -1, 1, 1, 3]] and float(scale[0]) == pytest.approx(0.3)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_bit_serial_weight_quantizers_cover_their_levels(bits):
    torch.manual_seed(bits)
    w = torch.rand(4, 5000) * 2 - 1                # uniform: every level is hit
    top = (1 << bits) - 1
    levels, _ = Unipolar(bits).quantize(w)
    assert levels.min() == 0 and levels.max() == top and torch.equal(levels, levels.round())
    levels, _ = Bipolar(bits).quantize(w)
    assert set(levels.unique().tolist()) == set(range(-top, top + 1, 2))
    make_scheme("dense", "bitserial", abits=bits, wbits=bits, weight_encoding="bipolar").check_values(
        "dense", "weight", levels.numpy())


def test_threshold_semantics_equal_rounding_away_from_ties():
    torch.manual_seed(5)
    x = torch.randn(10000) * 2
    q = UniformQuantizer.unsigned(2)
    q.calibrate(x.abs())
    s = q.scale().detach()
    assert torch.equal(q.levels(x), torch.clamp(torch.round(x / s), 0, 3))
    ternary = UniformQuantizer.ternary()
    ternary.calibrate(x)
    assert torch.equal(ternary.levels(x), torch.clamp(torch.round(x / ternary.scale().detach()), -1, 1))
    sign = BipolarQuantizer(1)
    sign.calibrate(x)
    assert torch.equal(sign.levels(x), torch.where(x >= sign.center.detach(), 1.0, -1.0))


def test_fatnn_activation_levels_are_non_uniform():
    torch.manual_seed(6)
    x = torch.relu(torch.randn(5000)) ** 2             # skewed: the best levels are not uniform
    q = FatnnQuantizer()
    q.calibrate(x)
    s1, s2 = (float(v) for v in q.steps())
    assert s1 != pytest.approx(s2, rel=0.05)
    t1, t2 = q.thresholds().tolist()
    assert t1 == pytest.approx(s1 / 2) and t2 == pytest.approx(s1 + s2 / 2)
    assert set(q.levels(x).unique().tolist()) == {0.0, 1.0, 2.0}


def test_batchnorm_is_folded_into_the_quantized_layer():
    torch.manual_seed(7)
    net = small_net()
    bn = net[3]
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(-1.5, 1.5)
    x = torch.randn(2, 3, 6, 6)
    q = quantize(net, "ternary", x)
    assert isinstance(q[3], nn.Identity) and isinstance(q[2], QuantConv2d)
    layer = q[2]
    assert torch.equal(layer.bn.running_var, bn.running_var)          # a copy: the input model is untouched
    h = q[1](q[0](x))
    w_int, w_scale = layer.weight_quantizer.quantize(layer.weight)
    fake = nn.functional.conv2d(layer.act.levels(h) * layer.act.scale(), w_int * w_scale[:, None, None, None],
                                padding=1)
    expected = layer.bn.eval()(fake)
    torch.testing.assert_close(layer(h), expected, rtol=1e-5, atol=1e-5)


def test_quantize_errors():
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="unknown scheme 'w3a3'"):
        quantize(small_net(), "w3a3", x)
    with pytest.raises(ValueError, match="calibration_data must be a tensor"):
        quantize(small_net(), "ternary", None)
    with pytest.raises(ValueError, match=r"keep names \['nope'\]"):
        quantize(small_net(), "ternary", x, keep=["nope"])
    with pytest.raises(ValueError, match="quantize: FGQ group_size must be an int >= 1 or 'row', got 'col'"):
        quantize(small_net(), "fgq_w2a4", x, group_size="col")
    with pytest.raises(ValueError, match="only integer zero padding"):
        quantize(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 1)),
                 "ternary", torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="QuantConv2d: a depthwise convolution has one input channel per group"):
        QuantConv2d(nn.Conv2d(4, 8, 3, groups=4), presets()["ternary"])


@pytest.mark.parametrize("groups,dilation", [(2, 1), (4, (2, 3)), (1, 2)])
def test_grouped_and_dilated_convolutions_quantize_with_their_geometry(groups, dilation):
    """The integer semantics of a grouped/dilated layer: conv2d of the levels with the
    integer weights, with the layer's groups and dilation."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 12, 3, padding=2, dilation=dilation, groups=groups),
                        nn.Conv2d(12, 4, 1))
    x = torch.randn(2, 3, 9, 7)
    q = quantize(net, "ternary", x)
    layer = q[1]
    assert isinstance(layer, QuantConv2d) and layer.groups == groups and layer.weight.shape[1] == 8 // groups
    h = q[0](x)
    levels = torch.ops.tvm_ternary.quantize(h, layer.thresholds, float(layer.act.lo), float(layer.act.step),
                                            layer.scheme)
    conv = net[1]                        # the float layer's own geometry, not the copies the layer keeps
    expected = nn.functional.conv2d(levels, layer.w_int, None, conv.stride, conv.padding, conv.dilation,
                                    conv.groups) * layer.alpha + layer.beta
    torch.testing.assert_close(layer(h), expected, rtol=0, atol=0)


def test_depthwise_convolutions_stay_float_with_one_warning():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1), nn.Conv2d(16, 32, 3, groups=16), nn.Conv2d(32, 4, 1))
    with pytest.warns(UserWarning, match=r"quantize: 2 depthwise convolution\(s\) stay float .*: 1, 4$") as caught:
        q = quantize(net, "ternary", torch.randn(1, 3, 6, 6))
    assert len([w for w in caught if "depthwise" in str(w.message)]) == 1
    assert [type(m).__name__ for m in q] == ["QuantConv2d", "Conv2d", "ReLU", "QuantConv2d", "Conv2d", "QuantConv2d"]


def test_first_last_int8():
    """The first and last layers get per-channel symmetric int8 weights and 7-bit activations:
    signed where the calibration input goes negative (the image), unsigned after a ReLU."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    q = quantize(small_net(), "ternary", x, first_last="int8")
    layers = quantized_layers(q)
    schemes = [json.loads(m.scheme) for m in layers]
    assert schemes[0] == {"scheme": "int8", "activation_encoding": "signed"}
    assert schemes[-1] == {"scheme": "int8", "activation_encoding": "unsigned"}
    assert all(s == {"scheme": "ternary"} for s in schemes[1:-1])
    first, last = layers[0], layers[-1]
    assert (first.act.lo, first.act.hi, last.act.lo, last.act.hi) == (-64, 63, 0, 127)
    for layer in (first, last):
        assert layer.w_int.abs().max() == 127 and torch.equal(layer.w_int, layer.w_int.round())
        levels = make_scheme("conv2d", **{k: v for k, v in json.loads(layer.scheme).items()})
        levels.check_values("conv2d", "weight", layer.w_int.numpy())
    with torch.no_grad():     # 7/8 bits: within 3% of the float layer (relative L2), unlike ternary
        exact = nn.functional.conv2d(x, first.weight, first.bias, first.stride, first.padding)
        assert torch.linalg.norm(first(x) - exact) / torch.linalg.norm(exact) < 0.03


def test_first_last_must_be_a_known_choice():
    with pytest.raises(ValueError, match=r"quantize: first_last must be one of \('float', 'int8', 'same'\), got 'int4'"):
        quantize(small_net(), "ternary", torch.randn(1, 3, 6, 6), first_last="int4")


def test_first_last_same_and_keep():
    x = torch.randn(2, 3, 6, 6)
    q = quantize(small_net(), "w2a2", x, first_last="same", keep=["5"])
    kinds = [type(m).__name__ for m in q]
    assert kinds[0] == "QuantConv2d" and kinds[5] == "Conv2d" and kinds[-1] == "QuantLinear"


def test_bitnet_quantizes_linear_layers_with_per_token_activations():
    """``bitnet``: absmean ternary weights and 8-bit activations quantized per row at run time
    on Linear layers; convolutions stay float (one warning naming them); the layer's eval
    output is ``(linear(levels, w_int) * step) * alpha + beta`` with the rows' levels and
    steps of ``reference.quantize_per_token``; gradients reach the weights and the input."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    with pytest.warns(UserWarning, match=r"'bitnet' quantizes Linear layers .* 2 convolution\(s\) stay float: 2, 5"):
        q = quantize(small_net(), "bitnet", x)
    layers = quantized_layers(q)
    assert [json.loads(layer.scheme) for layer in layers][1] == {"scheme": "ternary_int8", "activations": "per_token"}
    layer = layers[1]                                       # the first Linear (the last one is int8)
    assert isinstance(layer.act, PerTokenQuantizer) and isinstance(layer.weight_quantizer, AbsMean)
    assert set(np.unique(layer.w_int.numpy())) <= {-1.0, 0.0, 1.0}
    rows = torch.randn(5, layer.weight.shape[1]) * 4
    levels, step = reference.quantize_per_token(rows.numpy())
    np.testing.assert_array_equal(layer.act.levels(rows).numpy(), levels)
    with torch.no_grad():
        expected = (torch.from_numpy(levels).float() @ layer.w_int.T * torch.from_numpy(step)[:, None]) \
            * layer.alpha + layer.beta
        np.testing.assert_array_equal(layer(rows).numpy(), expected.numpy())
    layer.train()
    rows.requires_grad_()
    layer(rows).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and rows.grad.abs().sum() > 0


def test_per_token_activations_are_for_linear_layers():
    with pytest.raises(ValueError, match=r"QuantConv2d: per-token activations are for Linear layers"):
        QuantConv2d(nn.Conv2d(3, 4, 3), presets()["bitnet"])


def test_absmean_weights_are_bitnets():
    w = torch.tensor([[0.4, -2.0, 0.1, 1.4], [0.0, 0.2, -0.6, 3.3]])
    w_int, scale = AbsMean().quantize(w)                   # mean |w| = 1.0
    np.testing.assert_array_equal(w_int.numpy(), [[0, -1, 0, 1], [0, 0, -1, 1]])
    np.testing.assert_allclose(scale.numpy(), [1.0, 1.0])
