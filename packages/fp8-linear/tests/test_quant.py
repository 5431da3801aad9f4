"""per_token_group_quant against an independent float64 oracle of the contract, bit for bit.

The oracle computes ``scale = max(absmax, eps) / fp8_max`` and ``x / scale`` in float64 and rounds
them to float32 (exact for one division: float64 has more than 2 * 24 + 2 bits), rounds to the
FP8 grid with its own table of E4M3 values (nearest, ties to the even code), and takes UE8M0 as
``2 ** ceil(log2(scale))`` from ``math.frexp``. Every backend must match it exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

import fp8_linear
from fp8_linear import InvalidInputError, LinearPlatform, per_token_group_quant

CPU = LinearPlatform.parse("cpu")


def fp8_table(dtype: torch.dtype) -> torch.Tensor:
    """Magnitudes of codes 0..126 (e4m3fn) / 0..127 (e4m3fnuz), ascending, from the bit layout."""
    fnuz = dtype == torch.float8_e4m3fnuz
    vals = []
    for code in range(128 if fnuz else 127):
        e, m = code >> 3, code & 7
        bias = 8 if fnuz else 7
        vals.append(m * 2.0 ** (1 - bias - 3) if e == 0 else 2.0 ** (e - bias) * (1 + m / 8))
    return torch.tensor(vals, dtype=torch.float64)


def oracle(x: torch.Tensor, g: int, *, dtype=torch.float8_e4m3fn, ue8m0=False, eps=1e-10, fp8_max=None):
    """(codes uint8 [..., K], scales float32 [..., K/g]) of the contract."""
    fp8_max = fp8_max or (224.0 if dtype == torch.float8_e4m3fnuz else 448.0)
    x32 = x.to(torch.float32).to(torch.float64).unflatten(-1, (-1, g))
    eps32 = float(torch.tensor(eps, dtype=torch.float32))
    scale = (torch.clamp(x32.abs().amax(-1), min=eps32) / fp8_max).to(torch.float32).to(torch.float64)
    if ue8m0:
        scale = scale.apply_(lambda s: math.ldexp(1.0, math.frexp(s)[1] - (1 if math.frexp(s)[0] == 0.5 else 0)))
    y = (x32 / scale.unsqueeze(-1)).to(torch.float32).to(torch.float64).clamp(-fp8_max, fp8_max).flatten(-2)
    table = fp8_table(dtype)
    a = y.abs().reshape(-1)
    hi = torch.searchsorted(table, a).clamp(max=len(table) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - table[lo], table[hi] - a
    pick = torch.where(d_hi < d_lo, hi, torch.where(d_lo < d_hi, lo, torch.where(hi % 2 == 0, hi, lo)))
    codes = pick.reshape(y.shape)
    negative = torch.signbit(y) & ((codes != 0) | (dtype == torch.float8_e4m3fn))
    codes = torch.where(negative, codes | 0x80, codes)
    return codes.to(torch.uint8), scale.to(torch.float32)


def make_x(shape, dtype, seed, *, tiny_group=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.exp(torch.randn((*shape[:-1], 1), generator=gen) * 2)
    if tiny_group and shape[-1] >= 64:
        x[..., :32] *= 1e-12  # a group (for g=32) whose absmax falls under eps
    return x.to(dtype)


def check(x, q, s, g, **kw):
    codes, scales = oracle(x, g, **kw)
    assert torch.equal(s.contiguous(), scales), (s - scales).abs().max()
    assert torch.equal(q.view(torch.uint8), codes), int((q.view(torch.uint8) != codes).sum())


@pytest.mark.parametrize("backend", ["reference", "custom_op"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_torch_backends_match_the_contract(backend, dtype, g, ue8m0):
    x = make_x((13, 3 * 128), dtype, seed=g + 7 * ue8m0)
    q, s = per_token_group_quant(x, g, ue8m0=ue8m0, backend=backend, platform=CPU)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (13, 384 // g)
    check(x, q, s, g, ue8m0=ue8m0)


def test_ue8m0_scales_are_powers_of_two_and_never_clip():
    x = make_x((16, 256), torch.float32, seed=3)
    q, s = per_token_group_quant(x, 128, ue8m0=True, platform=CPU)
    mant, _ = torch.frexp(s)
    assert bool((mant == 0.5).all())
    plain, _ = per_token_group_quant(x, 128, platform=CPU)
    # rounding the scale up keeps |x| / s <= 448: no code reaches beyond the plain scale's range
    assert bool((q.float().abs() <= 448).all()) and bool((s >= per_token_group_quant(x, 128, platform=CPU)[1]).all())
    assert plain.shape == q.shape


@pytest.mark.parametrize("layout", ["row", "column", "tma"])
@pytest.mark.parametrize("shape", [(5, 256), (2, 3, 256), (256,)])
def test_scale_layouts(layout, shape):
    x = make_x(shape, torch.bfloat16, seed=11)
    q, s = per_token_group_quant(x, 128, column_major=layout != "row", tma_aligned=layout == "tma", platform=CPU)
    m = math.prod(shape[:-1])
    assert s.shape == (*shape[:-1], 2)
    s2 = s.reshape(m, 2)
    if layout == "row":
        assert s.is_contiguous()
    elif m > 1:
        assert s2.stride() == (1, m if layout == "column" else -(-m // 4) * 4)
    check(x, q, s, 128)


def test_fnuz_defaults_to_224_and_fp8_max_override():
    x = make_x((7, 128), torch.float32, seed=5)
    q, s = per_token_group_quant(x, 128, dtype=torch.float8_e4m3fnuz, platform=CPU)
    assert q.dtype == torch.float8_e4m3fnuz and float(q.float().abs().max()) == 224.0
    check(x, q, s, 128, dtype=torch.float8_e4m3fnuz)
    q2, s2 = per_token_group_quant(x, 128, fp8_max=240.0, dtype=torch.float8_e4m3fnuz, platform=CPU)
    check(x, q2, s2, 128, dtype=torch.float8_e4m3fnuz, fp8_max=240.0)
    rocm = LinearPlatform.parse("rocm:gfx942")
    assert per_token_group_quant(x, 128, backend="reference", platform=rocm)[0].dtype == torch.float8_e4m3fnuz


def test_eps_floor():
    x = torch.full((2, 128), 1e-13) * torch.linspace(1, 2, 128)
    q, s = per_token_group_quant(x, 128, eps=1e-6, platform=CPU)
    assert torch.equal(s, torch.full((2, 1), float(torch.tensor(1e-6) / 448)))
    check(x, q, s, 128, eps=1e-6)


def test_empty_batch():
    q, s = per_token_group_quant(torch.randn(0, 256), 128, platform=CPU)
    assert q.shape == (0, 256) and s.shape == (0, 2)


def test_custom_op_is_registered_and_traceable():
    from fp8_linear.custom_ops import per_token_group_quant_op

    x = make_x((6, 256), torch.bfloat16, seed=2)
    op = torch.ops.fp8_linear.per_token_group_quant
    q, s = op(x, 128, 1e-10, 448.0, False, True, False, torch.float8_e4m3fn)
    assert s.stride() == (1, 6)
    check(x, q, s, 128)
    torch.library.opcheck(per_token_group_quant_op, (x, 128, 1e-10, 448.0, True, True, True, torch.float8_e4m3fn))
    compiled = torch.compile(lambda t: op(t, 128, 1e-10, 448.0, False, True, False, torch.float8_e4m3fn),
                             backend="aot_eager", fullgraph=True)  # no graph break through the op
    q2, s2 = compiled(x)
    assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.randn(4, 256).t()}, "contiguous"),
        ({"x": torch.randn(4, 200)}, "multiple of group_size"),
        ({"group_size": 100}, "group_size must be one of"),
        ({"x": torch.randint(0, 5, (4, 256))}, "bfloat16, float16 or float32"),
        ({"tma_aligned": True}, "needs column_major"),
        ({"eps": 0.0}, "eps must be"),
        ({"fp8_max": 500.0}, "fp8_max must lie"),
        ({"dtype": torch.float16}, "dtype must be one of"),
        ({"backend": "cuda"}, "unknown quant backend"),
        ({"x": [1.0]}, "torch.Tensor"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"x": torch.randn(4, 256), "group_size": 128, **kwargs}
    x, g = args.pop("x"), args.pop("group_size")
    with pytest.raises(InvalidInputError, match=match):
        per_token_group_quant(x, g, platform=CPU, **args)


def test_platform_defaults():
    from fp8_linear.quant import describe_backend

    assert "custom_op" not in describe_backend(CPU) and "reference" in describe_backend(CPU)
    assert "fp8_linear.per_token_group_quant" in describe_backend(LinearPlatform.parse("xpu", triton=True))
    assert "Triton kernel" in describe_backend(LinearPlatform.parse("cuda:9.0", triton=True))
    assert "reference" in describe_backend(LinearPlatform.parse("cuda:9.0", triton=False))
    assert fp8_linear.triton_options(LinearPlatform.parse("cuda:8.0")).fp8_as_bytes


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("layout", ["row", "column", "tma"])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_triton_matches_the_contract(device, dtype, g, layout, ue8m0):
    x = make_x((33, 4 * 128), dtype, seed=g + 3 * ue8m0).to(device)
    q, s = per_token_group_quant(x, g, column_major=layout != "row", tma_aligned=layout == "tma", ue8m0=ue8m0,
                                 backend="triton")
    if layout != "row":
        assert s.stride() == (1, 33 if layout == "column" else 36)
    check(x.cpu(), q.cpu(), s.cpu(), g, ue8m0=ue8m0)


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(1, 128), (2, 3, 256), (200, 64)])
def test_triton_shapes(device, shape):
    x = make_x(shape, torch.bfloat16, seed=9).to(device)
    q, s = per_token_group_quant(x, 64, backend="triton")
    check(x.cpu(), q.cpu(), s.cpu(), 64)


@pytest.mark.triton
def test_triton_fnuz(device):
    if device == "cuda":
        pytest.skip("e4m3fnuz conversion is a ROCm / interpreter feature")
    x = make_x((9, 256), torch.bfloat16, seed=4)
    q, s = per_token_group_quant(x, 128, dtype=torch.float8_e4m3fnuz, backend="triton")
    check(x, q, s, 128, dtype=torch.float8_e4m3fnuz)


@pytest.mark.triton
def test_triton_splits_launches_past_the_grid_limit(device, monkeypatch):
    from fp8_linear.kernels import group_quant

    monkeypatch.setattr(group_quant, "MAX_GRID_Y", 3)  # 3 row blocks per launch
    x = make_x((300, 256), torch.bfloat16, seed=12).to(device)
    for column_major in (False, True):
        q, s = per_token_group_quant(x, 64, column_major=column_major, backend="triton")
        check(x.cpu(), q.cpu(), s.cpu(), 64)
