"""Encodings: planes decode back to the values; value sets; padding words."""

import numpy as np
import pytest

from tvm_ternary.encodings import (BipolarEncoding, ShiftedTernaryEncoding, TernaryEncoding,
                                   UnipolarEncoding, bitserial_encoding)



def decode(encoding, planes):
    """Value of each element from its planes, by the definitions in the module docstring."""
    p = planes.astype(np.int64)
    if isinstance(encoding, TernaryEncoding):
        t = p[0] * (1 - 2 * p[1])
        return t + 1 if isinstance(encoding, ShiftedTernaryEncoding) else t
    weights = (1 << np.arange(encoding.bits)).reshape(-1, *([1] * (p.ndim - 1)))
    if isinstance(encoding, BipolarEncoding):
        return (weights * (2 * p - 1)).sum(0)
    return (weights * p).sum(0)


ENCODINGS = [TernaryEncoding(), ShiftedTernaryEncoding(), UnipolarEncoding(bits=1), UnipolarEncoding(bits=5),
             UnipolarEncoding(bits=8), BipolarEncoding(bits=1), BipolarEncoding(bits=3), BipolarEncoding(bits=8)]


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: f"{e.name}{e.bits}")
def test_planes_decode_to_values(encoding, rng):
    values = encoding.sample(rng, (8, 512))
    assert encoding.contains(values).all() and values.dtype == np.int32
    assert values.min() == encoding.value_range[0] and values.max() == encoding.value_range[1]
    planes = encoding.planes(values)
    assert planes.shape == (encoding.num_planes, 8, 512)
    assert set(np.unique(planes)) <= {0, 1}
    np.testing.assert_array_equal(decode(encoding, planes), values)


def test_value_sets():
    assert TernaryEncoding().contains(np.array([-1, 0, 1, 2, -2])).tolist() == [True] * 3 + [False] * 2
    assert ShiftedTernaryEncoding().contains(np.array([0, 2, -1, 3])).tolist() == [True, True, False, False]
    assert BipolarEncoding(bits=2).contains(np.array([-3, -1, 1, 3, 0, 2, 5])).tolist() == [True] * 4 + [False] * 3
    assert UnipolarEncoding(bits=2).contains(np.array([0, 3, 4, -1])).tolist() == [True, True, False, False]


def test_only_bipolar_needs_validity_plane():
    assert BipolarEncoding(bits=1).needs_validity_plane
    assert not any(e.needs_validity_plane for e in (TernaryEncoding(), ShiftedTernaryEncoding(),
                                                     UnipolarEncoding(bits=2)))


def test_bitserial_encoding_names():
    assert bitserial_encoding("bipolar", 2) == BipolarEncoding(bits=2)
    with pytest.raises(ValueError, match="unknown encoding 'signed'"):
        bitserial_encoding("signed", 2)
