"""OperatorSpec: shapes, stages and the PrimFunc signatures other parts of the product use."""

import numpy as np
import pytest
import tvm

from tvm_ternary import schedules
from tvm_ternary.operators import OperatorSpec
from tvm_ternary.operators.compute import uniform_thresholds
from tvm_ternary.quant.activations import UniformQuantizer
from tvm_ternary.packing import num_words
from tvm_ternary.schemes import make_scheme

from .conftest import AVX2


def create(op, scheme, data, weight, stride=1, padding=0, block=1, **params):
    return OperatorSpec.create(op, make_scheme(op, scheme, **params), data, weight, stride, padding, block)


def block_names(func):
    return [line.split('"')[1] for line in func.script().splitlines() if "T.sblock(" in line][1:]  # [0] is "root"


def test_out_shapes_and_pairs():
    assert create("conv2d", "ternary", (2, 3, 11, 13), (5, 3, 7, 7), 2, 3).out_shape == (2, 5, 6, 7)
    assert create("conv2d", "ternary", (1, 3, 10, 10), (5, 3, 3, 1), (2, 1), (1, 0)).out_shape == (1, 5, 5, 10)
    assert create("dense", "fatnn", (3, 70), (9, 70)).out_shape == (3, 9)


def test_packed_kernel_input_layout():
    s = create("conv2d", "bitserial", (2, 70, 5, 6), (4, 70, 3, 3), abits=3)
    assert s.kernel_input_shape() == ((2, 3, 5, 6, num_words(70)), "uint32")
    fgq = create("conv2d", "fgq", (2, 70, 5, 6), (4, 70, 3, 3), group_size=64, abits=8)
    assert fgq.kernel_input_shape() == ((2, 5, 6, 128), "uint8")
    padded = create("conv2d", "fgq", (2, 70, 5, 6), (4, 70, 3, 3), padding=(1, 2), group_size=4, abits=8)
    assert padded.kernel_input_shape() == ((2, 7, 10, 72), "uint8")
    assert fgq.scales_shape == (4, 2, 3, 3)


def test_stages():
    assert block_names(create("conv2d", "ternary", (1, 8, 5, 5), (2, 8, 3, 3)).kernel_prim_func()) == ["acc", "out"]
    fatnn = create("conv2d", "fatnn", (1, 20, 5, 5), (2, 20, 3, 3), padding=1)
    assert block_names(fatnn.kernel_prim_func()) == ["acc", "out"]        # padding is in the data stage
    assert block_names(fatnn.data_prim_func()) == ["pack"]
    assert fatnn.kernel_input_shape() == ((1, 2, 7, 7, 1), "uint32")
    small = create("conv2d", "fatnn", (1, 8, 5, 5), (2, 8, 3, 3), padding=1)   # 4 taps of 8 channels a word
    assert block_names(small.data_prim_func()) == ["pack", "patches"]
    assert small.kernel_input_shape() == ((1, 2, 5, 5, 3), "uint32")
    bnn = create("dense", "bitserial", (1, 8), (2, 8), abits=1, wbits=1, activation_encoding="bipolar")
    assert bnn.kernel_input_shape() == ((1, 2, 1), "uint32")              # 1 plane + validity plane
    fgq = create("conv2d", "fgq", (1, 8, 5, 5), (2, 8, 3, 3), padding=2, group_size=4, abits=4)
    assert block_names(fgq.data_prim_func()) == ["layout"] and block_names(fgq.kernel_prim_func()) == ["group", "acc", "out"]


