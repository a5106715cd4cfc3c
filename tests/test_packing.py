"""The packing convention: word size, LSB-first bit order, tail bits, host == device."""

import numpy as np
import pytest

import tvm_ternary
from tvm_ternary.encodings import TernaryEncoding, UnipolarEncoding
from tvm_ternary.packing import (WORD_BITS, gather_patches, num_words, pack_bits, pack_patch_planes, pack_planes,
                                 pack_ternary_codes,
                                 pack_planes_padded, tail_mask, taps_per_word, unpack_bits)

from .conftest import AVX2, AVX512
from .test_api import runnable


def test_word_and_bit_order_are_lsb_first():
    bits = np.zeros(40, np.uint8)
    bits[[0, 5, 31, 33]] = 1
    words = pack_bits(bits)
    assert words.dtype == np.uint32 and words.shape == (2,)
    assert words[0] == (1 << 0) | (1 << 5) | (1 << 31)
    assert words[1] == 1 << 1


@pytest.mark.parametrize("n", [1, 3, 31, 32, 33, 64, 130])
def test_pack_unpack_roundtrip_and_zero_tail(n, rng):
    bits = rng.integers(0, 2, (3, n)).astype(np.uint8)
    words = pack_bits(bits)
    assert words.shape == (3, num_words(n))
    np.testing.assert_array_equal(unpack_bits(words, n), bits)
    assert not np.any(words[:, -1] & ~np.uint32(tail_mask(n)))  # tail bits are zero


def test_tail_mask():
    assert tail_mask(33) == 1 and tail_mask(64) == 2**32 - 1 and tail_mask(3) == 0b111
    assert WORD_BITS == 32


def test_pack_planes_layout_puts_planes_second_and_words_last():
    values = np.array([[[1], [-1], [0]]])                 # [A=1, C=3, spatial=1]
    packed = pack_planes(values, TernaryEncoding())       # [1, P=2, 1, 1 word]
    assert packed.shape == (1, 2, 1, 1)
    assert packed[0, 0, 0, 0] == 0b011                    # mask: channels 0 and 1
    assert packed[0, 1, 0, 0] == 0b010                    # sign: channel 1


@pytest.mark.parametrize("scheme,params", [
    ("ternary", {}), ("fatnn", {}),
    ("bitserial", dict(abits=3, wbits=1, activation_encoding="unipolar")),
    ("bitserial", dict(abits=2, wbits=1, activation_encoding="bipolar")),
])
@pytest.mark.parametrize("channels", [3, 33, 130])
def test_device_packing_equals_host_packing(scheme, params, channels, rng):
    f = tvm_ternary.op("conv2d", scheme, (2, channels, 3, 5), (1, channels, 1, 1), target=AVX2, **params)
    x = f.spec.scheme.activation.sample(rng, (2, channels, 3, 5))
    w = f.spec.scheme.weight.sample(rng, (1, channels, 1, 1))
    device = f.prepare(x, w)[0].numpy()
    encoding = f.spec.scheme.activation
    bits = f.spec.word_bits                   # 64 on AVX2: the same bits in uint64 words
    np.testing.assert_array_equal(device[:, :encoding.num_planes], pack_planes(x, encoding, bits))
    if encoding.needs_validity_plane:          # one more plane: every existing channel
        np.testing.assert_array_equal(device[:, encoding.num_planes:],
                                      pack_planes(np.ones_like(x), UnipolarEncoding(bits=1), bits))


def test_device_packing_accepts_float_values(rng):
    f = tvm_ternary.op("dense", "bitserial", (2, 45), (3, 45), target=AVX2, abits=4, wbits=1)
    x = rng.integers(0, 16, (2, 45))
    w = rng.integers(0, 2, (3, 45))
    np.testing.assert_array_equal(f(x.astype(np.float32), w), f.reference(x, w))
    np.testing.assert_array_equal(f.prepare(x.astype(np.float32), w)[0].numpy(),
                                  pack_planes(x, UnipolarEncoding(bits=4), f.spec.word_bits))


@pytest.mark.parametrize("scheme,params,pad_words", [
    ("ternary", {}, [0, 0]),                    # zero pattern is the value 0
    ("fatnn", {}, [0b111, 0b111]),              # value 0 is t = -1: mask and sign set on the 3 channels
    ("bitserial", dict(abits=2, wbits=1, activation_encoding="bipolar"), [0, 0, 0]),  # validity plane 0
])
def test_device_packing_writes_padding_in_the_value_domain(scheme, params, pad_words, rng):
    f = tvm_ternary.op("conv2d", scheme, (1, 3, 4, 5), (2, 3, 1, 1), padding=(1, 2), target=AVX2, **params)
    assert f.spec.patch_taps == 1                          # 1x1: the ordinary layout, as the kernel reads it
    x = f.spec.scheme.activation.sample(rng, (1, 3, 4, 5))
    packed = f.prepare(x, f.spec.scheme.weight.sample(rng, (2, 3, 1, 1)))[0].numpy()
    assert packed.shape == (1, len(pad_words), 6, 9, 1)
    border = np.ones((6, 9), bool)
    border[1:-1, 2:-2] = False
    for plane, word in enumerate(pad_words):
        assert (packed[0, plane][border] == word).all()
    inside = packed[0, :, 1:-1, 2:-2]
    np.testing.assert_array_equal(inside[:f.spec.scheme.activation.num_planes],
                                  pack_planes(x, f.spec.scheme.activation, f.spec.word_bits)[0])


