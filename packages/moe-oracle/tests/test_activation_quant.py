"""Activation quantization against plain float64 formulas: scale rules, codes, clamps, E8M0, bounds.

The e4m3 rounding and the round-half-to-even used as oracles are written out here in float64
(binade, step, ties), independent of torch's casts.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import quantkeys as qk
from moe_oracle.reference import (
    QuantizedActivation,
    decode_e8m0,
    dequantize_activation,
    expected_scale_shape,
    is_supported_activation_key,
    quantize_activation,
)
from quantkeys import GroupShape, QuantDType, QuantKey, ScaleDesc, ScaleKind

U32 = 2.0**-24  # float32 unit roundoff
KEY_G48 = QuantKey(dtype=QuantDType.FP8_E4M3, scale=ScaleDesc(kind=ScaleKind.DYNAMIC, group_shape=GroupShape.group(48)))
KEY_INT8_G64 = QuantKey(
    dtype=QuantDType.INT8, scale=ScaleDesc(kind=ScaleKind.DYNAMIC, group_shape=GroupShape.group(64))
)


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def _randn(m: int, k: int, dtype: torch.dtype, *parts: object) -> torch.Tensor:
    g = _gen(m, k, dtype, *parts)
    # per-row magnitudes spread over decades, so the scales differ a lot between rows
    mag = torch.exp(torch.randn(m, 1, generator=g, dtype=torch.float64) * 2.0)
    return (torch.randn(m, k, generator=g, dtype=torch.float64) * mag).to(dtype)


# ---- plain float64 oracles ---------------------------------------------------------------------
def rne(v: torch.Tensor) -> torch.Tensor:
    """Round float64 values to integers, ties to even (floor, fraction, parity)."""
    f = torch.floor(v)
    d = v - f
    odd = torch.remainder(f, 2) == 1
    return f + ((d > 0.5) | ((d == 0.5) & odd)).to(v.dtype)


def e4m3_round(v: torch.Tensor) -> torch.Tensor:
    """Nearest float8 e4m3fn value of float64 ``v`` (|v| <= 448), ties to even.

    Normal binade [2^e, 2^(e+1)), e >= -6, has 8 values spaced 2^(e-3); below 2^-6 the
    subnormals are spaced 2^-9.
    """
    a = v.abs()
    _, ex = torch.frexp(a)  # a = m * 2^ex, m in [0.5, 1): floor(log2 a) = ex - 1
    e = torch.where(a > 0, ex.to(torch.float64) - 1, torch.full_like(a, -6.0)).clamp(min=-6)
    step = torch.pow(2.0, e - 3)
    return torch.sign(v) * rne(a / step) * step


def group_view(x: torch.Tensor, key: QuantKey) -> torch.Tensor:
    """[M, K] -> [M, groups, G] for token/group keys, [1, 1, M*K] for per tensor."""
    m, k = x.shape
    gs = key.group_shape
    if gs.granularity is qk.Granularity.TENSOR:
        return x.reshape(1, 1, m * k)
    g = gs.cols if gs.granularity is qk.Granularity.GROUP else k
    return x.reshape(m, k // g, g)


# ---- FP8 -----------------------------------------------------------------------------------------
FP8_KEYS = [
    (qk.kFp8DynamicTensorSym, 96),
    (qk.kFp8DynamicTokenSym, 96),
    (qk.kFp8Dynamic128Sym, 256),
    (qk.kFp8Dynamic64Sym, 192),
    (qk.kFp8Dynamic32Sym, 96),
    (KEY_G48, 144),
]


def _kid(v: object) -> str:
    if isinstance(v, QuantKey):
        return v.name or str(v).replace(" ", "_")
    return str(v)


@pytest.mark.parametrize(("key", "k"), FP8_KEYS, ids=_kid)
@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_fp8_dynamic(key, k, m, dtype):
    x = _randn(m, k, dtype, key)
    qa = quantize_activation(x, key)
    assert qa.key == key and qa.zero_point is None
    assert qa.q.dtype == torch.float8_e4m3fn and qa.q.shape == (m, k)
    assert qa.scale.dtype == torch.float32
    assert tuple(qa.scale.shape) == expected_scale_shape(key, num_tokens=m, hidden=k)

    x32 = x.to(torch.float32)  # the kernels read float32
    groups = group_view(x32.to(torch.float64), key)
    amax = groups.abs().amax(dim=-1)
    scale64 = amax.clamp(min=1e-10) / 448.0
    s = qa.scale.to(torch.float64).reshape(scale64.shape)
    # Scale rule: float32(max(absmax, 1e-10) / 448) is one correctly rounded float32 division of exact
    # operands, so it is within half an ulp (2^-24 relative) of the float64 value.
    assert bool(((s - scale64).abs() <= U32 * scale64).all())

    # Codes: q == e4m3(clamp(x / scale)) with the division done in float32 (the kernels' contract).
    v32 = group_view(x32, key) / qa.scale.reshape(s.shape).unsqueeze(-1)
    expected_q = e4m3_round(v32.to(torch.float64).clamp(-448, 448)).reshape(m, k)
    assert torch.equal(qa.q.to(torch.float64), expected_q)
    # Dynamic scales never clip: the absmax maps to 448 (up to one float32 rounding).
    assert float(qa.q.to(torch.float32).abs().max()) == 448.0

    dq = dequantize_activation(qa)
    assert dq.dtype == torch.float32 and dq.shape == (m, k)
    # Bound: e4m3 has 3 mantissa bits: in the binade [2^e, 2^(e+1)) of x/scale the step is 2^(e-3),
    # so rounding moves x/scale by <= 2^(e-4) <= 2^-4 |x/scale|; below 2^-6 (subnormals) the step is
    # 2^-9, error <= 2^-10. Times the scale, plus the float32 division and product (2^-24 each):
    # |x - dq| <= (2^-4 + 2^-20) |x| + 2^-10 scale.
    x64 = x32.to(torch.float64)
    s_full = group_view(torch.ones(m, k, dtype=torch.float64), key) * s.unsqueeze(-1)
    bound = (2.0**-4 + 2.0**-20) * x64.abs() + 2.0**-10 * s_full.reshape(m, k)
    assert bool(((dq.to(torch.float64) - x64).abs() <= bound).all())


def test_fp8_static_tensor_scale_and_clamp():
    x = _randn(9, 64, torch.float32, "static")
    amax = float(x.abs().max())
    scale = amax / 448.0 / 4.0  # deliberately too small: a quarter of the values saturate
    qa = quantize_activation(x, qk.kFp8StaticTensorSym, static_scale=torch.tensor(scale))
    assert qa.scale.shape == (1,) and qa.scale.dtype == torch.float32
    s32 = torch.tensor(scale, dtype=torch.float32)
    assert torch.equal(qa.scale, s32.reshape(1))
    v = (x / s32).to(torch.float64)
    expected = e4m3_round(v.clamp(-448, 448))
    assert torch.equal(qa.q.to(torch.float64), expected)
    clipped = v.abs() > 448
    assert bool(clipped.any())
    assert torch.equal(qa.q.to(torch.float64)[clipped], 448.0 * torch.sign(v[clipped]))
    dq = dequantize_activation(qa).to(torch.float64)
    # Clipped values dequantize to exactly +-448 * scale (both factors exact, product exact in float32
    # up to one rounding: 2^-24 relative).
    assert torch.allclose(dq[clipped].abs(), torch.full_like(dq[clipped], 448.0 * float(s32)), rtol=U32, atol=0)
    # A Python float works too, same result.
    assert torch.equal(
        quantize_activation(x, qk.kFp8StaticTensorSym, static_scale=scale).q.view(torch.uint8), qa.q.view(torch.uint8)
    )


def test_fp8_eps_for_zero_rows():
    x = _randn(3, 128, torch.float32, "eps")
    x[1] = 0.0
    qa = quantize_activation(x, qk.kFp8DynamicTokenSym)
    # eps rule: an all-zero row gets scale max(0, 1e-10) / 448 (2^-24 relative: float32 rounding).
    assert math.isclose(float(qa.scale[1, 0]), 1e-10 / 448, rel_tol=U32)
    assert torch.equal(qa.q[1].to(torch.float32), torch.zeros(128))
    dq = dequantize_activation(qa)
    assert torch.equal(dq[1], torch.zeros(128))
    assert bool(torch.isfinite(dq).all())


def test_fp8_empty_batch():
    for key in (qk.kFp8DynamicTensorSym, qk.kFp8DynamicTokenSym, qk.kFp8Dynamic128Sym, qk.kMxfp8Dynamic):
        qa = quantize_activation(torch.empty(0, 256), key)
        assert qa.q.shape == (0, 256)
        assert dequantize_activation(qa).shape == (0, 256)


# ---- INT8 ----------------------------------------------------------------------------------------
INT8_KEYS = [(qk.kInt8DynamicTokenSym, 96), (qk.kInt8DynamicTensorSym, 96), (KEY_INT8_G64, 192)]


@pytest.mark.parametrize(("key", "k"), INT8_KEYS, ids=_kid)
@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_symmetric(key, k, m, dtype):
    x = _randn(m, k, dtype, key)
    qa = quantize_activation(x, key)
    assert qa.q.dtype == torch.int8 and qa.scale.dtype == torch.float32 and qa.zero_point is None
    assert tuple(qa.scale.shape) == expected_scale_shape(key, num_tokens=m, hidden=k)
    x32 = x.to(torch.float32)
    g32 = group_view(x32, key)
    amax32 = g32.abs().amax(dim=-1)
    scale64 = amax32.to(torch.float64) / 127.0
    s = qa.scale.to(torch.float64).reshape(scale64.shape)
    # Scale rule: one correctly rounded float32 division: within 2^-24 relative of float64 absmax / 127.
    assert bool(((s - scale64).abs() <= U32 * scale64).all())
    # Codes: rne(x * (127 / absmax)) in float32 (the dynamic kernel's reciprocal form), saturated.
    inv32 = torch.tensor(127.0, dtype=torch.float32) / amax32
    v = (g32 * inv32.unsqueeze(-1)).to(torch.float64)
    expected = rne(v).clamp(-128, 127).reshape(m, k)
    assert torch.equal(qa.q.to(torch.float64), expected)
    dq = dequantize_activation(qa).to(torch.float64)
    # Bound: rounding to an integer code moves x/scale by <= 1/2; the float32 reciprocal and product
    # add <= 2 * 2^-24 * 127 < 2^-16 codes; the dequant product 2^-24 |x|:
    # |x - dq| <= scale (1/2 + 2^-16) + 2^-22 |x|.
    s_full = (group_view(torch.ones(m, k, dtype=torch.float64), key) * s.unsqueeze(-1)).reshape(m, k)
    bound = s_full * (0.5 + 2.0**-16) + 2.0**-22 * x32.to(torch.float64).abs()
    assert bool(((dq - x32.to(torch.float64)).abs() <= bound).all())


def test_int8_rounds_half_to_even():
    # absmax 127 -> scale 1, reciprocal exactly 1: x * 1 = 2.5 / 3.5 / -2.5 are exact ties.
    x = torch.tensor([[127.0, 2.5, 3.5, -2.5, 0.5, -127.0]])
    qa = quantize_activation(x, qk.kInt8DynamicTokenSym)
    assert qa.q.tolist() == [[127, 2, 4, -2, 0, -127]]


def test_int8_static_tensor():
    x = _randn(5, 64, torch.float32, "int8-static")
    scale = float(x.abs().max()) / 127.0 / 2.0  # half the needed scale: large values saturate
    qa = quantize_activation(x, qk.kInt8StaticTensorSym, static_scale=scale)
    s32 = torch.tensor(scale, dtype=torch.float32)
    v = (x / s32).to(torch.float64)  # static kernel divides
    assert torch.equal(qa.q.to(torch.float64), rne(v).clamp(-128, 127))
    assert bool((qa.q == 127).any() or (qa.q == -128).any())


@pytest.mark.parametrize("key", [qk.kInt8DynamicTokenAsym, qk.kInt8DynamicTensorAsym], ids=_kid)
@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("offset", [0.0, 3.0], ids=["centered", "all-positive"])
def test_int8_asymmetric(key, m, offset):
    k = 96
    x = (
        _randn(m, k, torch.float32, key, offset).to(torch.float64) + offset * _randn(m, 1, torch.float64, "o").abs()
    ).to(torch.float32)
    qa = quantize_activation(x, key)
    assert qa.q.dtype == torch.uint8 and qa.zero_point is not None and qa.zero_point.dtype == torch.int32
    shape = expected_scale_shape(key, num_tokens=m, hidden=k)
    assert tuple(qa.scale.shape) == shape and tuple(qa.zero_point.shape) == shape
    g = group_view(x, key)
    vmax, vmin = g.amax(dim=-1), g.amin(dim=-1)
    scale64 = (vmax.to(torch.float64) - vmin.to(torch.float64)) / 255.0
    s = qa.scale.to(torch.float64).reshape(scale64.shape)
    # Scale rule: (max - min) / 255 over the values; float32 subtraction and division: <= 2 * 2^-24 relative.
    assert bool(((s - scale64).abs() <= 2 * U32 * scale64).all())
    # Zero point and codes, the vLLM azp kernel's float32 steps written out, shifted to uint8.
    s32 = qa.scale.reshape(vmin.shape)
    azp = rne((torch.tensor(-128.0) - vmin / s32).to(torch.float64))
    assert torch.equal(qa.zero_point.to(torch.float64).reshape(azp.shape), azp + 128)
    inv = (torch.tensor(1.0) / s32).unsqueeze(-1)
    codes = rne((g * inv).to(torch.float64)) + azp.unsqueeze(-1)
    assert torch.equal(qa.q.to(torch.float64), (codes.clamp(-128, 127) + 128).reshape(m, k))
    dq = dequantize_activation(qa).to(torch.float64)
    # Bound: as for symmetric int8, |x - dq| <= scale (1/2 + 2^-16) + 2^-22 |x|; in addition the
    # zero point is rounded from min / scale while codes use x * (1 / scale), so the minimum may sit
    # one code below -128 and be clamped: allow one more code (scale) there.
    s_full = (group_view(torch.ones(m, k, dtype=torch.float64), key) * s.unsqueeze(-1)).reshape(m, k)
    bound = s_full * (1.5 + 2.0**-16) + 2.0**-22 * x.to(torch.float64).abs()
    assert bool(((dq - x.to(torch.float64)).abs() <= bound).all())
    # and away from the clamp the half-code bound holds
    inner = (codes.clamp(-128, 127) == codes).reshape(m, k)
    assert bool(((dq - x.to(torch.float64)).abs() <= s_full * (0.5 + 2.0**-16) + 2.0**-22 * x.abs())[inner].all())


# ---- MXFP8 -----------------------------------------------------------------------------------------
def mx_exponent(amax: float) -> int:
    """OCP MX shared exponent for e4m3 elements, plain Python: floor(log2(amax)) - 8, clamped."""
    if amax == 0.0:
        return -127
    return max(-127, min(127, math.frexp(amax)[1] - 1 - 8))


@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("k", [32, 96, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mxfp8(m, k, dtype):
    x = _randn(m, k, dtype, "mx")
    qa = quantize_activation(x, qk.kMxfp8Dynamic)
    assert qa.q.dtype == torch.float8_e4m3fn and qa.scale.dtype == torch.uint8
    assert tuple(qa.scale.shape) == (m, k // 32)
    x64 = x.to(torch.float32).to(torch.float64)
    g = x64.reshape(m, k // 32, 32)
    exps = [[mx_exponent(float(g[i, j].abs().max())) for j in range(k // 32)] for i in range(m)]
    e = torch.tensor(exps, dtype=torch.float64)
    # Exponent rule, exactly: byte = clamp(floor(log2 amax) - 8, -127, 127) + 127.
    assert qa.scale.to(torch.int64).tolist() == [[v + 127 for v in row] for row in exps]
    # Elements: e4m3(clamp(x / 2^e, +-448)); division by a power of two is exact.
    v = g / torch.pow(2.0, e).unsqueeze(-1)
    assert torch.equal(qa.q.to(torch.float64), e4m3_round(v.clamp(-448, 448)).reshape(m, k))
    dq = dequantize_activation(qa).to(torch.float64)
    p = torch.pow(2.0, e).unsqueeze(-1).expand(m, k // 32, 32).reshape(m, k)
    err = (dq - x64).abs()
    inside = x64.abs() <= 448 * p
    # Bound inside the e4m3 range: as for FP8, |x - dq| <= 2^-4 |x| + 2^-10 * 2^e (the scale is a
    # power of two, so the dequant product is exact).
    assert bool((err <= 2.0**-4 * x64.abs() + 2.0**-10 * p)[inside].all())
    # Saturated elements: amax < 2^(floor+1) = 512 * 2^e, so x loses < 64 * 2^e, dq = +-448 * 2^e.
    assert bool((err < 64 * p)[~inside].all())
    assert bool((dq.abs() == 448 * p)[~inside].all())


def test_mxfp8_exponent_edges():
    rows = [
        [1.0] + [0.5] * 31,  # amax 1 -> floor 0 -> e = -8, byte 119, x/2^e = 256 exact
        [1.9] + [0.1] * 31,  # amax 1.9 -> e = -8, 1.9 * 256 = 486.4 > 448 saturates to 448 -> 1.75
        [0.0] * 32,  # zero group -> e = -127 (byte 0), all codes 0
        [2.0**-140] * 32,  # floor(log2) - 8 = -148 clamps to -127 -> byte 0
        [1.5 * 2.0**127] + [1.0] * 31,  # floor 127 -> e = 119 -> byte 246
        [float("nan")] + [1.0] * 31,  # non-finite amax -> NaN scale byte 255
    ]
    x = torch.tensor(rows, dtype=torch.float32)
    qa = quantize_activation(x, qk.kMxfp8Dynamic)
    assert qa.scale.reshape(-1).tolist() == [119, 119, 0, 0, 246, 255]
    dq = dequantize_activation(qa)
    assert dq[0, 0].item() == 1.0 and dq[0, 1].item() == 0.5
    assert dq[1, 0].item() == 1.75
    assert torch.equal(dq[2], torch.zeros(32)) and torch.equal(dq[3], torch.zeros(32))
    assert dq[4, 0].item() == 1.5 * 2.0**127
    assert bool(torch.isnan(dq[5]).all())


def test_e8m0_decode_exact():
    b = torch.arange(0, 256, dtype=torch.int64).to(torch.uint8)
    got = decode_e8m0(b)
    assert got.dtype == torch.float32
    assert [got[i].item() for i in range(255)] == [2.0 ** (i - 127) for i in range(255)]
    assert math.isnan(got[255].item())
    with pytest.raises(ValueError, match="uint8"):
        decode_e8m0(b.to(torch.int32))


# ---- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        qk.kMxfp4Dynamic,
        qk.kNvfp4Dynamic,
        qk.kFp8Static128BlockSym,
        qk.kFp8StaticTokenSym,
        qk.kInt8StaticTensorAsym,
        qk.kInt4Static,
    ],
    ids=_kid,
)
def test_unserved_keys_are_named(key):
    assert not is_supported_activation_key(key)
    with pytest.raises(ValueError, match=key.name):
        quantize_activation(torch.randn(2, 128), key)


def test_served_keys():
    for key in (
        qk.kFp8DynamicTensorSym, qk.kFp8StaticTensorSym, qk.kFp8DynamicTokenSym, qk.kFp8Dynamic128Sym,
        qk.kFp8Dynamic64Sym, qk.kFp8Dynamic32Sym, qk.kInt8DynamicTokenSym, qk.kInt8DynamicTokenAsym,
        qk.kMxfp8Dynamic, KEY_G48,
    ):  # fmt: skip
        assert is_supported_activation_key(key), key
    assert not is_supported_activation_key(None)


def test_bad_inputs():
    x = torch.randn(4, 128)
    with pytest.raises(ValueError, match="static_scale"):
        quantize_activation(x, qk.kFp8StaticTensorSym)
    with pytest.raises(ValueError, match="dynamic"):
        quantize_activation(x, qk.kFp8DynamicTensorSym, static_scale=1.0)
    for bad in (float("nan"), 0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="finite and > 0"):
            quantize_activation(x, qk.kFp8StaticTensorSym, static_scale=torch.tensor(bad))
    with pytest.raises(ValueError, match="one per-tensor static scale"):
        quantize_activation(x, qk.kFp8StaticTensorSym, static_scale=torch.ones(2))
    with pytest.raises(ValueError, match=r"K = 96 is not divisible by the group size 128"):
        quantize_activation(torch.randn(4, 96), qk.kFp8Dynamic128Sym)
    with pytest.raises(ValueError, match="K = 48 is not divisible by the group size 32"):
        quantize_activation(torch.randn(4, 48), qk.kMxfp8Dynamic)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        quantize_activation(torch.ones(4, 128, dtype=torch.int32), qk.kFp8DynamicTokenSym)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        quantize_activation(x.to(torch.float8_e4m3fn), qk.kFp8DynamicTokenSym)
    with pytest.raises(ValueError, match="2-D"):
        quantize_activation(torch.randn(2, 3, 128), qk.kFp8DynamicTokenSym)
    with pytest.raises(TypeError, match="QuantKey"):
        quantize_activation(x, "kFp8DynamicTokenSym")  # type: ignore[arg-type]


def test_dequantize_checks_scales():
    qa = quantize_activation(torch.randn(4, 256), qk.kFp8Dynamic128Sym)
    with pytest.raises(ValueError, match=r"must be torch.float32 \[4, 2\]"):
        dequantize_activation(QuantizedActivation(q=qa.q, scale=qa.scale[:, :1], key=qa.key))
    with pytest.raises(ValueError, match="codes"):
        dequantize_activation(QuantizedActivation(q=qa.q.to(torch.float32), scale=qa.scale, key=qa.key))
    with pytest.raises(ValueError, match="zero_point"):
        dequantize_activation(QuantizedActivation(q=qa.q, scale=qa.scale, key=qa.key, zero_point=qa.scale))
    mx = quantize_activation(torch.randn(4, 64), qk.kMxfp8Dynamic)
    with pytest.raises(ValueError, match="uint8"):
        dequantize_activation(QuantizedActivation(q=mx.q, scale=mx.scale.to(torch.float32), key=mx.key))
    with pytest.raises(TypeError):
        QuantizedActivation(qa.q, qa.scale, qa.key)  # type: ignore[misc]  # keyword-only
