"""Fp8BlockLinear built from a checkpoint's tensors (weight-layouts' fp8-block), against float64."""

from __future__ import annotations

import pytest
import torch

from fp8_linear import Fp8BlockLinear, InvalidInputError, LinearPlatform, per_token_group_quant
from weight_layouts import encode

CPU = LinearPlatform.parse("cpu")


def checkpoint(n=200, k=256, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    tensors = encode("fp8-block", torch.randn(n, k, generator=gen) / k**0.5, block_size=(128, 128))
    if bias:
        tensors["bias"] = torch.randn(n, generator=gen).to(torch.bfloat16)
    return tensors


def check_forward(h, layer, x, tensors):
    """The activation quantization is checked bit for bit in test_quant; here its output feeds the
    float64 reference of the GEMM."""
    out = layer(x)
    k = x.shape[-1]
    x_q, x_s = per_token_group_quant(x.reshape(-1, k).contiguous().cpu(), 128, backend="reference", platform=CPU)
    bias = tensors.get("bias")
    expected, magnitude = h.ref(x_q, x_s, tensors["weight"], tensors["weight_scale_inv"], granularity="block",
                                bias=bias)
    assert out.shape == (*x.shape[:-1], tensors["weight"].shape[0])
    h.assert_close(out.reshape(-1, out.shape[-1]), expected, magnitude, bias=bias)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_forward_reference(h, dtype):
    tensors = checkpoint()
    layer = Fp8BlockLinear.from_checkpoint({"model.q_proj." + k: v for k, v in tensors.items()},
                                           prefix="model.q_proj.", platform=CPU)
    x = torch.randn(2, 5, 256, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = check_forward(h, layer, x, tensors)
    assert out.dtype == dtype
    assert set(layer.state_dict()) == {"weight", "weight_scale_inv", "bias"}
    assert "reference" in layer.choice(10, torch.bfloat16).explain()


def test_non_contiguous_input_and_out_dtype(h):
    tensors = checkpoint(bias=False)
    layer = Fp8BlockLinear(tensors["weight"], tensors["weight_scale_inv"], out_dtype=torch.float32, platform=CPU)
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(2)).t()
    out = check_forward(h, layer, x, tensors)
    assert out.dtype == torch.float32


def test_rocm_converts_to_fnuz_exactly():
    tensors = checkpoint()
    layer = Fp8BlockLinear.from_checkpoint(tensors, platform=LinearPlatform.parse("rocm:gfx942"))
    assert layer.weight.dtype == torch.float8_e4m3fnuz
    before = tensors["weight"].to(torch.float64) * tensors["weight_scale_inv"].repeat_interleave(128, 0)[:200] \
        .repeat_interleave(128, 1).to(torch.float64)
    after = layer.weight.to(torch.float64) * layer.weight_scale_inv.repeat_interleave(128, 0)[:200] \
        .repeat_interleave(128, 1).to(torch.float64)
    assert torch.equal(before, after)


def test_bad_checkpoints():
    tensors = checkpoint()
    w, s = tensors["weight"], tensors["weight_scale_inv"]
    nan = w.clone()
    nan.view(torch.uint8)[3, 4] = 0x7F
    cases = [
        ((nan, s), "NaN"),
        ((w, s[:, :1]), "weight_scale_inv"),
        ((w.to(torch.bfloat16), s), "float8_e4m3fn"),
        ((w, torch.full_like(s, float("nan"))), "NaN"),
    ]
    for args, match in cases:
        with pytest.raises(InvalidInputError, match=match):
            Fp8BlockLinear(*args, platform=CPU)
    ragged = encode("fp8-block", torch.randn(64, 200), block_size=(128, 128))
    with pytest.raises(InvalidInputError, match="not a multiple of bk"):
        Fp8BlockLinear(ragged["weight"], ragged["weight_scale_inv"], platform=CPU)
    with pytest.raises(InvalidInputError, match="bias must be"):
        Fp8BlockLinear(w, s, torch.randn(3), platform=CPU)
    with pytest.raises(InvalidInputError, match="lack"):
        Fp8BlockLinear.from_checkpoint({"weight": w})
    layer = Fp8BlockLinear(w, s, platform=CPU)
    with pytest.raises(InvalidInputError, match=r"expects \[..., 256\]"):
        layer(torch.randn(3, 255))
    with pytest.raises(InvalidInputError, match="input must be"):
        layer(torch.randint(0, 3, (3, 256)))


@pytest.mark.triton
def test_forward_triton(h, device):
    tensors = checkpoint(n=300, k=384, seed=3)
    layer = Fp8BlockLinear.from_checkpoint(tensors, kernel="triton").to(device)
    x = torch.randn(7, 384, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16).to(device)
    check_forward(h, layer, x, tensors)
