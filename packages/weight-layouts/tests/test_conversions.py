"""The seed conversion GPTQ [E, K/8, 2N] int32 -> [E, 2N, K/2] uint8, checked against explicit unpacking."""

from __future__ import annotations

import pytest
import torch

import weight_layouts as wl
from weight_layouts.conversions import gptq_int4_to_nk_uint8, gptq_scales_to_nk, nk_uint8_to_signed_int4
from weight_layouts.packing import unpack_int32


@pytest.mark.parametrize(("e", "k", "n"), [(1, 8, 8), (3, 64, 48), (2, 256, 96)])
def test_gptq_to_nk_bytes_match_explicit_nibbles(e, k, n):
    gen = torch.Generator().manual_seed(e * k + n)
    w = torch.randn(e, n, k, generator=gen)
    t = wl.encode("gptq", w, bits=4, group_size=8 if k == 8 else 32, sym=True)
    qweight = t["qweight"]
    assert qweight.shape == (e, k // 8, n)
    out = gptq_int4_to_nk_uint8(qweight)
    assert out.dtype == torch.uint8 and out.shape == (e, n, k // 2)
    codes = unpack_int32(qweight, bits=4, dim=-2)  # [E, K, N]
    low, high = (out & 0xF).long(), (out >> 4).long()
    assert torch.equal(low, codes[:, 0::2, :].transpose(1, 2).long())
    assert torch.equal(high, codes[:, 1::2, :].transpose(1, 2).long())


def test_known_word():
    # one word 0x76543210 at (k-row 0, n 0): codes k = 0..7 are 0..7
    qweight = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert gptq_int4_to_nk_uint8(qweight).tolist() == [[0x10, 0x32, 0x54, 0x76]]
    # a negative int32 word (nibble 7 >= 8) survives: 0x8FEDCBA9 as int32
    neg = torch.tensor([[0x8FEDCBA9 - (1 << 32)]], dtype=torch.int32)
    assert gptq_int4_to_nk_uint8(neg).tolist() == [[0xA9, 0xCB, 0xED, 0x8F]]
    assert nk_uint8_to_signed_int4(torch.tensor([0x88, 0x80, 0x7F], dtype=torch.uint8)).tolist() == [0x00, 0x08, 0xF7]


def test_stacked_w13_from_a_checkpoint(tmp_path):
    from weight_layouts.writer import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="int4_w4a16", num_experts=2, hidden_size=128,
                                 intermediate_size=128)
    w13 = wl.load_experts(ckpt.path, 0).w13
    q = w13.tensors["qweight"]
    assert q.shape == (2, 128 // 8, 256)  # [E, K/8, 2N]
    packed = gptq_int4_to_nk_uint8(q)
    assert packed.shape == (2, 256, 64)  # [E, 2N, K/2]
    # dequantize from the converted layout (sym: zero 8) and compare with the format's decode
    codes = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(2, 256, 128).float() - 8
    scales = gptq_scales_to_nk(w13.tensors["scales"], dtype=torch.float32)  # [E, 2N, K/g]
    dense = codes * scales.repeat_interleave(128, dim=-1)
    torch.testing.assert_close(dense, w13.dequantize(), rtol=0, atol=0)


def test_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="int32"):
        gptq_int4_to_nk_uint8(torch.zeros(2, 2, dtype=torch.int64))
