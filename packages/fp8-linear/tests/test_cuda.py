"""On a real NVIDIA GPU: the cuBLAS path (including the K/128 % 4 != 0 shapes that torch 2.11's v1
_scaled_mm gets silently wrong, and M not a multiple of 4), automatic selection, and the Triton
kernels at DeepSeek-V3 sizes with the heuristic's split-K; all against float64."""

from __future__ import annotations

import pytest
import torch

from fp8_linear import Fp8BlockLinear, LinearPlatform, ScaledMMApi, block_scaled_mm, per_token_group_quant
from weight_layouts import encode

pytestmark = pytest.mark.cuda


def operands(h, m, n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    a, w = h.rand_fp8((m, k), gen), h.rand_fp8((n, k), gen)
    a_s = h.rand_scales((m, k // 128), gen)
    w_s = h.rand_scales((-(-n // 128), k // 128), gen)
    return a, a_s, w, w_s


def sm90() -> bool:
    return torch.cuda.get_device_capability(0) == (9, 0)


CUBLAS_SHAPES = [(1, 576, 512), (3, 2112, 640), (5, 256, 1152), (16, 7168, 2048), (130, 384, 640),
                 (64, 4096, 7168), (257, 1536, 1152)]


@pytest.mark.parametrize(("m", "n", "k"), CUBLAS_SHAPES, ids=str)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cublas(h, m, n, k, out_dtype):
    if not sm90():
        pytest.skip("cuBLAS blockwise FP8 is SM90-only")
    a, a_s, w, w_s = operands(h, m, n, k, seed=m + n + k)
    bias = torch.randn(n).to(out_dtype) if m % 2 else None
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block", bias=bias)
    col = a_s.t().contiguous().t()
    for scales in (a_s, col):  # row-major scales are transposed by the wrapper; column-major used as is
        out = block_scaled_mm(a.cuda(), scales.cuda(), w.cuda(), w_s.cuda(), out_dtype=out_dtype,
                              bias=None if bias is None else bias.cuda(), kernel="cublas")
        h.assert_close(out, expected, magnitude, bias=bias)


def test_cublas_v1_where_it_is_safe(h):
    if not sm90() or not hasattr(torch, "_scaled_mm"):
        pytest.skip("needs SM90 and torch._scaled_mm")
    v1 = LinearPlatform.parse("cuda:9.0", scaled_mm=ScaledMMApi.V1)
    a, a_s, w, w_s = operands(h, 8, 640, 1024, seed=1)  # K/128 = 8
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block")
    out = block_scaled_mm(a.cuda(), a_s.cuda(), w.cuda(), w_s.cuda(), kernel="cublas", platform=v1)
    h.assert_close(out, expected, magnitude)


WGMMA_SHAPES = [(1, 128, 128), (70, 304, 384), (200, 576, 1536), (1000, 2112, 512), (4100, 1032, 256)]


@pytest.mark.parametrize(("m", "n", "k"), WGMMA_SHAPES, ids=str)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("stages", [2, 4, 5])
def test_wgmma_kernel(h, m, n, k, out_dtype, stages, monkeypatch):
    """The Gluon kernel on sm90: ragged M and N (TMA zero fill and clipped stores), more tiles than
    SMs (persistent loop, ring phases across tiles), one K group, bias, row- and column-major
    activation scales; against float64. Asserts that the Gluon kernel itself ran."""
    if not sm90():
        pytest.skip("wgmma is SM90-only")
    import fp8_linear.kernels.triton_gemm as tg
    from fp8_linear.tuned import Engine, GemmConfig, fit_config
    from fp8_linear.validation import check_gemm

    launched = []
    original = tg.wgmma_gemm
    monkeypatch.setattr(tg, "wgmma_gemm", lambda *a, **kw: (launched.append(1), original(*a, **kw)))
    a, a_s, w, w_s = operands(h, m, n, k, seed=m + n + k + stages)
    bias = torch.randn(n).to(out_dtype) if m % 2 == 0 else None
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block", bias=bias)
    options = fp8_linear_options()
    for scales in (a_s, a_s.t().contiguous().t()):
        ops, problem = check_gemm(a.cuda(), scales.cuda(), w.cuda(), w_s.cuda(), block_size=(128, 128),
                                  out_dtype=out_dtype, bias=None if bias is None else bias.cuda(), granularity="block",
                                  check_values=True)
        cfg = fit_config(GemmConfig(block_m=128, block_n=128, block_k=128, num_stages=stages, engine=Engine.WGMMA),
                         problem.variant, k=k, group_k=problem.group_k)
        out = tg.triton_gemm(ops, problem, config=cfg, options=options)
        h.assert_close(out, expected, magnitude, bias=bias)
    assert launched == [1, 1]


def test_wgmma_refuses_what_tma_cannot_read(h):
    """An output row stride that is not 16-byte aligned (N = 300 in bf16) is refused with the reason."""
    if not sm90():
        pytest.skip("wgmma is SM90-only")
    from fp8_linear.kernels.wgmma_gemm import wgmma_unusable
    from fp8_linear.validation import check_gemm

    a, a_s, w, w_s = operands(h, 8, 300, 256, seed=3)
    ops, problem = check_gemm(a.cuda(), a_s.cuda(), w.cuda(), w_s.cuda(), block_size=(128, 128),
                              out_dtype=torch.bfloat16, bias=None, granularity="block", check_values=True)
    out = torch.empty((8, 300), dtype=torch.bfloat16, device="cuda")
    assert "16-byte aligned" in wgmma_unusable(ops, problem, fp8_linear_options(), out, ops.a_s, ops.w_s)


def fp8_linear_options():
    import fp8_linear

    return fp8_linear.triton_options(LinearPlatform.parse("cuda:9.0"))


@pytest.mark.parametrize(("m", "n", "k"), [(1, 2112, 7168), (64, 576, 7168), (512, 4096, 2048), (33, 300, 640)])
@pytest.mark.parametrize("kernel", [None, "triton"])
def test_auto_and_triton_at_model_sizes(h, m, n, k, kernel):
    a, a_s, w, w_s = operands(h, m, n, k, seed=m * 7 + k)
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block")
    out = block_scaled_mm(a.cuda(), a_s.cuda(), w.cuda(), w_s.cuda(), kernel=kernel)
    h.assert_close(out, expected, magnitude)


def test_module_auto(h):
    gen = torch.Generator().manual_seed(5)
    tensors = encode("fp8-block", torch.randn(2112, 1024, generator=gen) / 32, block_size=(128, 128))
    tensors["bias"] = torch.randn(2112, generator=gen).to(torch.bfloat16)
    layer = Fp8BlockLinear.from_checkpoint(tensors).cuda()
    for m in (1, 6, 256):
        x = torch.randn(m, 1024, generator=gen).to(torch.bfloat16)
        out = layer(x.cuda())
        x_q, x_s = per_token_group_quant(x, 128, backend="reference", platform=LinearPlatform.parse("cpu"))
        expected, magnitude = h.ref(x_q, x_s, tensors["weight"], tensors["weight_scale_inv"], granularity="block",
                                    bias=tensors["bias"])
        h.assert_close(out, expected, magnitude, bias=tensors["bias"])


def test_quant_large_is_exact_against_the_torch_reference():
    x = torch.randn(4096, 7168, device="cuda", dtype=torch.bfloat16) * 3
    cpu = LinearPlatform.parse("cpu")
    for column_major in (False, True):
        q, s = per_token_group_quant(x, 128, column_major=column_major)
        q_ref, s_ref = per_token_group_quant(x.cpu(), 128, backend="reference", platform=cpu)
        assert torch.equal(s.cpu(), s_ref)
        assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