def test_weight_args():
    s = create("conv2d", "fatnn", (1, 40, 5, 5), (3, 40, 3, 3))
    w = np.ones((3, 40, 3, 3), np.int32)
    planes, correction = s.weight_args(w)
    assert planes.shape == (3, 2, 3, 3, 2, 1) and planes.dtype == np.uint32   # [Kb, P, KH, KW, Cw, V=1]
    np.testing.assert_array_equal(correction, [360, 360, 360])
    fgq = create("dense", "fgq", (1, 70), (3, 70), group_size=4, abits=4)
    wb, scales = fgq.weight_args(np.ones((3, 70), np.int32), np.ones((3, 18)))
    assert wb.shape == (3, 18, 1, 4) and wb.dtype == np.int8        # [Kb, C/4 quads, V=1, 4]
    assert not wb[:, 17, :, 2:].any() and wb[:, 17, :, :2].all()     # channels 70, 71 are padding
    assert scales.shape == (3, 18, 1) and scales.dtype == np.float32


def test_symbols():
    s = create("dense", "ternary", (1, 8), (2, 8))
    assert s.symbol == "dense_ternary"
    assert str(s.data_prim_func().attrs["global_symbol"]) == "dense_ternary_data"
    assert str(s.kernel_prim_func().attrs["global_symbol"]) == "dense_ternary"


def test_blocked_weights_and_term_accumulators():
    from tvm_ternary.operators.compute import term_coefficients
    s = create("conv2d", "ternary", (1, 40, 5, 5), (11, 40, 3, 3), block=8)
    planes, = s.weight_args(np.ones((11, 40, 3, 3), np.int32))
    assert planes.shape == (2, 2, 3, 3, 2, 8)             # K=11 padded to two blocks of 8
    assert not planes[1, ..., 3:].any()                    # padded channels are zero
    assert term_coefficients(s.scheme) == [1, -2]          # ternary: popc(both) - 2 popc(negative)
    acc = [b for b in s.kernel_prim_func().script().splitlines() if "acc = T.alloc_buffer" in b or "acc =" in b]
    assert acc and "(1, 2, 3, 3, 2, 8)" in acc[0]         # [N, Kb, OH, OW, G=2 terms, V=8]


def test_fatnn_correction_folds_into_requantize_thresholds():
    spec = OperatorSpec.create("conv2d", make_scheme("conv2d", "fatnn"), (1, 40, 5, 5), (8, 40, 3, 3), 1, 1, 8,
                               "requantize")
    assert len(spec.kernel_prim_func().params) == 4             # data, weight, thresholds, out: no correction
    w = np.ones((8, 40, 3, 3), np.int32)
    w[0] = -1
    planes, thresholds = spec.weight_args(w, thresholds=np.tile([0, 10], (8, 1)))
    np.testing.assert_array_equal(thresholds[:, 0], [0 + 360, 10 + 360])   # t - sum(w), sum(w[0]) = -360
    np.testing.assert_array_equal(thresholds[:, 1], [0 - 360, 10 - 360])


@pytest.mark.parametrize("scheme,params,thresholds", [
    ("ternary", {}, [-0.5, 0.25]), ("fatnn", {}, [0.0, 0.75]),
    ("bitserial", dict(abits=2, wbits=2), [-0.5, 0.0, 0.5]),
    ("bitserial", dict(abits=1, wbits=1, activation_encoding="bipolar", weight_encoding="bipolar"), [0.0])],
    ids=["ternary", "fatnn", "w2a2", "w1a1"])
def test_quantize_stage_from_compares_equals_counted_levels(scheme, params, thresholds):
    """With ascending thresholds the fused quantize + pack stage derives planes straight from
    the compares; it must write the same words as counting levels first, at borders (pad
    bits), channel tails, and for inputs exactly on a threshold."""
    spec = create("conv2d", scheme, (2, 37, 5, 6), (4, 37, 3, 3), padding=1, **params)
    enc = spec.scheme.activation
    lo, step = enc.value_range[0], enc.level_step
    rng = np.random.default_rng(0)
    x = rng.choice(np.array([*thresholds, *rng.standard_normal(8)], np.float32), spec.data_shape)
    t = np.asarray(thresholds, np.float32)
    direct, counted = (run_data_stage(spec, spec.quantize_data_prim_func(lo, step, len(t), ascending), x, t)
                       for ascending in (True, False))
    np.testing.assert_array_equal(direct, counted)
    levels = (lo + step * (x[..., None] >= t).sum(-1)).astype(np.int32)
    np.testing.assert_array_equal(direct, run_data_stage(spec, spec.data_prim_func(), levels))  # = packing the levels


