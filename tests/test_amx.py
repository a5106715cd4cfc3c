"""The AMX int8 conv2d kernel (:mod:`tvm_ternary.operators.amx`): exact against numpy on
awkward shapes, bit-identical to the VNNI kernel in the float epilogues, the layers it
serves and those it leaves to VNNI, its instructions, and the host's AMX features.

Running needs a CPU with AMX (Sapphire Rapids and later Xeons); elsewhere the running
tests skip with that reason and the compile-only ones still check the asm and the choices."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import tvm_ternary
from tvm_ternary import targets
from tvm_ternary.api import CompiledOperator, make_spec
from tvm_ternary.operators.amx import amx_fits

from .asm import count
from .conftest import AVX512

AMX = {"kind": "llvm", "mcpu": "sapphirerapids"}
VNNI = {"kind": "llvm", "mcpu": "icelake-server"}
"""The same ISA as :data:`AMX` without tiles: the VNNI kernel to compare with."""

NO_AMX = targets.host_cannot_run(targets.resolve_target(AMX))
needs_amx = pytest.mark.skipif(NO_AMX is not None, reason=f"this CPU cannot run AMX code: {NO_AMX}")


def amx_op(data_shape, weight_shape, padding=0, dilation=1, epilogue="int32", target=AMX, blocked=False,
           stride=1, **params) -> CompiledOperator:
    t = targets.resolve_target(target)
    spec = make_spec("conv2d", "int8", data_shape, weight_shape, stride, padding, t, epilogue, dilation=dilation,
                     blocked_output=blocked, **params)
    return CompiledOperator(spec, t)


SHAPES = [  # data (N, C, H, W), weight (K, C, KH, KW), stride, padding, dilation
    ((2, 100, 9, 11), (32, 100, 3, 3), 1, 1, 1),        # batch 2, C=100 (padded to 128), odd H/W
    ((1, 16, 16, 16), (64, 16, 7, 7), 1, 3, 1),         # 7x7, the fewest channels AMX takes
    ((1, 32, 12, 10), (64, 32, 3, 3), 1, 2, 2),         # dilation 2
    ((1, 64, 4, 8), (32, 64, 1, 1), 1, 0, 1),           # 1x1 over exactly one task's 32 positions
    ((1, 64, 3, 11), (32, 64, 1, 1), 1, 0, 1),          # 33 positions: the last task overlaps the first
    ((1, 64, 5, 5), (64, 64, 3, 3), 1, 1, 1),           # 33 positions with junk columns
    ((2, 48, 15, 13), (32, 48, 3, 3), 2, 1, 1),         # stride 2, odd sizes: phases of unequal size
    ((1, 64, 16, 15), (64, 64, 1, 1), 2, 0, 1),         # a ResNet downsample: one phase read
    ((1, 32, 17, 19), (32, 32, 7, 7), 2, 3, 1),         # 7x7 stride 2 (a stem with many channels)
    ((1, 32, 21, 14), (32, 32, 3, 3), (3, 2), 2, 2),    # strides 3 and 2, dilation 2
]
SHAPE_IDS = ["n2-c100", "c16-7x7", "dilated", "1x1-one-task", "1x1-overlap", "5x5", "s2-odd", "1x1-s2", "7x7-s2",
             "s3x2-dilated"]


@needs_amx
@pytest.mark.parametrize("data_shape,weight_shape,stride,padding,dilation", SHAPES, ids=SHAPE_IDS)
def test_exact_on_awkward_shapes(data_shape, weight_shape, stride, padding, dilation, rng):
    f = amx_op(data_shape, weight_shape, padding, dilation, stride=stride)
    assert f.spec.amx
    s = f.spec
    x, w = s.scheme.activation.sample(rng, data_shape), s.scheme.weight.sample(rng, weight_shape)
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))


@needs_amx
def test_signed_activations_with_extreme_values(rng):
    """Signed activations are stored with an offset (padding is not byte 0) and corrected
    per channel; every activation and weight at an extreme."""
    f = amx_op((1, 64, 7, 7), (32, 64, 3, 3), 1, activation_encoding="signed")
    assert f.spec.amx
    x = rng.choice([-64, 63], f.spec.data_shape)
    w = rng.choice([-128, 127], f.spec.weight_shape)
    np.testing.assert_array_equal(f(x, w), f.reference(x, w))


@needs_amx
@pytest.mark.parametrize("epilogue,blocked", [("affine", False), ("affine_relu", False), ("affine_relu", True)],
                         ids=["affine", "relu", "relu-blocked"])
def test_float_epilogues_equal_the_vnni_kernel_bit_for_bit(epilogue, blocked, rng):
    """A model's logits stay bit-identical to PyTorch's only if AMX and VNNI layers round alike."""
    shapes = ((2, 64, 6, 7), (64, 64, 3, 3))
    amx, vnni = (amx_op(*shapes, 1, epilogue=epilogue, target=t, blocked=blocked) for t in (AMX, VNNI))
    assert amx.spec.amx and not vnni.spec.amx
    s = amx.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scale, bias = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    got = amx(x, w, scale=scale, bias=bias)
    assert got.shape == s.kernel_output()[0]
    np.testing.assert_array_equal(got, vnni(x, w, scale=scale, bias=bias))
    want = amx.reference(x, w, scale=scale, bias=bias)
    if blocked:
        want = want.reshape(2, 4, 16, 6, 7).transpose(0, 1, 3, 4, 2)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    if epilogue == "affine_relu":
        assert (got == 0).any() and (got >= 0).all()


@pytest.mark.parametrize("data_shape,weight_shape,stride,target,scheme,why", [
    ((1, 8, 8, 8), (64, 8, 3, 3), 1, AMX, "int8", "input channels"),
    ((1, 64, 8, 8), (48, 64, 3, 3), 1, AMX, "int8", "output channels"),
    ((1, 64, 4, 4), (64, 64, 3, 3), 1, AMX, "int8", "too small"),
    ((1, 64, 8, 8), (64, 64, 3, 3), 1, AMX, "fgq", None),            # the float-scale kernel
    ((1, 64, 8, 8), (64, 64, 3, 3), 1, AVX512, "int8", None),        # Zen 4: no AMX
], ids=["c8", "k48", "4x4", "fgq-float-scales", "zen4"])
def test_layers_the_amx_kernel_leaves_to_vnni(data_shape, weight_shape, stride, target, scheme, why):
    params = {"group_size": 4} if scheme == "fgq" else {}
    spec = make_spec("conv2d", scheme, data_shape, weight_shape, stride, 1, targets.resolve_target(target), **params)
    assert not spec.amx
    if why is not None:
        assert why in amx_fits(weight_shape, spec.stride, spec.out_shape[2:], data_shape[3] + 2)
    asm = tvm_ternary.op("conv2d", scheme, data_shape, weight_shape, stride, 1, target=target, **params).kernel_asm()
    assert count(asm, "tdpbusd") == 0 and count(asm, "vpdpbusd") > 0


def test_kernel_runs_on_tiles():
    """Compile only: tile configuration, tile loads, ``tdpbusd`` on four C tiles, their stores; no VNNI."""
    f = amx_op((1, 64, 14, 14), (64, 64, 3, 3), 1, epilogue="affine_relu")
    asm = f.kernel_asm()
    assert count(asm, "ldtilecfg") >= 1 and count(asm, "tileloadd") >= 4
    dots = count(asm, "tdpbusd")             # LLVM may unroll the taps: four per tap and chunk
    assert dots >= 4 and dots % 4 == 0 and count(asm, "tilestored") == 4
    assert count(asm, "vpdpbusd") == 0


def test_tuning_refuses_a_kernel_without_knobs(tmp_path):
    with pytest.raises(ValueError, match=r"tune conv2d\[int8\(a7u\)\]: on .* the kernel is the AMX one, written as "
                                         r"TIR without knobs"):
        tvm_ternary.tune("conv2d", "int8", (1, 64, 8, 8), (64, 64, 3, 3), 1, 1, target=AMX, trials=2,
                         work_dir=tmp_path)


def test_host_target_has_the_features_llvm_detects_here():
    """``Target.from_device`` keeps only the CPU name (a virtualized Sapphire Rapids reads as
    Rocket Lake, without AMX); "host" adds every instruction set feature LLVM detects here."""
    detected = targets._host_cpu_features()
    host = set(targets.codegen.llvm_get_cpu_features(targets.resolve_target("host")))
    isa = {f for f in detected if targets._ISA_FEATURE.match(f)}
    assert isa and isa <= host
    assert tvm_ternary.schedules.has_amx(targets.resolve_target("host")) == ({"amx-tile", "amx-int8"} <= detected)


@needs_amx
def test_phased_data_stage_reads_blocked_input_as_nchw(rng):
    """A model's stride-2 AMX layer quantizes its channel-blocked float input into the same
    phase-split bytes as from NCHW."""
    from tvm_ternary.operators.compute import uniform_thresholds
    from .test_layout import run_prim_func, to_blocked
    target = targets.resolve_target(AMX)
    spec = make_spec("conv2d", "int8", (1, 32, 13, 11), (32, 32, 3, 3), 2, 1, target, abits=8, wbits=4)
    assert spec.amx
    thresholds = ((0.5 + np.arange(255, dtype=np.float32)) * np.float32(0.04)).astype(np.float32)
    uniform = uniform_thresholds(thresholds)
    x = (rng.standard_normal(spec.data_shape) * 4).astype(np.float32)
    out = spec.kernel_input_shape()
    nchw = run_prim_func(spec.quantize_data_prim_func(0.0, 1.0, 255, True, 0, uniform), target, out, x, thresholds)
    blocked = run_prim_func(spec.quantize_data_prim_func(0.0, 1.0, 255, True, 16, uniform), target, out,
                            to_blocked(x, 16), thresholds)
    np.testing.assert_array_equal(blocked, nchw)
    assert len(np.unique(nchw)) > 100              # the levels span the 8-bit range


@needs_amx
@pytest.mark.parametrize("scheme", ["fgq_w2a8", "fgq_w2a4"])
def test_fgq_resnet18_on_amx_equals_pytorch(scheme, monkeypatch):
    """At 64x64 the layers of the first two stages run on AMX, the second's stride-2 conv and
    downsample included (the stem has 3 channels, the later stages' outputs are too small:
    VNNI); the logits equal the PyTorch quantized model's."""
    import torch
    import tvm
    from tvm import relax
    from tvm_ternary.models import ResNet18, randomize_batchnorm
    torch.manual_seed(0)
    model = randomize_batchnorm(ResNet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    q = tvm_ternary.quantize(model, scheme, x)
    mod = tvm_ternary.from_torch(q, x)
    specs = []
    make = tvm_ternary.rewrite.make_spec
    monkeypatch.setattr(tvm_ternary.rewrite, "make_spec", lambda *a, **k: specs.append(make(*a, **k)) or specs[-1])
    ex = tvm_ternary.build(mod, AMX)
    on_amx = [(s.stride, s.weight_shape[2:]) for s in specs if s.amx and s.epilogue != "int32"]   # kernels built
    assert on_amx.count(((1, 1), (3, 3))) >= 7 and ((2, 2), (3, 3)) in on_amx and ((2, 2), (1, 1)) in on_amx
    # each block's first conv writes the second's bytes, on AMX in the first two stages
    handing_over = [s for s in specs if s.requantizer is not None]
    assert len(handing_over) == 8 and sum(s.amx for s in handing_over) >= 3
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    with torch.no_grad():
        want = q(x).numpy()
    np.testing.assert_array_equal(got, want)


@needs_amx
@pytest.mark.parametrize("epilogue,blocked,stride,params", [
    ("affine_add_relu", False, 1, {}),
    ("affine_add_relu", True, 2, dict(activation_encoding="signed")),
    ("affine_add", True, 2, {}),
], ids=["add-relu-nchw", "add-relu-blocked-s2-signed", "add-blocked-s2"])
def test_residual_epilogues_equal_the_vnni_kernel_bit_for_bit(epilogue, blocked, stride, params, rng):
    """The residual epilogues a model fuses (``op`` does not offer them): the AMX kernel adds
    the residual tensor, in its output layout, exactly as the VNNI kernel does."""
    shapes = ((2, 48, 9, 11), (32, 48, 3, 3))
    amx, vnni = (amx_op(*shapes, 1, epilogue=epilogue, target=t, blocked=blocked, stride=stride, **params)
                 for t in (AMX, VNNI))
    assert amx.spec.amx and not vnni.spec.amx
    s = amx.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scale, bias = rng.standard_normal(32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    residual = rng.standard_normal(s.kernel_output()[0]).astype(np.float32) * 1000
    outputs = []
    for f in (amx, vnni):
        args = f.prepare(x, w, scale=scale, bias=bias)
        args.insert(-1, tvm.runtime.tensor(residual))
        f.run(args)
        outputs.append(args[-1].numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    y = s.reference(x, w).astype(np.float64) * scale[:, None, None] + bias[:, None, None]     # NCHW
    if blocked:
        y = y.reshape(2, 2, 16, *y.shape[2:]).transpose(0, 1, 3, 4, 2)
    want = y + residual
    if epilogue.endswith("_relu"):
        want = np.maximum(want, 0)
        assert (outputs[0] == 0).any()
    np.testing.assert_allclose(outputs[0], want, rtol=1e-5, atol=1e-2)


SIGNED = dict(activation_encoding="signed", abits=8, wbits=4)
REQUANTIZE_CASES = [  # data, weight, stride, padding, next layer (stride, padding, K), epilogue, params, next on AMX
    ((1, 64, 14, 14), (32, 64, 3, 3), 1, 1, (2, 1, 64), "affine_relu_requantize", dict(abits=8, wbits=4), True),
    ((2, 48, 15, 13), (32, 48, 3, 3), 2, 1, (1, 1, 32), "affine_relu_requantize", SIGNED, True),
    ((1, 64, 13, 13), (32, 64, 3, 3), 1, 1, (2, 1, 64), "affine_requantize", SIGNED, True),
    ((1, 32, 12, 10), (64, 32, 3, 3), 2, 1, (2, 0, 32), "affine_relu_requantize", dict(abits=4, wbits=4), False),
]
REQUANTIZE_IDS = ["next-s2-phases-c32of64", "n2-signed-relu-next-s1", "signed-odd-next-s2-grid-past-image",
                  "next-vnni-a4"]


@needs_amx
@pytest.mark.parametrize("data_shape,weight_shape,stride,padding,next_layer,epilogue,params,next_amx",
                         REQUANTIZE_CASES, ids=REQUANTIZE_IDS)
def test_requantize_epilogue_writes_the_next_layers_bytes(data_shape, weight_shape, stride, padding, next_layer,
                                                          epilogue, params, next_amx, rng):
    """The AMX kernel's byte requantize epilogue stores each pixel at its place in the next
    layer's layout, which it also pads: phase-split for a stride-2 AMX layer, with input
    channels padded to 64 (32 outputs: the rest zero), the phase grid reaching past an odd
    padded image (15 -> 2 x 8); plain for a stride-1 one; quads for a VNNI one. Signed levels
    (padding byte 128) with and without ReLU. Every byte written (the output starts as junk),
    exact against numpy, and, where the next layer reads the same layout from both (a VNNI
    next layer), bit-identical to the VNNI kernel."""
    from .test_api import byte_requantize_op, spread_affine
    f, nxt = byte_requantize_op(AMX, data_shape, weight_shape, stride, padding, next_layer, epilogue, params)
    vnni, _ = byte_requantize_op(VNNI, data_shape, weight_shape, stride, padding, next_layer, epilogue, params)
    s = f.spec
    assert s.amx and not vnni.spec.amx and nxt.amx == next_amx
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scale, bias = spread_affine(f, x, w, rng)
    args = f.prepare(x, w, scale=scale, bias=bias)
    args[-1].copyfrom(np.full(args[-1].shape, 0xA5, np.uint8))    # the kernel must write every byte
    f.run(args)
    out = args[-1].numpy()
    assert (out.shape, str(out.dtype)) == nxt.kernel_input_shape()
    np.testing.assert_array_equal(out, f.reference(x, w, scale=scale, bias=bias))
    if vnni.spec.requantizer == s.requantizer:        # the same next layer's layout
        np.testing.assert_array_equal(vnni(x, w, scale=scale, bias=bias), out)


@needs_amx
def test_requantize_epilogue_equals_the_float_path(rng):
    """What the epilogue replaces in a model: the blocked float output of the affine epilogue,
    then the next layer's quantize stage reading it (phase-split). Same bytes, signed levels
    with ReLU."""
    from .test_api import byte_requantize_op, check_equals_float_path
    data_shape, weight_shape, stride, padding, next_layer, _, params, _ = REQUANTIZE_CASES[2]
    f, nxt = byte_requantize_op(AMX, data_shape, weight_shape, stride, padding, next_layer, "affine_relu_requantize",
                                params)
    assert f.spec.amx and nxt.amx
    check_equals_float_path(f, nxt, rng)
