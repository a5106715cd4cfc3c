"""Scheme construction and value checking: clear errors naming operator and constraint."""

import numpy as np
import pytest

from tvm_ternary.schemes import (BitSerialScheme, FatnnScheme, FgqScheme, Int8Scheme, TernaryInt8Scheme, TernaryScheme,
                                 make_scheme)


def test_defaults_and_labels():
    assert make_scheme("conv2d", "ternary") == TernaryScheme()
    assert make_scheme("conv2d", "fatnn") == FatnnScheme()
    assert make_scheme("dense", "bitserial") == BitSerialScheme(2, 2, "unipolar", "unipolar")
    assert make_scheme("dense", "fgq", group_size=4, abits=4).label() == "fgq(g4,a4)"
    bnn = make_scheme("dense", "bitserial", abits=1, wbits=1, activation_encoding="bipolar",
                      weight_encoding="bipolar")
    assert bnn.label() == "bitserial(a1b,w1b)"
    assert make_scheme("conv2d", "int8") == Int8Scheme("unsigned")
    assert make_scheme("conv2d", "int8", activation_encoding="signed").label() == "int8(a7s)"
    assert make_scheme("conv2d", "int8", abits=8, wbits=4) == Int8Scheme("unsigned", 8, 4)
    assert make_scheme("conv2d", "int8", abits=8, wbits=4).label() == "int8(a8u,w4)"
    assert make_scheme("dense", "ternary_int8") == TernaryInt8Scheme("row", 8)
    assert make_scheme("dense", "ternary_int8", group_size=64, abits=4).label() == "ternary_int8(g64,a4)"
    assert TernaryInt8Scheme("row").group_width(33) == 48 and TernaryInt8Scheme(32).num_groups(33) == 2
    with pytest.raises(ValueError, match=r"int8: abits and wbits must be in 2\.\.8 with abits \+ wbits <= 15, "
                                         r"got 4 and 9"):
        Int8Scheme("unsigned", 4, 9)


@pytest.mark.parametrize("scheme,params,error,message", [
    ("quaternary", {}, ValueError, r"conv2d: unknown scheme 'quaternary'"),
    ("bitserial", dict(abits=0), ValueError, r"conv2d\[bitserial\]: abits must be in 1\.\.8, got 0"),
    ("bitserial", dict(abits=9), ValueError, r"conv2d\[bitserial\]: abits must be in 1\.\.8, got 9"),
    ("bitserial", dict(wbits=9), ValueError, r"wbits must be in 1\.\.8, got 9"),
    ("bitserial", dict(abits=2.0), TypeError, r"abits must be an int"),
    ("bitserial", dict(weight_encoding="signed"), ValueError, r"weight_encoding must be one of"),
    ("fgq", dict(group_size=0), ValueError, r"conv2d\[fgq\]: group_size must be >= 1 or 'row', got 0"),
    ("fgq", dict(group_size=4.0), TypeError, r"conv2d\[fgq\]: group_size must be an int or 'row', got 4\.0"),
    ("fgq", dict(abits=2), ValueError, r"conv2d\[fgq\]: abits must be in \{4, 8\}, got 2"),
    ("ternary", dict(abits=2), ValueError, r"conv2d\[ternary\]: parameter\(s\) \['abits'\] do not apply"),
    ("int8", dict(activation_encoding="bipolar"), ValueError,
     r"conv2d\[int8\]: activation_encoding must be one of \('unsigned', 'signed'\)"),
    ("int8", dict(abits=8), ValueError, r"conv2d\[int8\]: abits \+ wbits must be at most 15 \(two products of "
                                        r"stored bytes must fit AVX2's int16 sums\), got 8 \+ 8"),
    ("int8", dict(abits=9, wbits=4), ValueError, r"conv2d\[int8\]: abits must be in 2\.\.8, got 9"),
    ("int8", dict(wbits=1), ValueError, r"conv2d\[int8\]: wbits must be in 2\.\.8, got 1"),
    ("int8", dict(group_size=4), ValueError, r"conv2d\[int8\]: parameter\(s\) \['group_size'\] do not apply"),
])
def test_bad_scheme_parameters(scheme, params, error, message):
    with pytest.raises(error, match=message):
        make_scheme("conv2d", scheme, **params)


@pytest.mark.parametrize("scheme,params,role,values,message", [
    ("ternary", {}, "weight", [0, 2], r"dense\[ternary\]: weight values must be in \{-1, 0, 1\}; found 2"),
    ("fatnn", {}, "data", [0, -1], r"dense\[fatnn\]: data values must be in \{0, 1, 2\}; found -1"),
    ("bitserial", dict(abits=2), "data", [4], r"data values must be in integers 0\.\.3"),
    ("bitserial", dict(wbits=1, weight_encoding="bipolar"), "weight", [0],
     r"weight values must be in odd integers in \[-1, 1\]"),
    ("fgq", dict(abits=4), "data", [16], r"dense\[fgq\(g64,a4\)\]: data values must be in integers 0\.\.15"),
    ("ternary", {}, "data", [0.5], r"data values must be integers in \{-1, 0, 1\}"),
    ("int8", {}, "data", [128], r"dense\[int8\(a7u\)\]: data values must be in integers 0\.\.127"),
    ("int8", dict(activation_encoding="signed"), "data", [64], r"data values must be in integers -64\.\.63"),
    ("int8", {}, "weight", [-129], r"weight values must be in integers -128\.\.127 \(8-bit signed\)"),
])
def test_values_outside_the_set(scheme, params, role, values, message):
    s = make_scheme("dense", scheme, **params)
    with pytest.raises(ValueError, match=message):
        s.check_values("dense", role, np.array(values))


@pytest.mark.parametrize("values", [np.array([True, False]), np.array(["1", "0"]), np.array([1j])])
def test_non_numeric_dtypes_are_type_errors(values):
    with pytest.raises(TypeError, match=r"conv2d\[ternary\]: data must be an integer or float array"):
        TernaryScheme().check_values("conv2d", "data", values)


def test_integer_floats_are_accepted_and_converted():
    out = FatnnScheme().check_values("conv2d", "data", np.array([0.0, 2.0]))
    assert out.dtype == np.int32 and out.tolist() == [0, 2]


def test_fatnn_correction_is_weight_sum_per_output_channel():
    w = np.array([[[[1, -1], [1, 1]]], [[[0, -1], [-1, -1]]]])
    np.testing.assert_array_equal(FatnnScheme().weight_correction(w), [2, -3])
    assert TernaryScheme().weight_correction(w) is None


def test_fgq_groups():
    assert FgqScheme(group_size=4).num_groups(130) == 33
    assert FgqScheme(group_size=64).num_groups(64) == 1


def test_int8_signed_activations_are_offset_and_corrected():
    """Signed activations are stored as ``v + 64``: the correction ``-64 * sum(w)`` takes the
    offset out of every output; unsigned ones need none."""
    w = np.array([[[[3, -1]]], [[[-128, 127]]]])
    signed = Int8Scheme("signed")
    assert signed.activation_offset == 64
    np.testing.assert_array_equal(signed.weight_correction(w), [-128, 64])
    assert Int8Scheme("unsigned").activation_offset == 0 and Int8Scheme("unsigned").weight_correction(w) is None
