"""tvm_ternary.op: every scheme x conv2d/dense, exact against numpy on awkward shapes,
and clear errors on bad input."""

import os
import re

import numpy as np
import pytest
import tvm

import torch
import tvm_ternary
from tvm_ternary import reference, schedules
from tvm_ternary.schemes import MAX_CODE_REDUCTION
from tvm_ternary.api import make_spec
from tvm_ternary.targets import host_cannot_run, resolve_target, target_arch

from .asm import count
from .conftest import AVX2, AVX512, RASP4, host_isa

TARGETS = [pytest.param(AVX2, id="avx2"), pytest.param(AVX512, id="avx512"), pytest.param(RASP4, id="rasp4")]
X86_INSTRUCTIONS = {
    "avx2": {"popcount": [("vpshufb",), ("vpsadbw",)], "bytes": [("vpmaddubsw",), ("vpmaddwd",)],
             "codes": [("vpmaddubsw",), ("vpmaddwd",), ("vpsrlw",)], "requantize": [("vmovmskps",)]},
    "avx512": {"popcount": [("vpopcntd", "vpopcntq")], "bytes": [("vpdpbusd",)], "codes": [("vpdpbusd",), ("vpsrlw",)],
               "requantize": [("kmovw", "kmovd")]},
}
"""Per x86 ISA, the instructions a kernel must use: the vector popcount, or the byte dot
product of fgq and int8 (the AVX512 target is Zen 4, which has VNNI), ternary_int8's byte dot product on
2-bit codes widened by shifts, and the requantize epilogue's movemask
(on AVX-512 compares into k registers read by ``kmovw``, or ``kmovd`` where LLVM joins two
16-bit masks first). Each tuple lists alternatives, one of which must occur."""
RELU = ("vmaxss", "vmaxps")
"""The affine_relu epilogue's float max (scalar or vector)."""