@pytest.mark.parametrize("n", [5, 64, 100])
def test_64_bit_words_are_the_same_bits_as_32_bit_words(n, rng):
    bits = rng.integers(0, 2, (3, n)).astype(np.uint8)
    words32, words64 = pack_bits(bits), pack_bits(bits, 64)
    assert words64.dtype == np.uint64 and words64.shape == (3, num_words(n, 64))
    padded = np.zeros((3, 2 * words64.shape[1]), np.uint32)
    padded[:, :words32.shape[1]] = words32
    np.testing.assert_array_equal(padded.view(np.uint64), words64)     # little-endian memory
    np.testing.assert_array_equal(unpack_bits(words64, n), bits)


def test_taps_per_word_packs_whole_patches_only_for_few_channels():
    assert taps_per_word(3, (7, 7), 32) == 10 and taps_per_word(3, (7, 7), 64) == 21
    assert taps_per_word(16, (3, 3), 32) == 2                 # half a word of channels: two taps a word
    assert taps_per_word(17, (3, 3), 32) == 1                 # more than half: one tap per word
    assert taps_per_word(3, (1, 1), 32) == 1                  # one tap: nothing to share


def test_patch_weights_put_tap_slots_of_c_bits_into_words():
    w = np.zeros((1, 3, 2, 2), np.int32)                      # 4 taps of 3 channels, 32-bit words: 10 taps a word
    w[0, 1, 0, 0] = 1                                         # tap 0, channel 1 -> bit 1
    w[0, 2, 1, 1] = -1                                        # tap 3 (ky=1, kx=1), channel 2 -> bit 3*3 + 2
    packed = pack_patch_planes(w, TernaryEncoding())
    assert packed.shape == (1, 2, 1, 1, 1) and packed.dtype == np.uint32
    assert packed[0, 0, 0, 0, 0] == (1 << 1) | (1 << 11)      # mask plane
    assert packed[0, 1, 0, 0, 0] == 1 << 11                   # sign plane


@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["u64-words", "u32-words"])
@pytest.mark.parametrize("scheme,params", [
    ("ternary", {}), ("fatnn", {}), ("bitserial", dict(abits=2, wbits=1, activation_encoding="bipolar")),
], ids=["ternary", "fatnn", "bipolar"])
@pytest.mark.parametrize("channels,kernel,stride,padding,dilation", [
    (3, (7, 7), 2, 3, 1), (1, (5, 3), 1, (2, 1), 1), (5, (3, 3), 2, 1, 1), (3, (3, 3), 2, 2, (2, 3)),
], ids=["c3-7x7-s2", "c1-5x3", "c5-3x3-s2", "c3-s2-d2x3"])
def test_device_patches_equal_host_gather_of_padded_planes(target, scheme, params, channels, kernel, stride,
                                                          padding, dilation, rng, request):
    """The data stage of a small-channel conv2d writes the patch layout: the padded planes
    (value-domain padding, validity plane) gathered tap by tap into C-bit slots."""
    shape = (2, channels, 9, 8)
    f = tvm_ternary.op("conv2d", scheme, shape, (4, channels, *kernel), stride=stride, padding=padding,
                       dilation=dilation, target=target, **params)
    assert f.spec.patch_taps == taps_per_word(channels, kernel, f.spec.word_bits) > 1
    x = f.spec.scheme.activation.sample(rng, shape)
    device = runnable(f, request).prepare(x, f.spec.scheme.weight.sample(rng, (4, channels, *kernel)))[0].numpy()
    enc = f.spec.scheme.activation
    planes = pack_planes_padded(x, enc, f.spec.padding, enc.needs_validity_plane, f.spec.word_bits)
    np.testing.assert_array_equal(device, gather_patches(planes, channels, kernel, f.spec.stride, f.spec.dilation))


def test_ternary_codes_hold_four_weights_per_byte_by_shift(rng):
    """Weight ``k`` of channel ``m`` is code ``w + 1`` at bits ``2i`` (``i = k % 16 // 4``) of byte
    ``k % 4`` of quad ``k // 16`` in lane ``m % V`` of block ``m // V``; padded weights and
    channels hold code 1 (weight 0)."""
    w = rng.integers(-1, 2, (5, 37))
    codes = pack_ternary_codes(w, 48, block=4)
    assert codes.shape == (2, 3, 4, 4) and codes.dtype == np.uint8
    m, k = np.meshgrid(np.arange(8), np.arange(48), indexing="ij")
    decoded = (codes[m // 4, k // 16, m % 4, k % 4] >> (2 * (k % 16 // 4))) & 3
    expected = np.ones((8, 48), np.int64)
    expected[:5, :37] = w + 1
    np.testing.assert_array_equal(decoded, expected)
    with pytest.raises(ValueError, match=r"pack_ternary_codes: channels 40 must be a multiple of 16 and at least 37"):
        pack_ternary_codes(w, 40, block=4)
