"""The Relax rewrite: which layers it replaces, the integer thresholds it folds, its errors."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tvm_ternary import SlowPathWarning, from_torch, make_scheme, quantize
from tvm_ternary.frontend import quantize_prim_func
from tvm_ternary.rewrite import KERNEL_ATTR, MACS_ATTR, Layer, fold_thresholds, rewrite_quantized

from .conftest import AVX2
from .test_quant import small_net

TARGET = tvm.target.Target(AVX2)


def calls(mod: tvm.IRModule) -> Counter:
    """Relax ops and our functions (by their KERNEL_ATTR role) called by ``main``."""
    counted = Counter()
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_tir":
                attrs = mod[value.args[0]].attrs
                role = str(attrs[KERNEL_ATTR]).split(":")[1] if attrs and KERNEL_ATTR in attrs else "other"
                counted["tir:" + role] += 1
            elif isinstance(value.op, tvm.ir.Op):
                counted[value.op.name] += 1
    return counted


def imported(scheme: str, seed: int = 0, negative_bn: bool = False, first_last: str = "float"):
    torch.manual_seed(seed)
    net = small_net()
    if negative_bn:
        net[3].weight.data[::2] *= -1
    x = torch.randn(2, 3, 6, 6)
    model = quantize(net, scheme, x, first_last=first_last)
    return model, x, from_torch(model, x)


@pytest.mark.parametrize("scheme", ["ternary", "fgq_w2a4"])
def test_every_quantized_layer_is_replaced_and_the_rest_left(scheme):
    _, _, mod = imported(scheme)
    before = calls(mod)
    assert before["relax.nn.conv2d"] == 3 and before["relax.matmul"] == 2 and before["tir:other"] == 3
    after = calls(rewrite_quantized(mod, TARGET))
    assert after["tir:kernel"] == 4                        # conv, conv, dense and the float first conv
    assert after["tir:pad"] == 1                           # the float conv's padding stage
    assert after["relax.nn.conv2d"] == 0 and after["relax.matmul"] == 1    # the float classifier stays
    assert after["tir:other"] == 0                         # no quantizer left in Relax
    if scheme == "ternary":
        # conv -> relu -> quantize -> conv is folded into thresholds: one data stage fewer
        assert after["tir:quantize"] == 2
        assert after["relax.nn.relu"] == 1                 # only the float first layer's
    else:
        assert after["tir:quantize"] == 3                  # 12 channels: not a multiple of the int8 block 8, no hand-over
        assert after["relax.multiply"] == 0 and after["relax.nn.relu"] == 1   # epilogues fused


def run(mod: tvm.IRModule, x: torch.Tensor) -> np.ndarray:
    ex = tvm.compile(mod, target=TARGET)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()


def test_fgq_blocks_hand_bytes_to_their_second_conv_and_stay_exact():
    """In an FGQ ResNet-18 (int8 stem and classifier) each block's first conv writes its second
    conv's input bytes (the byte requantize epilogue): 8 data stages fewer than kernels plus
    the classifier's, and the logits still equal the PyTorch quantized model's."""
    from tvm_ternary.models import ResNet18, randomize_batchnorm
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(num_classes=10, width=16)).eval()
    x = torch.randn(2, 3, 32, 32)
    q = quantize(model, "fgq_w2a8", x)
    rewritten = rewrite_quantized(from_torch(q, x), TARGET)
    counted = calls(rewritten)
    assert counted["tir:kernel"] == 21 and counted["tir:quantize"] == 21 - 8
    with torch.no_grad():
        np.testing.assert_array_equal(run(rewritten, x), q(x).numpy())


class _Convs(torch.nn.Module):
    """A float stem, then int8-scheme (FGQ) convs of 16 channels: ``chain`` (conv, BatchNorm,
    ReLU, conv), ``branch`` (the ReLU's result read by two convs, added) or ``grouped`` (the
    second conv in two groups)."""

    def __init__(self, kind: str):
        super().__init__()
        nn = torch.nn
        self.kind = kind
        self.stem, self.first = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.second = nn.Conv2d(16, 16, 3, padding=1, groups=2 if kind == "grouped" else 1)
        self.other = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16 * 6 * 6, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.first(torch.relu(self.stem(x)))))
        h = self.second(h) + self.other(h) if self.kind == "branch" else self.second(h)
        return self.head(torch.flatten(torch.relu(h), 1))


@pytest.mark.parametrize("kind,handed_over", [("chain", True), ("branch", False), ("grouped", False)])
def test_int8_conv_hands_its_bytes_only_to_a_lone_ungrouped_next_conv(kind, handed_over):
    """The byte requantize epilogue replaces the next conv's quantize stage only where that
    conv's quantizer alone reads the result and the conv is ungrouped; the result is the
    model's either way."""
    torch.manual_seed(0)
    net = _Convs(kind).eval()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 6, 6)
    model = quantize(net, "fgq_w2a8", x, first_last="float")
    rewritten = rewrite_quantized(from_torch(model, x), TARGET)
    counted = calls(rewritten)
    quantized_kernels = counted["tir:kernel"] - 1                 # all but the float stem's
    assert counted["tir:quantize"] == quantized_kernels - (1 if handed_over else 0)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_negative_channel_scales_keep_the_float_epilogue_and_stay_exact():
    model, x, mod = imported("w2a2", negative_bn=True, first_last="same")   # all integer: exact
    rewritten = rewrite_quantized(mod, TARGET)
    # data stages: the first conv's, the third conv's (not folded: some channels of the
    # second have negative scales) and the first dense's; with positive scales, two
    assert calls(rewritten)["tir:quantize"] == 3
    assert calls(rewrite_quantized(imported("w2a2", first_last="same")[2], TARGET))["tir:quantize"] == 2
    with torch.no_grad():
        assert np.array_equal(run(rewritten, x), model(x).numpy())