SCHEMES = [
    ("ternary", {}),
    ("fatnn", {}),
    ("bitserial", dict(abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar")),  # BNN
    ("bitserial", dict(abits=2, wbits=2)),                                                           # W2A2
    ("bitserial", dict(abits=3, wbits=1, weight_encoding="bipolar")),
    ("bitserial", dict(abits=2, wbits=3, activation_encoding="bipolar")),
    ("bitserial", dict(abits=8, wbits=8, activation_encoding="bipolar", weight_encoding="bipolar")),
    ("bitserial", dict(abits=1, wbits=8)),
    ("fgq", dict(group_size=4, abits=4)),
    ("fgq", dict(group_size=64, abits=8)),
    ("int8", dict(activation_encoding="signed")),   # stored with an offset: padding is not byte 0
]
SCHEME_IDS = ["ternary", "fatnn", "w1a1bb", "w2a2uu", "a3u-w1b", "a2b-w3u", "a8b-w8b", "a1u-w8u",
              "fgq-g4a4", "fgq-g64a8", "int8-signed"]

CONV_SHAPES = [  # data (N, C, H, W), weight (K, C, KH, KW), stride, padding
    ((1, 3, 11, 13), (5, 3, 7, 7), 2, 3),      # stem-like: C=3, 7x7, stride 2, pad 3, odd H/W
    ((2, 33, 9, 7), (7, 33, 3, 3), 1, 1),      # batch 2, C=33 (one bit into a second word)
    ((1, 64, 6, 6), (12, 64, 1, 1), 1, 0),     # 1x1, C=64 (two whole words), K=12
    ((2, 130, 7, 5), (9, 130, 3, 3), 2, 0),    # C=130, stride 2, no padding
    ((1, 33, 3, 5), (3, 33, 3, 3), 1, 3),      # padding 3 > kernel reach: outputs of padding only
]
CONV_IDS = ["c3-7x7-s2-p3", "n2-c33-3x3", "c64-1x1", "c130-s2-p0", "c33-p3"]

DENSE_SHAPES = [((1, 3), (5, 3)), ((2, 33), (9, 33)), ((3, 130), (7, 130)), ((1, 64), (8, 64))]


def kernel_instructions(f: tvm_ternary.CompiledOperator) -> list[tuple[str, ...]]:
    """What ``f``'s x86 kernel must use (:data:`X86_INSTRUCTIONS`, :data:`RELU`), for its
    target's ISA, scheme and epilogue; each tuple lists alternatives."""
    table = X86_INSTRUCTIONS[schedules.isa_of(f.target).name]
    needed = list(table[{"fgq": "bytes", "int8": "bytes", "ternary_int8": "codes"}.get(f.spec.scheme.name, "popcount")])
    if f.spec.epilogue == "requantize":
        needed += table["requantize"]
    if f.spec.epilogue == "affine_relu":
        needed.append(RELU)
    return needed


def check_kernel_asm(f: tvm_ternary.CompiledOperator) -> str:
    """Assert that ``f``'s kernel assembly has every instruction of :func:`kernel_instructions`;
    return them, for the test report."""
    asm = f.kernel_asm()
    names = ["/".join(alternatives) for alternatives in kernel_instructions(f)]
    missing = [name for name in names if not any(count(asm, m) for m in name.split("/"))]
    assert not missing, f"{f!r}: no {', '.join(missing)} in the kernel assembly"
    return ", ".join(names)


def built_for_this_cpu(f: tvm_ternary.CompiledOperator) -> tvm_ternary.CompiledOperator | None:
    """``f``'s operator built for this CPU (``"host"``) if this CPU has the target's vector ISA
    and the schedules there are ``f``'s, TIR for TIR, else None: an AVX-512 kernel then runs
    on a CPU that has AVX-512 VPOPCNTDQ but not all of the target's features (znver4 has
    sse4a and avx512bf16, an Ice Lake has neither); only LLVM's instruction selection differs."""
    host = resolve_target("host")
    if schedules.isa_of(host).name != schedules.isa_of(f.target).name:
        return None
    for func in (f.spec.data_prim_func(), f.spec.kernel_prim_func()):
        if schedules.schedule(func, host).mod.script() != schedules.schedule(func, f.target).mod.script():
            return None
    return tvm_ternary.CompiledOperator(f.spec, host)


def runnable(f: tvm_ternary.CompiledOperator, request: pytest.FixtureRequest) -> tvm_ternary.CompiledOperator:
    """What runs ``f``'s case: ``f`` on the emulated Pi 4 for aarch64 targets; for x86 targets,
    after checking the kernel's assembly (:func:`check_kernel_asm`, on every host), ``f`` if
    this host can run it, else :func:`built_for_this_cpu`. Where none can (AVX-512 on an
    AVX2-only host), the test is skipped with the reason, after the assembly check."""
    if target_arch(f.target) == "aarch64":
        return tvm_ternary.CompiledOperator(f.spec, f.target, remote=request.getfixturevalue("board").address)
    checked = check_kernel_asm(f)
    reason = host_cannot_run(f.target)
    if reason is None:
        return f
    same_schedule = built_for_this_cpu(f)
    if same_schedule is None:
        pytest.skip(f"assembly checked ({checked}), not run: {reason}")
    return same_schedule


def run_and_check(f, rng):
    """Random values from the scheme's sets; exact (integer) or FGQ-tolerance equality."""
    s = f.spec
    x = s.scheme.activation.sample(rng, s.data_shape)
    w = s.scheme.weight.sample(rng, s.weight_shape)
    if s.scheme.name != "fgq":
        out = f(x, w)
        assert out.dtype == np.int32 and out.shape == s.out_shape
        np.testing.assert_array_equal(out, f.reference(x, w))
        return
    scales = rng.standard_normal(s.scales_shape).astype(np.float32)
    out = f(x, w, scales=scales)
    assert out.dtype == np.float32 and out.shape == s.out_shape
    # float32 accumulation of the scaled terms: error within 1e-5 of the sum of |terms|
    magnitude = f.reference(x, np.abs(w), np.abs(scales))
    assert np.all(np.abs(out - f.reference(x, w, scales)) <= 1e-5 * magnitude + 1e-6)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme,params", SCHEMES, ids=SCHEME_IDS)
@pytest.mark.parametrize("data_shape,weight_shape,stride,padding", CONV_SHAPES, ids=CONV_IDS)
def test_conv2d_exact(scheme, params, data_shape, weight_shape, stride, padding, target, rng, request):
    f = tvm_ternary.op("conv2d", scheme, data_shape, weight_shape, stride=stride, padding=padding,
                       target=target, **params)
    run_and_check(runnable(f, request), rng)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme,params", SCHEMES, ids=SCHEME_IDS)
@pytest.mark.parametrize("data_shape,weight_shape", DENSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_exact(scheme, params, data_shape, weight_shape, target, rng, request):
    run_and_check(runnable(tvm_ternary.op("dense", scheme, data_shape, weight_shape, target=target, **params),
                           request), rng)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("abits,wbits", [(8, 4), (8, 7), (7, 8)], ids=["a8w4-fgq", "a8w7", "a7w8"])
def test_int8_bit_splits_are_exact_at_the_extremes(abits, wbits, target, rng, request):
    """The int8 kernel with ``abits + wbits = 15`` at most (FGQ layers of models run as a8w4):
    every activation at its largest value and weights at both ends of their range, so each
    pair of products sums to the most AVX2's int16 ``vpmaddubsw`` must hold (a7w8: 2 x 127
    x -128; a8w7: 2 x 255 x -64), plus random values; C=33 leaves a partial quad."""
    f = runnable(tvm_ternary.op("conv2d", "int8", (2, 33, 5, 6), (9, 33, 3, 3), padding=1, target=target,
                                abits=abits, wbits=wbits), request)
    lo, hi = f.spec.scheme.weight.value_range
    x = np.full(f.spec.data_shape, f.spec.scheme.activation.value_range[1], np.int32)
    for w in (np.full(f.spec.weight_shape, lo, np.int32), np.full(f.spec.weight_shape, hi, np.int32),
              f.spec.scheme.weight.sample(rng, f.spec.weight_shape)):
        np.testing.assert_array_equal(f(x, w), f.reference(x, w))
    run_and_check(f, rng)


@pytest.mark.parametrize("target,scheme,params,epilogue,asm_of,missing", [
    (AVX512, "ternary", {}, "int32", dict(target=AVX2), "vpopcntd/vpopcntq"),
    (AVX512, "fgq", dict(group_size=4, abits=4), "int32", dict(target=AVX2), "vpdpbusd"),
    (AVX512, "ternary", {}, "requantize", dict(epilogue="int32"), "kmovw/kmovd"),
    (AVX512, "fatnn", {}, "affine_relu", dict(epilogue="affine"), "vmaxss/vmaxps"),
    (AVX2, "fgq", dict(group_size=4, abits=4), "int32", dict(target=AVX512), "vpmaddubsw, vpmaddwd"),
    (AVX512, "int8", {}, "int32", dict(target=AVX2), "vpdpbusd"),
    (AVX2, "ternary_int8", {}, "int32", dict(scheme="int8"), "vpsrlw"),
], ids=["avx512-popcount", "avx512-vnni", "avx512-movemask", "relu", "avx2-fgq", "avx512-int8", "avx2-codes"])
def test_assembly_check_fails_without_the_kernel_instructions(target, scheme, params, epilogue, asm_of, missing,
                                                              monkeypatch):
    """The check that stands in for a run where the host cannot run a kernel can fail: given
    the assembly of a kernel built otherwise, it names the instructions missing."""
    op = "dense" if scheme == "ternary_int8" else "conv2d"
    shapes = dict(data_shape=(2, 33), weight_shape=(20, 33)) if op == "dense" else \
        dict(data_shape=(2, 33, 7, 9), weight_shape=(20, 33, 3, 3), padding=1)
    args = dict(scheme=scheme, target=target, epilogue=epilogue, **shapes, **params)
    f = tvm_ternary.op(op, **args)
    monkeypatch.setattr(f, "kernel_asm", tvm_ternary.op(op, **{**args, **asm_of}).kernel_asm)
    with pytest.raises(AssertionError, match=rf"no {re.escape(missing)} in the kernel assembly"):
        check_kernel_asm(f)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme,params", [SCHEMES[0], SCHEMES[1], SCHEMES[2], SCHEMES[5]],
                         ids=["ternary", "fatnn", "w1a1bb", "a2b-w3u"])
@pytest.mark.parametrize("data_shape,weight_shape,stride,padding", [
    ((2, 1, 9, 8), (4, 1, 5, 3), 1, (2, 1)),     # C=1, 5x3
    ((1, 5, 7, 9), (6, 5, 3, 3), 2, 1),          # C=5, stride 2
    ((1, 3, 4, 5), (3, 3, 3, 3), 1, 3),          # padding beyond the kernel's reach
], ids=["c1-5x3", "c5-s2", "c3-p3"])
def test_small_channel_conv2d_packs_whole_patches_exactly(scheme, params, data_shape, weight_shape, stride, padding,
                                                          target, rng, request):
    """Few input channels: the whole C x KH x KW reduction is packed (the patch layout), in
    fewer words than one per tap, and the result is exact."""
    f = tvm_ternary.op("conv2d", scheme, data_shape, weight_shape, stride=stride, padding=padding, target=target,
                       **params)
    taps = weight_shape[2] * weight_shape[3]
    assert f.spec.patch_taps > 1 and f.spec.kernel_input_shape()[0][-1] == -(-taps // f.spec.patch_taps) < taps
    run_and_check(runnable(f, request), rng)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme,params", [SCHEMES[1], SCHEMES[2], SCHEMES[8], ("int8", {})],
                         ids=["fatnn", "w1a1bb", "fgq-g4a4", "int8-unsigned"])
@pytest.mark.parametrize("data_shape,weight_shape,stride,padding,dilation", [
    ((1, 40, 11, 13), (5, 40, 3, 3), 1, 2, 2),           # dilation 2, "same" padding
    ((2, 3, 12, 9), (4, 3, 3, 3), 2, 3, (3, 2)),         # patch layout, stride 2, per-axis dilation
    ((1, 5, 4, 6), (3, 5, 3, 3), 1, 3, 3),               # dilated taps reaching past the borders
], ids=["c40-d2", "c3-s2-d3x2", "c5-d3-p3"])
def test_dilated_conv2d_exact(scheme, params, data_shape, weight_shape, stride, padding, dilation, target, rng,
                              request):
    f = tvm_ternary.op("conv2d", scheme, data_shape, weight_shape, stride=stride, padding=padding,
                       dilation=dilation, target=target, **params)
    assert f.spec.dilation == ((dilation,) * 2 if isinstance(dilation, int) else dilation)
    run_and_check(runnable(f, request), rng)


def test_neon_reduction_too_long_for_16_bit_accumulators_uses_32_bit_words(rng, request):
    f = tvm_ternary.op("dense", "ternary", (1, 70000), (6, 70000), target=RASP4)
    assert f.spec.word_bits == 32 and f.spec.block == 4           # 4375 16-bit words would overflow uint16
    run_and_check(runnable(f, request), rng)


@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_thread_count(threads, rng):
    set_threads = tvm.get_global_func("runtime.config_threadpool")
    f = tvm_ternary.op("conv2d", "ternary", (2, 70, 9, 14), (40, 70, 3, 3), padding=1, target=AVX2)
    try:
        set_threads(1, threads)
        assert tvm.get_global_func("runtime.NumThreads")() == min(threads, len(os.sched_getaffinity(0)))
        run_and_check(f, rng)
    finally:
        set_threads(1, 0)          # back to TVM's default (all cores)


def test_fatnn_all_zero_activations_with_padding(rng):
    """The padding trap: x = 0 everywhere is t = -1 everywhere, padded taps included."""
    f = tvm_ternary.op("conv2d", "fatnn", (1, 40, 5, 5), (4, 40, 3, 3), padding=1, target=AVX2)
    x = np.zeros((1, 40, 5, 5), np.int32)
    w = f.spec.scheme.weight.sample(rng, (4, 40, 3, 3))
    np.testing.assert_array_equal(f(x, w), np.zeros((1, 4, 5, 5)))


def test_bnn_padding_contributes_zero(rng):
    """Bipolar values have no zero pattern; padded taps must still add nothing."""
    f = tvm_ternary.op("conv2d", "bitserial", (1, 5, 4, 4), (2, 5, 3, 3), padding=1, target=AVX2,
                       abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar")
    x, w = np.ones((1, 5, 4, 4), np.int32), np.ones((2, 5, 3, 3), np.int32)
    out = f(x, w)
    assert out[0, 0, 0, 0] == 5 * 4 and out[0, 0, 1, 1] == 5 * 9   # corner: 4 taps, inside: 9


@pytest.mark.parametrize("target", ["llvm", "host", AVX2, tvm.target.Target(AVX2)], ids=["str", "host", "dict", "Target"])
def test_target_forms(target, rng):
    run_and_check(tvm_ternary.op("dense", "ternary", (1, 40), (3, 40), target=target), rng)


def test_compiled_kernels_are_cached():
    a = tvm_ternary.op("dense", "ternary", (1, 40), (3, 40), target=AVX2)
    b = tvm_ternary.op("dense", "ternary", (1, 40), (3, 40), target=AVX2)
    assert a.executable is b.executable


def test_lib_shows_assembly():
    f = tvm_ternary.op("dense", "ternary", (1, 64), (8, 64), target=AVX2)
    asm = f.lib.inspect_source("asm")
    assert "dense_ternary_data" in asm and "dense_ternary" in asm


def test_cross_target_compiles_but_does_not_run_here(rng):
    f = tvm_ternary.op("conv2d", "ternary", (1, 32, 6, 6), (8, 32, 3, 3), padding=1, target=RASP4)
    asm = f.lib.inspect_source("asm")
    assert "cnt\tv" in asm or "cnt v" in asm            # NEON popcount: an aarch64 build
    x = np.zeros((1, 32, 6, 6), np.int32)
    with pytest.raises(RuntimeError, match=r"conv2d\[ternary\]: cannot run here: the target is aarch64"):
        f(x, np.zeros((8, 32, 3, 3), np.int32))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(name="conv2d", scheme="quinary"), ValueError, r"conv2d: unknown scheme 'quinary'"),
    (dict(name="conv3d"), ValueError, r"unknown operator 'conv3d'"),
    (dict(scheme="bitserial", abits=0), ValueError, r"conv2d\[bitserial\]: abits must be in 1\.\.8"),
    (dict(scheme="bitserial", abits=9), ValueError, r"conv2d\[bitserial\]: abits must be in 1\.\.8"),
    (dict(weight_shape=(8, 32, 3, 3)), ValueError,
     r"conv2d\[ternary\]: data has 16 input channels but the weight expects 32"),
    (dict(data_shape=(1, 16, 8)), ValueError, r"conv2d\[ternary\]: data_shape \(N, C, H, W\) must be a tuple of 4"),
    (dict(weight_shape=(8, 16, 9, 9)), ValueError, r"conv2d\[ternary\]: kernel \(9, 9\) does not fit input \(8, 8\)"),
    (dict(padding=-1), ValueError, r"conv2d\[ternary\]: padding must be an int >= 0"),
    (dict(stride=0), ValueError, r"conv2d\[ternary\]: stride must be an int >= 1"),
    (dict(dilation=0), ValueError, r"conv2d\[ternary\]: dilation must be an int >= 1"),
    (dict(dilation=4), ValueError, r"conv2d\[ternary\]: kernel \(3, 3\) does not fit input \(8, 8\) "
                                   r"with padding \(0, 0\) and dilation \(4, 4\)"),
    (dict(target="llvm -mcpu=haswell"), ValueError, r"invalid target"),
    (dict(target=42), TypeError, r"target must be a str, dict or tvm.target.Target"),
])
def test_bad_requests(kwargs, error, message):
    args = dict(name="conv2d", scheme="ternary", data_shape=(1, 16, 8, 8), weight_shape=(8, 16, 3, 3), target=AVX2)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        tvm_ternary.op(**args)


