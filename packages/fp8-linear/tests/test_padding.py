"""M padding without per-call copies: the quantizer's storage holds round_up(M, 4) rows (FP8 always,
scales in the TMA-aligned layout) with defined padding, and the cuBLAS path reads it as a strided
view. cuBLAS itself is faked (torch._scaled_mm / F.scaled_mm monkeypatched) by a float64 GEMM that
enforces cuBLAS's layout rules and records the data pointers it is handed."""

from __future__ import annotations

import math

import pytest
import torch

from fp8_linear import LinearPlatform, ScaledMMApi, per_token_group_quant
from fp8_linear._generated_variants import Granularity
from fp8_linear.problem import GemmProblem
from fp8_linear.reference import group_scales, quantize_groups, ue8m0_round_up
from fp8_linear.validation import GemmOperands
from fp8_linear.variant_types import ScaleDtype

CPU = LinearPlatform.parse("cpu")
ZERO_SCALE = float(torch.tensor(1e-10, dtype=torch.float32) / 448.0)


def make_x(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3).to(torch.bfloat16)


def check_padded(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, g: int, layout: str, ue8m0: bool) -> None:
    k = int(x.shape[-1])
    m = math.prod(x.shape[:-1])
    rows = -(-m // 4) * 4
    # outputs as before: the unpadded reference math, bit for bit; shape and strides unchanged
    scale = group_scales(x, g, eps=1e-10, fp8_max=448.0, ue8m0=ue8m0)
    expected_q = quantize_groups(x, scale, g, fp8_max=448.0, dtype=torch.float8_e4m3fn)
    # q and s may live on a GPU: storage checks on them, value checks on CPU copies
    assert q.shape == x.shape and q.is_contiguous()
    assert torch.equal(q.cpu().view(torch.uint8), expected_q.view(torch.uint8))
    assert torch.equal(s.contiguous().cpu(), scale)
    # q's storage: round_up(M, 4) rows, the padding ones +0
    assert q.untyped_storage().nbytes() == rows * k
    full = q.as_strided((rows, k), (k, 1)).cpu().view(torch.uint8)
    assert not full[m:].any()
    if layout == "tma":
        groups = k // g
        padded = s.as_strided((rows, groups), (1, rows)).cpu()
        assert s.untyped_storage().nbytes() == rows * groups * 4
        want = float(ue8m0_round_up(torch.tensor([ZERO_SCALE]))[0]) if ue8m0 else ZERO_SCALE
        assert bool((padded[m:] == want).all())
        if ue8m0:
            assert math.frexp(want)[0] == 0.5


@pytest.mark.parametrize("shape", [(1, 256), (2, 256), (3, 256), (5, 256), (2, 3, 256), (3, 1, 128)])
@pytest.mark.parametrize("layout", ["row", "column", "tma"])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_reference_storage_is_padded(shape, layout, ue8m0):
    x = make_x(shape, seed=sum(shape))
    q, s = per_token_group_quant(x, 64, column_major=layout != "row", tma_aligned=layout == "tma", ue8m0=ue8m0,
                                 backend="reference", platform=CPU)
    check_padded(x, q, s, 64, layout, ue8m0)


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(1, 256), (2, 256), (3, 256), (5, 256), (2, 3, 256)])
@pytest.mark.parametrize("layout", ["row", "column", "tma"])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_triton_storage_is_padded(device, shape, layout, ue8m0):
    x = make_x(shape, seed=sum(shape)).to(device)
    q, s = per_token_group_quant(x, 64, column_major=layout != "row", tma_aligned=layout == "tma", ue8m0=ue8m0,
                                 backend="triton")
    check_padded(x.cpu(), q, s, 64, layout, ue8m0)
    ref = per_token_group_quant(x.cpu(), 64, column_major=layout != "row", tma_aligned=layout == "tma",
                                ue8m0=ue8m0, backend="reference", platform=CPU)
    rows = -(-math.prod(shape[:-1]) // 4) * 4
    assert torch.equal(q.as_strided((rows, 256), (256, 1)).cpu().view(torch.uint8),
                       ref[0].as_strided((rows, 256), (256, 1)).view(torch.uint8))


@pytest.mark.triton
def test_triton_padding_across_chunked_launches(device, monkeypatch):
    from fp8_linear.kernels import group_quant

    monkeypatch.setattr(group_quant, "MAX_GRID_Y", 3)  # 3 row blocks per launch
    x = make_x((301, 256), seed=13).to(device)
    for layout in ("row", "column", "tma"):
        q, s = per_token_group_quant(x, 64, column_major=layout != "row", tma_aligned=layout == "tma",
                                     backend="triton")
        check_padded(x.cpu(), q, s, 64, layout, False)


def test_custom_op_stays_unpadded():
    x = make_x((3, 256), seed=3)
    q, s = per_token_group_quant(x, 128, column_major=True, backend="custom_op", platform=CPU)
    assert q.untyped_storage().nbytes() == 3 * 256
    check_padded_values = group_scales(x, 128, eps=1e-10, fp8_max=448.0, ue8m0=False)
    assert torch.equal(s.contiguous(), check_padded_values)


# --------------------------------------------------------------------------- the cuBLAS path


class FakeCublas:
    """torch._scaled_mm / F.scaled_mm blockwise stand-in: cuBLAS's rules asserted, float64 math."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def _gemm(self, a, b, scale_a, scale_b, out_dtype):
        rows, k = a.shape
        n = b.shape[1]
        kb = -(-k // 128)
        assert rows % 4 == 0, f"cuBLAS needs M % 4 == 0, got {rows}"
        assert a.stride() == (k, 1), a.stride()
        assert scale_a.shape == (rows, kb) and (scale_a.stride() == (1, rows) or kb == 1), scale_a.stride()
        self.calls.append((a.data_ptr(), scale_a.data_ptr()))
        sa = scale_a.to(torch.float64).repeat_interleave(128, dim=1)[:, :k]
        sb = scale_b.to(torch.float64)[:kb].repeat_interleave(128, dim=0)[:k].repeat_interleave(128, dim=1)[:, :n]
        return ((a.to(torch.float64) * sa) @ (b.to(torch.float64) * sb)).to(out_dtype)

    def v1(self, a, b, *, scale_a, scale_b, out_dtype):
        return self._gemm(a, b, scale_a, scale_b, out_dtype)

    def v2(self, a, b, scale_a, recipe_a, scale_b, recipe_b, *, output_dtype):
        return self._gemm(a, b, scale_a, scale_b, output_dtype)


@pytest.fixture
def fake(monkeypatch) -> FakeCublas:
    f = FakeCublas()
    monkeypatch.setattr(torch, "_scaled_mm", f.v1)
    monkeypatch.setattr(torch.nn.functional, "scaled_mm", f.v2)
    return f


def gemm(a, a_s, w, w_s, api):
    from fp8_linear.kernels.cublas import cublas_gemm

    m, k = a.shape
    problem = GemmProblem(m=m, n=w.shape[0], k=k, granularity=Granularity.BLOCK, block_size=(128, 128),
                          fp8_dtype=torch.float8_e4m3fn, scale_dtype=ScaleDtype.FLOAT32, out_dtype=torch.bfloat16,
                          has_bias=False)
    ops = GemmOperands(a=a, a_s=a_s, w=w, w_s=w_s, bias=None, out_shape=(m, w.shape[0]))
    return cublas_gemm(ops, problem, api=api)


def weights(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn((n, k), generator=gen) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    w_s = (torch.rand((-(-n // 128), k // 128), generator=gen) + 1) * 2.0**-10
    return w, w_s


@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("k", [512, 384])  # K/128 % 4 == 0: v1; else v2 with padded weight scales
def test_cublas_reads_the_padded_quantizer_output_without_copies(fake, m, k):
    w, w_s = weights(256, k, seed=k)
    x = make_x((m, k), seed=m)
    q, s = per_token_group_quant(x, 128, column_major=True, tma_aligned=True, backend="reference", platform=CPU)
    out = gemm(q, s, w, w_s, ScaledMMApi.V2)
    assert fake.calls[-1] == (q.data_ptr(), s.data_ptr())  # zero-copy: the same storage
    assert out.shape == (m, 256) and bool(torch.isfinite(out).all())

    # not padded: a plain tensor, (1, M) scales, plain row-major scales, a row-major view: the cat
    kb = k // 128
    plain_q = q.clone()
    wide = torch.zeros((m, kb + 3))
    wide[:, :kb] = s
    for a, a_s in ((plain_q, s), (q, s.t().contiguous().t()), (q, s.contiguous()), (plain_q, wide[:, :kb])):
        again = gemm(a, a_s, w, w_s, ScaledMMApi.V2)
        assert torch.equal(again, out)
        if m % 4:
            assert fake.calls[-1] != (a.data_ptr(), a_s.data_ptr())
    # a row-major FP8 view with a row stride other than K: never read as (K, 1)-strided storage
    wide_q = torch.zeros((m, 2 * k), dtype=torch.uint8)
    wide_q[:, :k] = q.view(torch.uint8)
    assert torch.equal(gemm(wide_q.view(torch.float8_e4m3fn)[:, :k], s, w, w_s, ScaledMMApi.V2), out)

    # NaN planted in the padding rows never reaches the output
    rows = -(-m // 4) * 4
    if rows != m:
        q.as_strided((rows, k), (k, 1)).view(torch.uint8)[m:] = 0x7F  # e4m3fn NaN
        s.as_strided((rows, kb), (1, rows))[m:] = float("nan")
        assert torch.equal(gemm(q, s, w, w_s, ScaledMMApi.V2), out)
        assert fake.calls[-1] == (q.data_ptr(), s.data_ptr())


def test_cublas_e8m0_activation_scales_are_upcast_and_padded(fake):
    from fp8_linear.fp8 import e8m0_to_float32

    w, w_s = weights(128, 512, seed=1)
    x = make_x((3, 512), seed=1)
    q, _ = per_token_group_quant(x, 128, backend="reference", platform=CPU)
    e8 = torch.randint(118, 124, (3, 4), dtype=torch.uint8)
    e8 = e8.view(torch.float8_e8m0fnu) if hasattr(torch, "float8_e8m0fnu") else e8
    out = gemm(q, e8, w, w_s, ScaledMMApi.V2)
    assert torch.equal(out, gemm(q, e8m0_to_float32(e8), w, w_s, ScaledMMApi.V2))
