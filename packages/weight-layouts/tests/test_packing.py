"""Bit-level helpers: hand-made words and bytes with known contents, and property round trips.

The hand-made cases pin the bit order (LSB first, low nibble = even element, E2M1 sign bit 3,
E8M0 bias 127) so that a consistent-but-wrong order cannot pass the round trips alone.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weight_layouts.packing import (
    E2M1_MAGNITUDES,
    e2m1_decode,
    e2m1_encode,
    e2m1_lut,
    e8m0_decode,
    e8m0_encode,
    mx_shared_exponent,
    pack_int32,
    pack_nibbles_uint8,
    unpack_int32,
    unpack_nibbles_uint8,
)

FAST = settings(max_examples=40, deadline=None)


def as_int32(word: int) -> int:
    """A uint32 bit pattern as the signed int32 a checkpoint stores."""
    return word - (1 << 32) if word >= 1 << 31 else word


# -- int32 packing: hand-made words ---------------------------------------------------------------


def test_pack_int32_4bit_known_word():
    codes = torch.arange(8)  # k = 0..7 -> nibble k holds k
    assert pack_int32(codes, bits=4).tolist() == [0x76543210]


def test_pack_int32_4bit_high_nibbles_make_a_negative_word():
    codes = torch.arange(8, 16)
    assert pack_int32(codes, bits=4).tolist() == [as_int32(0xFEDCBA98)]
    assert pack_int32(codes, bits=4).dtype == torch.int32


def test_unpack_int32_negative_words_are_read_as_uint32():
    words = torch.tensor([as_int32(0xFEDCBA98), -1, as_int32(0x80000000)], dtype=torch.int32)
    assert unpack_int32(words, bits=4).tolist() == list(range(8, 16)) + [15] * 8 + [0] * 7 + [8]


def test_pack_int32_8bit_known_word():
    assert pack_int32(torch.tensor([0x10, 0x32, 0x54, 0x76]), bits=8).tolist() == [0x76543210]
    assert unpack_int32(torch.tensor([as_int32(0xFF807F01)], dtype=torch.int32), bits=8).tolist() == [1, 0x7F, 0x80, 0xFF]


def test_pack_int32_along_dim0_packs_rows():
    # GPTQ qweight orientation: codes [K, N] packed along K (dim 0).
    codes = torch.stack([torch.arange(8), 15 - torch.arange(8)], dim=1)  # [8, 2]
    packed = pack_int32(codes, bits=4, dim=0)
    assert packed.shape == (1, 2)
    assert packed.tolist() == [[0x76543210, as_int32(0x89ABCDEF)]]
    assert torch.equal(unpack_int32(packed, bits=4, dim=0), codes.to(torch.int32))


def test_pack_int32_pads_the_last_word_with_zero_codes():
    packed = pack_int32(torch.tensor([1, 2, 3]), bits=4)
    assert packed.tolist() == [0x321]
    assert unpack_int32(packed, bits=4, size=3).tolist() == [1, 2, 3]
    assert unpack_int32(packed, bits=4).tolist() == [1, 2, 3, 0, 0, 0, 0, 0]


def test_pack_int32_rejects_out_of_range_codes_and_bad_bits():
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack_int32(torch.tensor([16]), bits=4)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack_int32(torch.tensor([-1]), bits=4)
    with pytest.raises(ValueError, match="bits"):
        pack_int32(torch.tensor([1]), bits=3)
    with pytest.raises(ValueError, match="int32"):
        unpack_int32(torch.tensor([1], dtype=torch.int64), bits=4)
    with pytest.raises(ValueError, match="size"):
        unpack_int32(torch.tensor([1], dtype=torch.int32), bits=4, size=9)


def _reference_pack(codes: list[int], bits: int) -> list[int]:
    """Plain-Python packing: word w = sum(code[per*w + j] << bits*j)."""
    per = 32 // bits
    words = []
    for start in range(0, len(codes), per):
        word = 0
        for j, c in enumerate(codes[start : start + per]):
            word |= c << (bits * j)
        words.append(as_int32(word))
    return words


@FAST
@given(
    bits=st.sampled_from([1, 2, 4, 8, 16]),
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    length=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_pack_unpack_int32_roundtrip(bits, shape, length, seed, data):
    dim = data.draw(st.integers(0, len(shape)))
    full = [*shape]
    full.insert(dim, length)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, full, generator=g)
    packed = pack_int32(codes, bits=bits, dim=dim)
    per = 32 // bits
    assert packed.dtype == torch.int32
    assert packed.shape[dim] == math.ceil(length / per)
    assert torch.equal(unpack_int32(packed, bits=bits, dim=dim, size=length), codes.to(torch.int32))
    # independent reference on one line along `dim`
    line = codes.movedim(dim, -1).reshape(-1, length)[0].tolist()
    assert packed.movedim(dim, -1).reshape(-1, packed.shape[dim])[0].tolist() == _reference_pack(line, bits)


# -- uint8 nibbles --------------------------------------------------------------------------------


def test_nibbles_low_nibble_is_the_even_element():
    assert pack_nibbles_uint8(torch.tensor([1, 2])).tolist() == [0x21]
    assert unpack_nibbles_uint8(torch.tensor([0x21, 0xF8], dtype=torch.uint8)).tolist() == [1, 2, 8, 15]


def test_nibbles_odd_length_is_padded():
    packed = pack_nibbles_uint8(torch.tensor([3, 4, 5]))
    assert packed.tolist() == [0x43, 0x05]
    assert unpack_nibbles_uint8(packed, size=3).tolist() == [3, 4, 5]


def test_nibbles_reject_bad_input():
    with pytest.raises(ValueError):
        pack_nibbles_uint8(torch.tensor([16]))
    with pytest.raises(ValueError):
        unpack_nibbles_uint8(torch.tensor([1], dtype=torch.int32))


@FAST
@given(rows=st.integers(1, 5), length=st.integers(1, 33), dim=st.sampled_from([0, 1]), seed=st.integers(0, 2**31 - 1))
def test_nibbles_roundtrip(rows, length, dim, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, length), generator=g)
    if dim == 0:
        codes = codes.T
    packed = pack_nibbles_uint8(codes, dim=dim)
    assert packed.dtype == torch.uint8
    assert packed.shape[dim] == math.ceil(length / 2)
    assert torch.equal(unpack_nibbles_uint8(packed, dim=dim, size=length), codes.to(torch.uint8))


# -- E2M1 -----------------------------------------------------------------------------------------


def test_e2m1_lut_values():
    expected = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    lut = e2m1_lut()
    assert lut.tolist() == expected
    assert torch.signbit(lut[8])  # code 8 is -0
    assert e2m1_decode(torch.tensor([1, 2, 15], dtype=torch.uint8)).tolist() == [0.5, 1.0, -6.0]


def test_e2m1_encode_every_representable_value_exactly():
    lut = e2m1_lut()
    assert e2m1_encode(lut).tolist() == list(range(16))


@pytest.mark.parametrize(
    ("x", "code"),
    [
        (0.25, 0),  # 0 | 0.5: even code 0
        (0.75, 2),  # 0.5 | 1.0: even code 2
        (1.25, 2),  # 1.0 | 1.5
        (1.75, 4),  # 1.5 | 2.0
        (2.5, 4),  # 2 | 3
        (3.5, 6),  # 3 | 4
        (5.0, 6),  # 4 | 6
        (0.26, 1),
        (5.01, 7),
        (6.5, 7),  # saturates
        (1e30, 7),
        (-5.0, 14),
        (-1e30, 15),
        (-0.1, 8),  # rounds to -0
    ],
)
def test_e2m1_encode_ties_to_even_and_saturates(x, code):
    assert e2m1_encode(torch.tensor([x])).tolist() == [code]


@FAST
@given(st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=1, max_size=64))
def test_e2m1_encode_picks_a_nearest_value(xs):
    x = torch.tensor(xs, dtype=torch.float32)
    got = e2m1_decode(e2m1_encode(x))
    target = x.clamp(-6, 6)
    best = (target.unsqueeze(-1) - e2m1_lut().unsqueeze(0)).abs().amin(-1)
    assert torch.equal((got - target).abs(), best)


def test_e2m1_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        e2m1_encode(torch.tensor([float("nan")]))


def test_e2m1_magnitudes_constant():
    assert E2M1_MAGNITUDES == (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# -- E8M0 -----------------------------------------------------------------------------------------


def test_e8m0_decode_known_bytes():
    got = e8m0_decode(torch.tensor([127, 128, 126, 0, 254, 255], dtype=torch.uint8))
    assert got[:5].tolist() == [1.0, 2.0, 0.5, 2.0**-127, 2.0**127]
    assert math.isnan(got[5].item())
    assert got.dtype == torch.float32


def test_e8m0_decode_matches_torch_float8_e8m0fnu_on_every_byte():
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if e8m0 is None:
        pytest.skip("this torch has no float8_e8m0fnu")
    raw = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ours = e8m0_decode(raw)
    theirs = raw.view(e8m0).to(torch.float32)
    assert torch.equal(ours[:255], theirs[:255])
    assert torch.isnan(ours[255]) and torch.isnan(theirs[255])
    assert torch.equal(e8m0_decode(raw.view(e8m0))[:255], ours[:255])


def test_e8m0_encode():
    assert e8m0_encode(torch.tensor([-127, 0, 1, 127])).tolist() == [0, 127, 128, 254]
    with pytest.raises(ValueError):
        e8m0_encode(torch.tensor([128]))
    with pytest.raises(ValueError):
        e8m0_encode(torch.tensor([-128]))


@pytest.mark.parametrize(
    ("amax", "emax", "exp"),
    [
        (1.0, 8, -8),
        (448.0, 8, 0),
        (511.9, 8, 0),
        (512.0, 8, 1),
        (6.0, 2, 0),
        (7.99, 2, 0),
        (8.0, 2, 1),
        (3.99, 2, -1),
        (0.0, 2, -127),
        (1e-45, 8, -127),  # float32 subnormal: clamped
        (2.0**-120, 2, -122),
    ],
)
def test_mx_shared_exponent_known_values(amax, emax, exp):
    assert mx_shared_exponent(torch.tensor([amax], dtype=torch.float32), emax_elem=emax).tolist() == [exp]


@FAST
@given(st.lists(st.floats(2.0**-100, 2.0**100, width=32), min_size=1, max_size=32), st.sampled_from([2, 8, 15]))
def test_mx_shared_exponent_brackets_amax(amaxes, emax):
    a = torch.tensor(amaxes, dtype=torch.float32)
    e = mx_shared_exponent(a, emax_elem=emax).to(torch.float64)
    a64 = a.to(torch.float64)
    assert bool((torch.exp2(e + emax) <= a64).all())
    assert bool((a64 < torch.exp2(e + emax + 1)).all())