@pytest.mark.parametrize("epilogue", ["affine_add", "affine_add_relu"])
def test_residual_epilogues_are_for_built_models(epilogue):
    with pytest.raises(ValueError, match=rf"conv2d\[ternary\]: the '{epilogue}' epilogue adds a residual tensor "
                                         r"inside a built model"):
        tvm_ternary.op("conv2d", "ternary", (1, 16, 8, 8), (8, 16, 3, 3), target=AVX2, epilogue=epilogue)


def test_dense_rejects_stride_and_mismatched_features():
    with pytest.raises(ValueError, match=r"dense\[ternary\]: dense takes no stride, padding or dilation"):
        tvm_ternary.op("dense", "ternary", (1, 16), (4, 16), stride=2)
    with pytest.raises(ValueError, match=r"dense\[ternary\]: dense takes no stride, padding or dilation"):
        tvm_ternary.op("dense", "ternary", (1, 16), (4, 16), dilation=2)
    with pytest.raises(ValueError, match=r"dense\[ternary\]: data has 16 input features but the weight expects 8"):
        tvm_ternary.op("dense", "ternary", (1, 16), (4, 8))


@pytest.fixture(scope="module")
def ternary_conv():
    return tvm_ternary.op("conv2d", "ternary", (1, 16, 8, 8), (8, 16, 3, 3), padding=1, target=AVX2)