def test_non_ternary_weights_in_a_ternary_layer_are_an_error():
    model, x, _ = imported("ternary")
    model[2].w_int[0, 0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"rewrite: conv2d\[ternary\] at .*weight values must be in \{-1, 0, 1\}"):
        rewrite_quantized(from_torch(model, x), TARGET)


def kernel_roles(mod: tvm.IRModule) -> list[str]:
    return sorted(str(f.attrs[KERNEL_ATTR]) for _, f in mod.functions_items()
                  if f.attrs is not None and KERNEL_ATTR in f.attrs and str(f.attrs[KERNEL_ATTR]).endswith(":kernel"))


@pytest.mark.parametrize("scheme,abits", [("fgq_w2a4", 4), ("fgq_w2a8", 8)])
def test_fgq_layers_run_as_int8_kernels_on_their_integer_weights(scheme, abits):
    """Weights times group multipliers (-7..7) as 4-bit bytes, the FGQ activations as they
    are: the int8 kernel, exact, with the channel scale in the float epilogue."""
    model, x, mod = imported(scheme)
    rewritten = rewrite_quantized(mod, TARGET)
    label = f"int8(a{abits}u,w4)"
    assert kernel_roles(rewritten) == ["conv2d[float]:kernel", f"conv2d[{label}]:kernel",
                                       f"conv2d[{label}]:kernel", f"dense[{label}]:kernel"]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("group_size", [3, 16, "row"])
