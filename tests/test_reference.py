"""The numpy references agree with PyTorch's conv2d/linear (an independent implementation)."""

import numpy as np
import pytest
import torch

from tvm_ternary import reference


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((2, 1), (0, 3))])
def test_conv2d_matches_torch(stride, padding, rng):
    x = rng.integers(-3, 4, (2, 5, 9, 8))
    w = rng.integers(-2, 3, (4, 5, 3, 3))
    expected = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                                          stride=stride, padding=padding)
    out = reference.conv2d_nchw(x, w, stride, padding)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected.numpy())


def test_dense_matches_torch(rng):
    x, w = rng.integers(-255, 256, (3, 70)), rng.integers(-255, 256, (6, 70))
    expected = torch.nn.functional.linear(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64))
    np.testing.assert_array_equal(reference.dense(x, w), expected.numpy())


@pytest.mark.parametrize("group_size", [4, 64])
def test_fgq_conv2d_equals_per_group_sum_of_scaled_convs(group_size, rng):
    c = 70
    x, w = rng.integers(0, 16, (1, c, 6, 5)), rng.integers(-1, 2, (3, c, 3, 3))
    groups = -(-c // group_size)
    scales = rng.random((3, groups, 3, 3)).astype(np.float32)
    expected = np.zeros((1, 3, 6, 5))
    for g in range(groups):                       # group g of channels, at each kernel tap
        for kh in range(3):
            for kw in range(3):
                tap = np.zeros_like(w)
                part = slice(g * group_size, (g + 1) * group_size)
                tap[:, part, kh, kw] = w[:, part, kh, kw]
                expected += reference.conv2d_nchw(x, tap, 1, 1) * scales[None, :, g, kh, kw, None, None]
    out = reference.conv2d_fgq_nchw(x, w, scales, group_size, 1, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_fgq_dense_with_unit_scales_is_dense(rng):
    x, w = rng.integers(0, 256, (2, 130)), rng.integers(-1, 2, (5, 130))
    np.testing.assert_array_equal(reference.dense_fgq(x, w, np.ones((5, 3)), 64), reference.dense(x, w))