@pytest.mark.parametrize("scheme,params,lo,hi,scale", [
    ("int8", dict(activation_encoding="signed"), -64, 63, 0.0317),
    ("int8", {}, 0, 127, 1.3),
    ("fgq", dict(group_size=4, abits=8), 0, 255, 2.9e-3),
    ("fgq", dict(group_size=4, abits=4), 0, 15, 0.37),
    ("bitserial", dict(abits=4, wbits=2), 0, 15, 0.11),
], ids=["int8-signed", "int8-unsigned", "fgq-a8", "fgq-a4", "bitserial-a4"])
def test_uniform_quantize_stage_computes_the_counted_levels(scheme, params, lo, hi, scale):
    """Uniform quantizers of 4 to 8 bits compute levels from ``x / scale`` and correct them
    with one compare on each side: the layout must equal the one from counted levels for
    inputs exactly on every threshold, one float32 step either side of it, and far outside
    the range."""
    quantizer = UniformQuantizer(lo, hi)
    quantizer.log_scale.data.fill_(float(np.log(scale)))
    t = quantizer.thresholds().detach().numpy()
    uniform = uniform_thresholds(t)
    assert uniform is not None and uniform[0] == lo + 0.5
    values = np.concatenate([t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf), [-1e30, 1e30, 0.0, -0.0]])
    spec = create("conv2d", scheme, (1, 3, 12, len(values) // 12 + 1), (4, 3, 3, 3), padding=1, **params)
    x = np.resize(values.astype(np.float32), spec.data_shape)
    computed = run_data_stage(spec, spec.quantize_data_prim_func(lo, 1, len(t), True, uniform=uniform), x, t)
    levels = (lo + (x[..., None] >= t).sum(-1)).astype(np.int32)
    np.testing.assert_array_equal(computed, run_data_stage(spec, spec.data_prim_func(), levels))


def test_only_exactly_uniform_thresholds_are_computed():
    t = ((np.arange(-64, 63, dtype=np.float32) + np.float32(0.5)) * np.float32(0.07))
    assert uniform_thresholds(t) is not None
    assert uniform_thresholds(t[:7]) is None                        # few: compared one by one
    assert uniform_thresholds(t[:8]) is not None
    bumped = t.copy()
    bumped[40] = np.nextafter(bumped[40], np.inf)                   # one ulp off the formula
    assert uniform_thresholds(bumped) is None
    assert uniform_thresholds(np.sort(np.random.default_rng(0).random(100)).astype(np.float32)) is None
    tiny = (np.arange(127, dtype=np.float32) + np.float32(0.5)) * np.float32(1e-39)
    assert uniform_thresholds(tiny) is None                         # 1 / scale overflows float32
    far = (np.arange(2 ** 22, 2 ** 22 + 17, dtype=np.float32) + np.float32(0.5)) * np.float32(2.3e-10)
    assert uniform_thresholds(far) is None                          # no one-step margin that far out


def run_data_stage(spec, func, *inputs):
    """Schedule ``func`` (a data stage of ``spec``) for AVX2, run it on ``inputs``, return its output."""
    target = tvm.target.Target(AVX2)
    lib = tvm.compile(tvm.IRModule({"stage": schedules.schedule(func, target).mod["main"]
                                    .with_attr("global_symbol", "stage")}), target=target)
    out = tvm.runtime.tensor(np.zeros(*spec.kernel_input_shape()))
    lib["stage"](*(tvm.runtime.tensor(a) for a in inputs), out)
    return out.numpy()