def test_fgq_models_with_any_group_size_run_on_the_int8_kernel(group_size):
    """Group sizes that do not divide the channels (3), others than 4 and 64 (16), and one
    scale per output channel ("row", BitNet b1.58's format): the same int8 conv kernels, and
    the model's result. The dense layer takes the 2-bit-code kernel where its groups are a
    multiple of 16 inputs or a row (its multipliers beside the codes), else int8."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = quantize(small_net(), "fgq_w2a8", x, first_last="float", group_size=group_size)
    rewritten = rewrite_quantized(from_torch(model, x), TARGET)
    roles = kernel_roles(rewritten)
    assert roles.count("conv2d[int8(a8u,w4)]:kernel") == 2
    assert roles.count("dense[int8(a8u,w4)]:kernel" if group_size == 3 else
                       f"dense[ternary_int8(g{group_size},a8)]:kernel") == 1
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("scheme,magnitude", [("fgq_w2a8", 100), ("fgq_w2a4", 200)])
def test_fgq_weights_too_large_for_the_int8_kernel_take_the_float_scale_kernel(scheme, magnitude):
    """Weights beyond the int8 kernel's bits (with 8-bit activations beyond -63..63, which
    would overflow AVX2's int16 pair sums; with 4-bit ones beyond a byte): such a layer (a
    group of that magnitude) runs on the float-scale FGQ kernel instead."""
    model, x, _ = imported(scheme)
    w = model[2].w_int
    w[:, 0:4] = torch.sign(w[:, 0:4]) * float(magnitude)
    mod = from_torch(model, x)
    rewritten = rewrite_quantized(mod, TARGET)
    assert f"conv2d[fgq(g4,a{scheme[-1]})]:kernel" in kernel_roles(rewritten)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_fgq_weights_too_large_for_both_kernels_are_an_error():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = quantize(small_net(), "fgq_w2a8", x, first_last="float", group_size="row")
    model[2].w_int.mul_(20.0)                          # magnitudes 140: no int8 kernel, and "row" is not in quads
    with pytest.raises(ValueError, match=r"conv2d\[fgq\(grow,a8\)\] at .*: weights of magnitude up to 140 are too "
                                         r"large for the int8 kernel with 8-bit activations .* the float-scale FGQ "
                                         r"kernel needs a group size that is a multiple of 4, got 'row'"):
        rewrite_quantized(from_torch(model, x), TARGET)


def test_fgq_weights_with_two_magnitudes_in_a_group_are_an_error():
    model, x, _ = imported("fgq_w2a4")
    w = model[2].w_int
    w[0, 0:4, 0, 0] = torch.tensor([1.0, 2.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="one magnitude"):
        rewrite_quantized(from_torch(model, x), TARGET)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("scheme", [("fatnn", {}), ("bitserial", {"abits": 2, "wbits": 2})])
def test_folded_thresholds_reproduce_the_float_epilogue_for_every_accumulator(scheme, relu, rng):
    """For every reachable int32 y: #(y >= t) equals the float32 graph's next quantizer level."""
    kernel = make_scheme("conv2d", scheme[0], **scheme[1])
    k, taps = 6, (3, 2, 2)
    weight = np.zeros((k, *taps), np.int32)
    scale = (rng.random(k) * 0.05 + 1e-3).astype(np.float32)
    bias = (rng.standard_normal(k) * 0.3).astype(np.float32)
    layer = Layer(None, "conv2d", None, np.zeros(0, np.float32), 0, 1, kernel, weight, (1, 3, 4, 4),
                  scale=scale, bias=bias, relu=relu)
    thresholds = np.sort(rng.standard_normal(kernel.activation.value_range[1] - kernel.activation.value_range[0])
                         ).astype(np.float32) * 0.5
    nxt = Layer(None, "conv2d", None, thresholds, 0, 1, kernel, weight, (1, k, 4, 4))
    t = fold_thresholds(layer, nxt)
    bound = int(np.prod(taps)) * 2 * (3 if scheme[0] == "bitserial" else 1)
    y = np.arange(-bound, bound + 1)
    v = y[None, :].astype(np.float32) * scale[:, None] + bias[:, None]
    if relu:
        v = np.maximum(v, np.float32(0))
    expected = (v[:, :, None] >= thresholds).sum(-1)
    got = (y[None, :, None] >= t[:, None, :]).sum(-1)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("data_shape,weight_shape,stride,padding", [
    ((2, 3, 23, 19), (20, 3, 7, 7), 2, 3),       # a stem: 3 channels, 7x7, stride 2, odd sizes, batch 2
    ((1, 33, 9, 9), (7, 33, 3, 3), 1, 1),        # channels and filters not multiples of the vector
    ((1, 16, 8, 8), (24, 16, 1, 1), 1, 0),       # 1x1
])
def test_float_convolutions_get_the_register_tiled_kernel(data_shape, weight_shape, stride, padding, rng):
    x = torch.from_numpy(rng.standard_normal(data_shape).astype(np.float32))
    conv = torch.nn.Conv2d(weight_shape[1], weight_shape[0], weight_shape[2], stride, padding, bias=False).eval()
    mod = from_torch(conv, x)
    rewritten = rewrite_quantized(mod, TARGET)
    assert calls(rewritten)["relax.nn.conv2d"] == 0 and calls(rewritten)["tir:kernel"] == 1
    with torch.no_grad():
        expected = conv(x).numpy()
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("affine,relu", [(True, True), (True, False), (False, True)],
                         ids=["bn-relu", "bn", "bn-without-affine-relu"])