@pytest.mark.parametrize("call,error,message", [
    (lambda f, x, w: f(x, w * 2), ValueError, r"conv2d\[ternary\]: weight values must be in \{-1, 0, 1\}"),
    (lambda f, x, w: f(x + 2, w), ValueError, r"conv2d\[ternary\]: data values must be in \{-1, 0, 1\}"),
    (lambda f, x, w: f(x[:, :8], w), ValueError, r"conv2d\[ternary\]: data has shape \(1, 8, 8, 8\), expected"),
    (lambda f, x, w: f(x, w[:4]), ValueError, r"conv2d\[ternary\]: weight has shape \(4, 16, 3, 3\), expected"),
    (lambda f, x, w: f(x.astype(bool), w), TypeError, r"conv2d\[ternary\]: data must be an integer or float array"),
    (lambda f, x, w: f(x, w, scales=np.ones(3)), ValueError, r"conv2d\[ternary\]: scales apply only to the fgq"),
])
def test_bad_call_inputs(ternary_conv, call, error, message):
    x, w = np.ones((1, 16, 8, 8), np.int32), np.ones((8, 16, 3, 3), np.int32)
    with pytest.raises(error, match=message):
        call(ternary_conv, x, w)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("data_shape,weight_shape,group_size,abits", [
    ((1, 512), (40, 512), "row", 8),      # one token, one multiplier per row (BitNet b1.58)
    ((3, 100), (37, 100), 16, 8),         # K not a multiple of 16, M not of the block, batch 3
    ((2, 33), (5, 33), "row", 4),         # 4-bit activations, a partial quad of codes
    ((5, 200), (70, 200), 32, 8),         # a partial last group
], ids=["n1-row", "n3-g16", "n2-row-a4", "n5-g32"])
def test_ternary_int8_dense_exact(data_shape, weight_shape, group_size, abits, target, rng, request):
    """Ternary weights as 2-bit codes × bytes, exact with random values and multipliers, and at
    the extremes (every activation at its top, every weight 1 or -1, multipliers ±127), where
    AVX2's int16 sums of four code products per lane hold their largest values."""
    f = runnable(tvm_ternary.op("dense", "ternary_int8", data_shape, weight_shape, group_size=group_size,
                                abits=abits, target=target), request)
    s = f.spec
    top = np.full(data_shape, s.scheme.activation.value_range[1], np.int32)
    cases = [(s.scheme.activation.sample(rng, data_shape), s.scheme.weight.sample(rng, weight_shape),
              rng.integers(-127, 128, s.scales_shape)),
             (top, np.ones(weight_shape, np.int32), np.full(s.scales_shape, 127)),
             (top, -np.ones(weight_shape, np.int32), np.full(s.scales_shape, -127)),
             (top, s.scheme.weight.sample(rng, weight_shape), None)]
    for x, w, m in cases:
        out = f(x, w, scales=m)
        assert out.dtype == np.int32 and out.shape == s.out_shape
        np.testing.assert_array_equal(out, f.reference(x, w, m))
    assert f.reference(top, np.ones(weight_shape), None)[0, 0] == top.shape[1] * top[0, 0]   # multipliers default 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("data_shape,weight_shape,group_size,epilogue", [
    ((1, 512), (40, 512), "row", "int32"),      # one token
    ((3, 100), (37, 100), 16, "affine"),        # K not a multiple of 16, batch 3, the row's step in the epilogue
], ids=["n1-row-int32", "n3-g16-affine"])
def test_ternary_int8_per_token_activations_are_quantized_in_the_kernel(data_shape, weight_shape, group_size,
                                                                         epilogue, target, rng, request):
    """Float rows quantized per token in the kernel (BitNet's activations), exact against the
    numpy quantizer and PyTorch's: random rows, an all-zero row, a row of ties (absmax 127, so
    every ``x.5`` rounds half to even, as ``torch.round``), and a row whose level depends on
    computing ``127 / absmax`` as PyTorch does (a reciprocal times 127: a true division gives
    -27 for its second value, PyTorch -28)."""
    f = runnable(tvm_ternary.op("dense", "ternary_int8", data_shape, weight_shape, group_size=group_size,
                                activations="per_token", epilogue=epilogue, target=target), request)
    s = f.spec
    x = (rng.standard_normal(data_shape) * 3).astype(np.float32)
    ties = np.arange(data_shape[1], dtype=np.float32) % 254 - 126.5
    ties[-1] = 127.0
    x[-1] = ties
    if data_shape[0] > 2:                      # rows 0 and 1 (row 2 holds the ties)
        x[0, :2], x[0, 2:] = [-7.0734615, -1.531655], 0.0
        x[1] = 0.0
    w, m = s.scheme.weight.sample(rng, weight_shape), rng.integers(-127, 128, s.scales_shape)
    levels, step = reference.quantize_per_token(x)
    assert np.array_equal(levels[-1][:4], [-126, -126, -124, -124])          # -126.5, -125.5, ...: to even
    assert data_shape[0] < 3 or (np.all(levels[1] == 0) and step[1] > 0)
    rows = torch.from_numpy(x)
    torch_levels = torch.round(rows * (127 / rows.abs().amax(1, keepdim=True).clamp(min=1e-5))).clamp(-127, 127)
    np.testing.assert_array_equal(levels, torch_levels.numpy())
    assert data_shape[0] < 3 or levels[0, 1] == -28                          # the reciprocal's level
    if epilogue == "int32":
        np.testing.assert_array_equal(f(x, w, scales=m), f.reference(x, w, m))
        return
    scale, bias = rng.standard_normal(weight_shape[0]), rng.standard_normal(weight_shape[0])
    np.testing.assert_allclose(f(x, w, m, scale=scale, bias=bias), f.reference(x, w, m, scale=scale, bias=bias),
                               rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("activations", ["static", "per_token"])
def test_ternary_int8_sums_stay_exact_up_to_the_reduction_bound(activations):
    """At ``MAX_CODE_REDUCTION`` inputs, every activation at its top, every weight 1 and every
    multiplier 127 (then -1 and -127), the int32 sums reach their largest magnitudes and stay
    exact (AVX2, which this host runs)."""
    k = MAX_CODE_REDUCTION
    f = tvm_ternary.op("dense", "ternary_int8", (1, k), (8, k), target=AVX2, activations=activations)
    x = np.full((1, k), 127.0 if activations == "per_token" else 255, np.float32 if activations == "per_token"
                else np.int32)
    for sign in (1, -1):
        w, m = np.full((8, k), sign, np.int32), np.full(f.spec.scales_shape, 127 * sign)
        out = f(x, w, scales=m)
        np.testing.assert_array_equal(out, f.reference(x, w, m))
        assert abs(int(out[0, 0])) == k * 127 * (127 if activations == "per_token" else 255) < 2**31


def test_ternary_int8_inputs_are_checked():
    with pytest.raises(ValueError, match=r"dense\[ternary_int8\]: group_size must be a multiple of 16 .* got 8"):
        tvm_ternary.op("dense", "ternary_int8", (1, 64), (4, 64), group_size=8, target=AVX2)
    with pytest.raises(ValueError, match=r"conv2d\[ternary_int8\(grow,a8\)\]: the 2-bit-code kernel is a dense kernel"):
        tvm_ternary.op("conv2d", "ternary_int8", (1, 16, 4, 4), (4, 16, 3, 3), target=AVX2)
    f = tvm_ternary.op("dense", "ternary_int8", (1, 40), (4, 40), group_size=16, target=AVX2)
    x, w = np.ones((1, 40), np.int32), np.ones((4, 40), np.int32)
    where = r"dense\[ternary_int8\(g16,a8\)\]: "
    with pytest.raises(ValueError, match=where + r"weight values must be in \{-1, 0, 1\}"):
        f(x, w * 2)
    with pytest.raises(ValueError, match=where + r"group multipliers have shape \(4, 2\), expected \(4, 3\)"):
        f(x, w, scales=np.ones((4, 2), np.int32))
    with pytest.raises(ValueError, match=where + r"group multipliers must be in -127\.\.127, got 128"):
        f(x, w, scales=np.full((4, 3), 128))
    with pytest.raises(TypeError, match=where + r"group multipliers \(scales\) must be integers"):
        f(x, w, scales=np.full((4, 3), 0.5))
    with pytest.raises(ValueError, match=where + r"data values must be in integers 0\.\.255"):
        f(x * 256, w)
    with pytest.raises(ValueError, match=r"dense\[ternary_int8\]: per-token activations have 8 bits, got abits=4"):
        tvm_ternary.op("dense", "ternary_int8", (1, 40), (4, 40), abits=4, activations="per_token", target=AVX2)
    per_token = tvm_ternary.op("dense", "ternary_int8", (1, 40), (4, 40), activations="per_token", target=AVX2)
    where = r"dense\[ternary_int8\(grow,a8,per_token\)\]: "
    with pytest.raises(TypeError, match=where + r"per-token data must be a float array, got dtype int32"):
        per_token(x, w)
    with pytest.raises(ValueError, match=where + r"per-token data must be finite"):
        per_token(np.full((1, 40), np.nan, np.float32), w)


def test_fgq_float_scale_kernel_takes_group_sizes_in_quads(rng):
    f = tvm_ternary.op("dense", "fgq", (2, 40), (9, 40), group_size=8, abits=8, target=AVX2)
    run_and_check(f, rng)
    for group_size in (6, "row"):
        with pytest.raises(ValueError, match=r"dense\[fgq\(g.*\)\]: the float-scale FGQ kernel needs a group "
                                             r"size that is a multiple of 4 \(quads of bytes\)"):
            tvm_ternary.op("dense", "fgq", (2, 40), (9, 40), group_size=group_size, target=AVX2)


def test_fgq_scales_are_checked():
    f = tvm_ternary.op("conv2d", "fgq", (1, 70, 4, 4), (3, 70, 3, 3), group_size=64, abits=4, target=AVX2)
    x, w = np.ones((1, 70, 4, 4), np.int32), np.ones((3, 70, 3, 3), np.int32)
    with pytest.raises(ValueError, match=r"conv2d\[fgq\(g64,a4\)\]: scales of shape \(3, 2, 3, 3\) are required"):
        f(x, w)
    with pytest.raises(ValueError, match=r"scales have shape \(3, 1, 3, 3\), expected \(3, 2, 3, 3\)"):
        f(x, w, scales=np.ones((3, 1, 3, 3)))
    with pytest.raises(TypeError, match=r"scales must be a float array"):
        f(x, w, scales=np.full((3, 2, 3, 3), "a"))


REQUANTIZE = [  # scheme, params, op, data, weight, padding, next_padding
    ("ternary", {}, "conv2d", (2, 33, 7, 9), (56, 33, 3, 3), 1, 1),     # NEON: 2-word tiles, the last half padding
    ("fatnn", {}, "conv2d", (1, 64, 6, 6), (32, 64, 3, 3), 1, 2),      # pads with t = -1; NEON: 4 blocks
    ("bitserial", dict(abits=2, wbits=2), "conv2d", (1, 20, 5, 7), (70, 20, 1, 1), 0, 1),
    ("bitserial", dict(abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar"),
     "conv2d", (1, 40, 8, 8), (48, 40, 3, 3), 1, 1),                      # validity plane out
    ("ternary", {}, "dense", (3, 100), (70, 100), 0, 0),
    ("bitserial", dict(abits=3, wbits=2), "dense", (1, 64), (96, 64), 0, 0),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scheme,params,op,data_shape,weight_shape,padding,next_padding", REQUANTIZE,
                         ids=["ternary", "fatnn", "w2a2-1x1", "w1a1", "dense-ternary", "dense-a3w2"])
def test_requantize_epilogue_writes_the_next_layers_planes(scheme, params, op, data_shape, weight_shape,
                                                          padding, next_padding, target, rng, request):
    f = tvm_ternary.op(op, scheme, data_shape, weight_shape, padding=padding, target=target,
                       epilogue="requantize", next_padding=next_padding, **params)
    s = f.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    y = s.reference(x, w)
    levels = np.quantile(y, np.linspace(0.1, 0.9, s.threshold_count), axis=None)    # every level occurs
    thresholds = np.tile(np.round(levels).astype(np.int64), (s.weight_shape[0], 1))
    thresholds += rng.integers(-2, 3, thresholds.shape)
    thresholds.sort(axis=1)
    f = runnable(f, request)
    out = f(x, w, thresholds=thresholds)
    assert (out.shape, str(out.dtype)) == s.kernel_output() and out.shape == f.out_shape
    np.testing.assert_array_equal(out, f.reference(x, w, thresholds=thresholds))


def test_requantize_errors():
    with pytest.raises(ValueError, match=r"conv2d\[fgq\(g64,a8\)\]: the requantize epilogue needs a bit-packed scheme"):
        tvm_ternary.op("conv2d", "fgq", (1, 8, 4, 4), (8, 8, 1, 1), epilogue="requantize")
    with pytest.raises(ValueError, match=r"conv2d\[ternary\]: epilogue must be one of"):
        tvm_ternary.op("conv2d", "ternary", (1, 8, 4, 4), (8, 8, 1, 1), epilogue="relu")
    f = tvm_ternary.op("conv2d", "ternary", (1, 8, 4, 4), (8, 8, 1, 1), epilogue="requantize", target=AVX2)
    x, w = np.zeros((1, 8, 4, 4), np.int32), np.zeros((8, 8, 1, 1), np.int32)
    with pytest.raises(ValueError, match=r"needs thresholds of shape \(8, 2\)"):
        f(x, w)
    with pytest.raises(ValueError, match=r"thresholds must ascend"):
        f(x, w, thresholds=np.tile([1, 0], (8, 1)))
    with pytest.raises(TypeError, match=r"thresholds must be integers"):
        f(x, w, thresholds=np.zeros((8, 2)))


def next_thresholds(nxt, quantum: float = 0.05) -> tuple[float, np.ndarray]:
    """``(lo, thresholds)`` of a uniform quantizer onto the levels of ``nxt``'s activations:
    thresholds ``(lo + 0.5 + j) * quantum``."""
    lo, hi = nxt.scheme.activation.value_range
    return float(lo), ((lo + 0.5 + np.arange(hi - lo, dtype=np.float32)) * np.float32(quantum)).astype(np.float32)


def byte_requantize_op(target, data_shape, weight_shape, stride, padding, next_layer, epilogue, params):
    """An int8 conv2d whose epilogue writes the data bytes of the next int8 conv2d
    ``next_layer`` ``(stride, padding, output channels)``, a 3x3 layer quantizing its input
    uniformly (:func:`next_thresholds`); returns the operator and the next layer's spec."""
    t = resolve_target(target)
    n, _, *spatial = data_shape
    out = [(size + 2 * padding - k) // stride + 1 for size, k in zip(spatial, weight_shape[2:])]
    next_stride, next_padding, next_k = next_layer
    nxt = make_spec("conv2d", "int8", (n, weight_shape[0], *out), (next_k, weight_shape[0], 3, 3), next_stride,
                    next_padding, t, **params)
    lo, thresholds = next_thresholds(nxt)
    spec = make_spec("conv2d", "int8", data_shape, weight_shape, stride, padding, t, epilogue,
                     requantizer=nxt.byte_requantizer(lo, 1.0, thresholds), **params)
    return tvm_ternary.CompiledOperator(spec, t), nxt


def spread_affine(f, x, w, rng, quantum=0.05):
    """Per-channel scale and bias that spread ``f``'s affine values over its requantizer's
    levels and a little past both ends."""
    y = f.spec.reference(x, w).astype(np.float64)
    r = f.spec.requantizer
    std = y.std(axis=(0, 2, 3)) + 1
    scale = (r.count * quantum / (5 * std)).astype(np.float32)
    bias = ((r.lo + r.count / 2 + rng.standard_normal(len(std)) * r.count / 8) * quantum).astype(np.float32)
    return scale, bias


def check_equals_float_path(f, nxt, rng) -> None:
    """``f``'s byte requantize epilogue on random values spread over the levels writes the
    bytes of the path it replaces in a model (:func:`float_path_bytes`), over 100 levels of them."""
    s = f.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scale, bias = spread_affine(f, x, w, rng)
    fused = f(x, w, scale=scale, bias=bias)
    np.testing.assert_array_equal(fused, float_path_bytes(f, nxt, x, w, scale, bias))
    assert len(np.unique(fused)) > 100


def float_path_bytes(f, nxt, x, w, scale, bias) -> np.ndarray:
    """What the byte requantize epilogue of ``f`` replaces in a model: ``f``'s layer with the
    affine epilogue writing blocked float32, then ``nxt``'s quantize stage reading it."""
    from tvm_ternary.operators.compute import uniform_thresholds
    from .test_layout import run_prim_func
    s = f.spec
    affine = make_spec("conv2d", s.scheme, s.data_shape, s.weight_shape, s.stride, s.padding, f.target,
                       "affine_relu" if "_relu" in s.epilogue else "affine", blocked_output=True)
    v = tvm_ternary.CompiledOperator(affine, f.target)(x, w, scale=scale, bias=bias)
    lo, thresholds = next_thresholds(nxt)
    quantize = nxt.quantize_data_prim_func(lo, 1.0, len(thresholds), True, affine.block,
                                           uniform_thresholds(thresholds))
    return run_prim_func(quantize, f.target, nxt.kernel_input_shape(), v, thresholds)


@pytest.mark.parametrize("target,data_shape,weight_shape,stride,padding,next_layer,epilogue,params", [
    (AVX2, (2, 20, 9, 7), (16, 20, 3, 3), 1, 1, (1, 1, 24), "affine_relu_requantize",
     dict(activation_encoding="signed")),
    (AVX512, (1, 33, 11, 10), (32, 33, 3, 3), 2, 1, (2, 2, 16), "affine_requantize", dict(abits=8, wbits=4)),
    (RASP4, (1, 20, 7, 9), (16, 20, 1, 1), 1, 0, (1, 0, 8), "affine_relu_requantize", dict(abits=4, wbits=4)),
], ids=["avx2-n2-signed-relu", "avx512-a8-s2-pad2", "rasp4-1x1-a4-pad0"])
def test_byte_requantize_epilogue_writes_the_next_layers_bytes(target, data_shape, weight_shape, stride, padding,
                                                               next_layer, epilogue, params, rng, request):
    """The int8 kernel's requantize epilogue (what a model fuses between two int8 layers, e.g.
    FGQ): the affine value through the next layer's uniform quantizer, written as that layer's
    padded channels-last bytes; exact against numpy, padding bytes included (signed 7-bit
    levels are stored plus 64, so padding is byte 64; ReLU changes the bytes only with signed
    levels, as unsigned ones start above 0), a next padding other than this layer's."""
    f, nxt = byte_requantize_op(target, data_shape, weight_shape, stride, padding, next_layer, epilogue, params)
    f = runnable(f, request)
    s = f.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scale, bias = spread_affine(f, x, w, rng)
    out = f(x, w, scale=scale, bias=bias)
    assert (out.shape, str(out.dtype)) == nxt.kernel_input_shape() == s.kernel_output()
    want = f.reference(x, w, scale=scale, bias=bias)
    np.testing.assert_array_equal(out, want)
    assert len(np.unique(want)) > s.requantizer.count // 3          # the values span the levels (ReLU: half)


def test_byte_requantize_epilogue_equals_the_float_path(rng):
    """The bytes equal those of the path the epilogue replaces in a model (the affine kernel's
    blocked float32 output, then the next layer's quantize stage), with signed levels and ReLU."""
    f, nxt = byte_requantize_op(AVX2, (1, 24, 10, 9), (16, 24, 3, 3), 1, 1, (2, 1, 16), "affine_relu_requantize",
                                dict(activation_encoding="signed", abits=8, wbits=4))
    check_equals_float_path(f, nxt, rng)


def test_byte_requantize_errors():
    t = resolve_target(AVX2)
    nxt = make_spec("conv2d", "int8", (1, 16, 4, 4), (8, 16, 3, 3), 1, 1, t)          # 7-bit activations
    uniform = ((0.5 + np.arange(127, dtype=np.float32)) * np.float32(0.1)).astype(np.float32)
    with pytest.raises(ValueError, match=r"conv2d\[int8\(a7u\)\]: a requantize epilogue needs a uniform quantizer"):
        nxt.byte_requantizer(0.0, 1.0, np.sort(np.random.default_rng(0).random(127).astype(np.float32)))
    with pytest.raises(ValueError, match=r"conv2d\[int8\(a7u\)\]: the quantizer's levels 1..128 exceed the "
                                         r"activations' range 0..127"):
        nxt.byte_requantizer(1.0, 1.0, uniform)
    with pytest.raises(ValueError, match=r"conv2d\[ternary\]: a requantize epilogue writes bytes for an int8 conv2d"):
        make_spec("conv2d", "ternary", (1, 16, 4, 4), (8, 16, 3, 3), 1, 1, t).byte_requantizer(0.0, 1.0, uniform)
    requantizer = nxt.byte_requantizer(0.0, 1.0, uniform)
    with pytest.raises(ValueError, match=r"a requantizer goes with the epilogues .* and they need one"):
        make_spec("conv2d", "int8", (1, 16, 6, 6), (16, 16, 3, 3), 1, 1, t, "affine_requantize")
    with pytest.raises(ValueError, match=r"a requantizer goes with the epilogues"):
        make_spec("conv2d", "int8", (1, 16, 6, 6), (16, 16, 3, 3), 1, 1, t, "affine", requantizer=requantizer)
    with pytest.raises(ValueError, match=r"conv2d\[int8\(a7u\)\]: the affine_requantize epilogue needs an int8 "
                                         r"conv2d with static activations, output channels a multiple of the block 8"):
        make_spec("conv2d", "int8", (1, 16, 6, 6), (12, 16, 3, 3), 1, 1, t, "affine_requantize",
                  requantizer=requantizer)
    with pytest.raises(ValueError, match=r"and no blocked output"):
        make_spec("conv2d", "int8", (1, 16, 6, 6), (16, 16, 3, 3), 1, 1, t, "affine_requantize",
                  requantizer=requantizer, blocked_output=True)
    with pytest.raises(ValueError, match=r"the requantizer writes 16 channels .* the layer has 32 output channels"):
        make_spec("conv2d", "int8", (1, 16, 6, 6), (32, 16, 3, 3), 1, 1, t, "affine_requantize",
                  requantizer=requantizer)
    with pytest.raises(ValueError, match=r"the quantizer's levels 0..-127 exceed the activations' range 0..127"):
        nxt.byte_requantizer(0.0, -1.0, uniform)
    with pytest.raises(ValueError, match=r"conv2d\[int8\]: the 'affine_requantize' epilogue writes the next layer's "
                                         r"input inside a built model"):
        tvm_ternary.op("conv2d", "int8", (1, 16, 6, 6), (16, 16, 3, 3), epilogue="affine_requantize", target=AVX2)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("epilogue,op,scheme,params", [
    ("affine", "conv2d", "ternary", {}), ("affine_relu", "conv2d", "fatnn", {}),
    ("affine_relu", "dense", "bitserial", dict(abits=2, wbits=2)),
    ("affine_relu", "conv2d", "fgq", dict(group_size=4, abits=4)),
    ("affine_relu", "dense", "int8", {}),
    ("affine", "dense", "ternary_int8", dict(group_size=32)),
], ids=["conv-affine", "conv-fatnn-relu", "dense-w2a2-relu", "conv-fgq-relu", "dense-int8-relu",
        "dense-ternary-int8"])
def test_affine_epilogues(epilogue, op, scheme, params, target, rng, request):
    shapes = ((2, 33, 7, 9), (20, 33, 3, 3)) if op == "conv2d" else ((3, 100), (40, 100))
    f = runnable(tvm_ternary.op(op, scheme, *shapes, padding=1 if op == "conv2d" else 0, target=target,
                                epilogue=epilogue, **params), request)
    s = f.spec
    x, w = s.scheme.activation.sample(rng, s.data_shape), s.scheme.weight.sample(rng, s.weight_shape)
    scale, bias = rng.standard_normal(s.weight_shape[0]), rng.standard_normal(s.weight_shape[0])
    scales = rng.random(s.scales_shape).astype(np.float32) if scheme == "fgq" else None   # FGQ: float sums
    if scheme == "ternary_int8":                                                            # integer multipliers
        scales = rng.integers(0, 8, s.scales_shape)
    out = f(x, w, scales, scale=scale, bias=bias)
    assert out.dtype == np.float32 and out.shape == s.out_shape == f.out_shape
    tolerance = dict(rtol=1e-5, atol=1e-3) if scheme == "fgq" else dict(rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out, f.reference(x, w, scales, scale=scale, bias=bias), **tolerance)
    if epilogue == "affine_relu":
        assert (out == 0).any() and (out >= 0).all()
    with pytest.raises(ValueError, match=r"scale and bias go with the affine epilogues"):
        f(x, w, scales)
    with pytest.raises(ValueError, match=r"scale has shape \(3,\), expected"):
        f(x, w, scales, scale=np.ones(3), bias=bias)


def test_the_default_target_is_the_host():
    f = tvm_ternary.op("dense", "ternary", (1, 40), (3, 40))
    assert str(f.target) == str(tvm_ternary.resolve_target("host"))


HOST_ISA = host_isa()


@pytest.mark.skipif(HOST_ISA not in ("avx2", "avx512"), reason=f"the host's ISA is {HOST_ISA}: the generic x86 "
                                                               f"target warns only on an x86 host with AVX2 or better")
def test_a_generic_x86_target_on_an_avx2_host_warns_once_per_target(monkeypatch, recwarn):
    monkeypatch.setattr(tvm_ternary.diagnostics, "_WARNED_GENERIC", set())
    dense = dict(name="dense", scheme="ternary", data_shape=(1, 40), weight_shape=(3, 40))
    with pytest.warns(tvm_ternary.SlowPathWarning,
                      match=rf'dense\[ternary\]: target llvm \(x86_64\) is generic x86-64 and gets the baseline '
                            rf'\(SSE2\) schedules, but this CPU has {HOST_ISA.upper()}: target="host"( or '
                            rf'"{HOST_ISA}")? uses it'):
        tvm_ternary.op(**dense, target="llvm")
    recwarn.clear()
    tvm_ternary.op(**dense, target="llvm")                          # once per process
    tvm_ternary.op(**dense, target=AVX2)                            # pinned: what was asked for
    tvm_ternary.op(**dense, target={"kind": "llvm", "mattr": ["+avx2"]})
    tvm_ternary.op(**dense)                                         # the host
    assert not [w for w in recwarn if issubclass(w.category, tvm_ternary.SlowPathWarning)]
    with pytest.warns(tvm_ternary.SlowPathWarning, match=r"target llvm mcpu=x86-64 \(x86_64\) is generic"):
        tvm_ternary.op(**dense, target={"kind": "llvm", "mcpu": "x86-64"})      # another generic target


def test_run_looks_its_functions_up_once(monkeypatch, rng):
    """``run`` is the call users repeat and benchmarks time: a function lookup by name costs
    ~13 µs (ten times a small kernel), so it happens once per module, not per call."""
    f = tvm_ternary.op("dense", "ternary", (1, 64), (8, 64), target=AVX2)
    x, w = rng.integers(-1, 2, (1, 64)), rng.integers(-1, 2, (8, 64))
    args = f.prepare(x, w)
    lookups = []
    original = type(f.lib).__getitem__
    monkeypatch.setattr(type(f.lib), "__getitem__", lambda module, name: lookups.append(name) or original(module, name))
    for _ in range(3):
        f.run(args)
    assert len(lookups) <= 1, lookups
    np.testing.assert_array_equal(args[-1].numpy(), f.reference(x, w))
