"""The channel-blocked float layout (``tvm_ternary.layout``): its constants, the
quantize+pack stage that reads it, the kernels that write it, and the rewrite that keeps a
model's float glue in it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

import tvm_ternary
from tvm_ternary import layout, schedules
from tvm_ternary.api import CompiledOperator, make_spec
from tvm_ternary.models import ResNet18, randomize_batchnorm
from tvm_ternary.operators.compute import quantizer_levels
from tvm_ternary.rewrite import rewrite_quantized

from .conftest import AVX2
from .test_rewrite import calls


def to_blocked(x: np.ndarray, b: int) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2))


def test_block_constant():
    per_channel = np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1)
    blocked = layout.block_constant(per_channel, 8, 4)
    assert blocked.shape == (1, 2, 1, 1, 4) and blocked[0, 1, 0, 0].tolist() == [4, 5, 6, 7]
    assert layout.block_constant(np.float32(2.0).reshape(1), 8, 4).shape == ()
    assert layout.block_constant(np.zeros((1, 8, 2, 1), np.float32), 8, 4) is None     # not per channel


def run_prim_func(func, target, out: tuple, *arrays) -> np.ndarray:
    """Compile ``func`` for ``target`` and run it here on ``arrays``, into an ``out`` =
    ``(shape, dtype)`` tensor."""
    lib = tvm.compile(schedules.schedule(func, target).mod, target=target)
    result = tvm.runtime.empty(*out)
    lib[str(func.attrs["global_symbol"])](*(tvm.runtime.tensor(a) for a in arrays), result)
    return result.numpy()


@pytest.mark.parametrize("target", [AVX2, "host"], ids=["avx2", "host"])
@pytest.mark.parametrize("scheme,params", [
    ("ternary", {}), ("fatnn", {}),                                                   # fatnn: pads with t = -1
    ("bitserial", dict(abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar")),  # validity
    ("bitserial", dict(abits=2, wbits=2)),
    ("int8", dict(activation_encoding="signed")),                                     # bytes: pads with the offset
], ids=["ternary", "fatnn", "w1a1", "w2a2", "int8-signed"])
@pytest.mark.parametrize("channels,padding,direct", [(48, 1, True), (64, 0, True), (48, 2, False)],
                         ids=["c48-p1", "c64-p0", "c48-counted-levels"])
@pytest.mark.parametrize("float_block", [False, True], ids=["kernel-block", "float-block"])
def test_quantize_stage_reading_blocked_input_writes_the_same_planes(target, scheme, params, channels, padding,
                                                                    direct, float_block, rng):
    """From a channel-blocked float input, the quantize+pack stage (compares, movemask per
    vector of channels) writes the planes the NCHW stage writes: padding in the value
    domain, the validity plane, zero word tails (48 channels: half a 32-bit word); with the
    popcount kernels' block and with the float kernel's (8 lanes on AVX2's 64-bit words).
    The int8 scheme's stage writes the same channels-last bytes (on an AMX host, 48
    channels padded to 64)."""
    target = tvm_ternary.resolve_target(target)
    spec = make_spec("conv2d", scheme, (2, channels, 5, 7), (8, channels, 3, 3), 1, padding, target, **params)
    b = schedules.isa_of(target).int32_lanes if float_block else spec.block
    lo, step, count = quantizer_levels(spec.scheme.activation)
    thresholds = np.sort(rng.standard_normal(count)).astype(np.float32)
    if not direct:                       # thresholds not known to ascend: the levels are counted, then packed
        thresholds = thresholds[::-1].copy()
    x = rng.standard_normal(spec.data_shape).astype(np.float32)
    x[0, :, 0, 0] = thresholds[0]        # exactly on a threshold: >= holds
    out = spec.kernel_input_shape()
    nchw = run_prim_func(spec.quantize_data_prim_func(lo, step, count, direct), target, out, x, thresholds)
    blocked = run_prim_func(spec.quantize_data_prim_func(lo, step, count, direct, input_block=b), target, out,
                            to_blocked(x, b), thresholds)
    np.testing.assert_array_equal(blocked, nchw)


@pytest.mark.parametrize("scheme,params", [("fatnn", {}), ("fgq", dict(group_size=4, abits=4))])
def test_kernels_write_the_blocked_layout(scheme, params, rng):
    """An affine conv2d kernel with a blocked output writes its NCHW result, channel-blocked,
    bit for bit (the epilogue then runs as vector code)."""
    target = tvm_ternary.resolve_target(AVX2)
    request = ("conv2d", scheme, (1, 24, 9, 10), (16, 24, 3, 3), 2, 1, target, "affine_relu")
    nchw = CompiledOperator(make_spec(*request, **params), target)
    blocked = CompiledOperator(make_spec(*request, blocked_output=True, **params), target)
    s = nchw.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scales = rng.standard_normal(s.scales_shape).astype(np.float32) if scheme == "fgq" else None
    scale, bias = rng.random(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    want = nchw(x, w, scales=scales, scale=scale, bias=bias)
    got = blocked(x, w, scales=scales, scale=scale, bias=bias)
    assert got.shape == (1, 16 // s.block, *want.shape[2:], s.block)
    np.testing.assert_array_equal(got, to_blocked(want, s.block))


def test_a_blocked_output_needs_whole_blocks():
    target = tvm_ternary.resolve_target(AVX2)
    with pytest.raises(ValueError, match=r"conv2d\[ternary\]: a blocked output needs conv2d with an affine epilogue "
                                         r"and output channels a multiple of the block 4"):
        make_spec("conv2d", "ternary", (1, 8, 5, 5), (6, 8, 3, 3), 1, 1, target, "affine", blocked_output=True)


def rewritten(scheme: str | None, first_last: str, width: int = 64, target=AVX2):
    """A random ResNet-18 of ``width`` (32x32), quantized with ``scheme`` (None: float), rewritten for ``target``."""
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(num_classes=10, width=width)).eval()
    x = torch.randn(1, 3, 32, 32)
    q = model if scheme is None else tvm_ternary.quantize(model, scheme, x, first_last=first_last)
    return rewrite_quantized(tvm_ternary.from_torch(q, x), tvm_ternary.resolve_target(target))


def test_models_that_read_nothing_blocked_stay_nchw():
    """Only a data stage that reads blocked input makes blocking worth it: a float model gets
    no conversions at all."""
    assert calls(rewritten(None, "same", target="host"))["relax.layout_transform"] == 0


@pytest.mark.parametrize("target", [AVX2, "host"], ids=["avx2", "host"])
def test_fgq_models_run_blocked(target):
    """A model's FGQ layers (the int8 kernel) write the blocked layout and their data stages
    read it: the one conversion is before the classifier's pooling; the residual adds and
    ReLUs run in kernel epilogues."""
    counted = calls(rewritten("fgq_w2a4", "same", target=target))
    assert counted["relax.layout_transform"] == 1
    assert counted["relax.add"] == 0 and counted["relax.nn.relu"] == 0


@pytest.mark.parametrize("first_last,transforms", [("same", 1), ("float", 3)], ids=["all-quantized", "float-stem"])
def test_resnet18_float_glue_runs_blocked(first_last, transforms):
    """In a built ResNet-18 the max pool runs on blocked tensors between kernels that write
    them, and the residual adds and ReLUs in the kernels' epilogues; the only conversion of
    the all-quantized model is the one before the classifier's pooling. With the float stem
    (AVX2: float block 8, popcount block 4), the stem's BatchNorm and ReLU run in its
    kernel, and the first residual add converts the pooled stem output to the popcount
    block (two transforms)."""
    mod = rewritten("ternary", first_last)
    counted = calls(mod)
    assert counted["relax.layout_transform"] == transforms
    # the stem's BatchNorm and ReLU, and each residual add with its ReLU, run in kernel epilogues
    assert counted["relax.nn.batch_norm"] == 0 and counted["relax.nn.relu"] == 0
    assert counted["relax.add"] == int(first_last == "float")                              # the float classifier's bias
    pools = [b.value for block in mod["main"].body.blocks for b in block.bindings
             if isinstance(b.value, tvm.relax.Call) and getattr(b.value.op, "name", "") == "relax.nn.max_pool2d"]
    assert [str(p.attrs.layout) for p in pools] == ["NCHW8c" if first_last == "float" else "NCHW4c"]