def test_a_float_conv_runs_its_batch_norm_and_relu_in_the_kernel(affine, relu, rng):
    """An inference BatchNorm after a float conv (and a ReLU after it) becomes the float
    kernel's per-channel scale and shift; without affine parameters (center and scale off)
    only the statistics count."""
    bn = torch.nn.BatchNorm2d(16, affine=affine)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    if affine:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1, bias=False), bn,
                                *([torch.nn.ReLU()] if relu else []), torch.nn.Flatten()).eval()
    x = torch.from_numpy(rng.standard_normal((1, 3, 9, 7)).astype(np.float32))
    rewritten = rewrite_quantized(from_torch(model, x), TARGET)
    counted = calls(rewritten)
    assert counted["relax.nn.batch_norm"] == 0 and counted["relax.nn.relu"] == 0 and counted["tir:kernel"] == 1
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run(rewritten, x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def quantized_conv(weight_as_input: bool, thresholds_as_input: bool) -> tvm.IRModule:
    """``main(x[, w][, t])``: a ternary activation quantizer, then conv2d; the weights and the
    quantizer's thresholds are constants or function inputs."""
    weight = relax.const(np.ones((4, 8, 3, 3), np.float32))
    thresholds = relax.const(np.array([-0.5, 0.5], np.float32))
    x = relax.Var("x", relax.TensorType((1, 8, 5, 5), "float32"))
    params = [x]
    if weight_as_input:
        weight = relax.Var("w", relax.TensorType((4, 8, 3, 3), "float32"))
        params.append(weight)
    if thresholds_as_input:
        thresholds = relax.Var("t", relax.TensorType((2,), "float32"))
        params.append(thresholds)
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            quantizer = bb.add_func(quantize_prim_func((1, 8, 5, 5), "float32", 2, -1.0, 1.0,
                                                       json.dumps({"scheme": "ternary"})), "tvm_ternary_quantize")
            q = bb.emit(relax.call_tir(quantizer, [x, thresholds], relax.TensorType((1, 8, 5, 5), "float32")))
            out = bb.emit_output(bb.emit(relax.op.nn.conv2d(q, weight, padding=1)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("weight_as_input,thresholds_as_input,what", [
    (True, False, "its weights are"), (False, True, "its activation thresholds are"),
    (True, True, "its weights and activation thresholds are"),
], ids=["weights", "thresholds", "both"])
def test_a_quantized_layer_with_variable_parameters_stays_in_relax_with_a_warning(
        weight_as_input, thresholds_as_input, what):
    with pytest.warns(SlowPathWarning, match=rf"rewrite: conv2d\[ternary\] at \w+: {what} not constants, so "
                                             r"the layer stays a float Relax conv2d"):
        rewritten = rewrite_quantized(quantized_conv(weight_as_input, thresholds_as_input), TARGET)
    assert calls(rewritten)["relax.nn.conv2d"] == 1 and calls(rewritten)["tir:kernel"] == 0


def test_a_quantized_layer_with_constant_parameters_gets_our_kernel_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPathWarning)
        rewritten = rewrite_quantized(quantized_conv(False, False), TARGET)
    assert calls(rewritten)["relax.nn.conv2d"] == 0 and calls(rewritten)["tir:kernel"] == 1


def reshaped_dense(flat_result_used: bool, reshape_rows: tuple[int, int] = (6, 16)) -> tvm.IRModule:
    """A ternary dense layer over ``[2, 3, 16]`` rows as ``torch.export`` writes it (quantize,
    reshape to rows, matmul, reshape back), with the flat result also returned if
    ``flat_result_used``, or the rows reshaped to ``reshape_rows``."""
    x = relax.Var("x", relax.TensorType((2, 3, 16), "float32"))
    weight = relax.const(np.ones((reshape_rows[1], 4), np.float32))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            quantizer = bb.add_func(quantize_prim_func((2, 3, 16), "float32", 2, -1.0, 1.0,
                                                       json.dumps({"scheme": "ternary"})), "tvm_ternary_quantize")
            q = bb.emit(relax.call_tir(quantizer, [x, relax.const(np.array([-0.5, 0.5], np.float32))],
                                       relax.TensorType((2, 3, 16), "float32")))
            rows = bb.emit(relax.op.reshape(q, reshape_rows))
            y = bb.emit(relax.op.matmul(rows, weight))
            back = bb.emit(relax.op.reshape(y, (2, 3, 4)) if reshape_rows == (6, 16) else relax.op.sum(y))
            out = bb.emit_output(relax.Tuple([back, y]) if flat_result_used else back)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("flat_result_used,reshape_rows", [(True, (6, 16)), (False, (12, 8))],
                         ids=["flat-result-used", "not-rows"])
def test_a_dense_layer_over_reshaped_rows_runs_on_our_kernel_only_as_torch_export_writes_it(flat_result_used,
                                                                                           reshape_rows):
    """Quantize, flatten ``[2, 3, K]`` to rows, matmul, reshape back: our kernel. A graph that
    also uses the flat result, or reshapes to something other than rows, stays in Relax with a
    warning (the kernel computes rows and reshapes them back)."""
    assert calls(rewrite_quantized(reshaped_dense(False), TARGET))["tir:kernel"] == 1
    with pytest.warns(SlowPathWarning, match=r"rewrite: the quantized matmul at \w+ reads a reshape of its "
                                             r"quantizer's output that is not \[batch \* tokens, K\] rows"):
        rewritten = rewrite_quantized(reshaped_dense(flat_result_used, reshape_rows), TARGET)
    assert calls(rewritten)["relax.matmul"] == 1 and calls(rewritten)["tir:kernel"] == 0


def test_kernels_carry_their_multiply_accumulates():
    """Every conv2d/dense kernel the pass adds says how many MACs a call does (the model
    profile's G MAC/s); here each kernel is called once, so they add up to the model's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = quantize(small_net(), "ternary", x, first_last="same")
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) or hasattr(m, "w_int")]
    expected = 0

    def count(module, args, out):
        nonlocal expected
        expected += out.numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    mod = rewrite_quantized(from_torch(model, x), tvm.target.Target(AVX2))
    kernels = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
               and str(f.attrs.get(KERNEL_ATTR, "")).endswith(":kernel")]
    assert len(kernels) == 5 and all(MACS_ATTR in f.attrs for f in kernels)
    assert sum(int(f.attrs[MACS_ATTR]) for f in kernels) == expected == 2 * (8 * 36 * 27 + 12 * 36 * 72 + 16 * 9 * 108
                                                                             + 20 * 144 + 5 * 20)
