"""Launch the generated Triton GEMM kernels (and the split-K reduce) for validated operands."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..fp8 import E4M3FNUZ, e8m0_to_float32, is_e8m0
from ..platform import TritonOptions
from ..problem import GemmProblem
from ..tuned import Engine, GemmConfig
from ..validation import GemmOperands
from ..variant_types import ScaleDtype, WeightScale
from ._generated_gemm import KERNELS
from .wgmma_gemm import wgmma_gemm, wgmma_unusable


@triton.jit
def _splitk_reduce(
    ws_ptr, bias_ptr, out_ptr, M, N, stride_ws, stride_om, stride_on,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[m, n] = sum_s ws[s, m, n] (+ bias[n]), cast to out's dtype; ws is [SPLIT_K, M, N] contiguous."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + s * stride_ws + offs, mask=mask, other=0.0)
    m = offs // N
    n = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + m.to(tl.int64) * stride_om + n * stride_on, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _prepare_scale(s: torch.Tensor, *, to_float32: bool) -> torch.Tensor:
    if is_e8m0(s.dtype):
        return e8m0_to_float32(s) if to_float32 else s.view(torch.uint8)
    return s


def triton_gemm(ops: GemmOperands, problem: GemmProblem, *, config: GemmConfig, options: TritonOptions,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``out`` [M, N] of ``problem.out_dtype`` (allocated when None) from validated operands."""
    m, n, k = problem.m, problem.n, problem.k
    if out is None:
        out = torch.empty((m, n), dtype=problem.out_dtype, device=ops.a.device)
    if m == 0:
        return out
    variant = problem.variant
    # Scales: E8M0 bytes stay bytes for the kernels that decode them, unless the platform wants
    # float32 (ROCm, XPU); a lone E8M0 operand is upcast (one SCALE_E8M0 flag covers both).
    native_e8m0 = (problem.scale_dtype is ScaleDtype.E8M0 and variant.scale_dtype is ScaleDtype.E8M0
                   and not options.upcast_e8m0)
    a_s = _prepare_scale(ops.a_s, to_float32=not native_e8m0)
    w_s = _prepare_scale(ops.w_s, to_float32=not native_e8m0)
    a, w = ops.a, ops.w
    if options.fp8_as_bytes:
        a, w = a.view(torch.uint8), w.view(torch.uint8)
    if problem.block_size is not None:
        group_n = problem.block_size[0] if variant.weight_scale is WeightScale.BLOCK else 1
        group_k = problem.block_size[1]
    else:
        group_n, group_k = 1, k
    a_strides = (a_s.stride(0), a_s.stride(1)) if a_s.ndim == 2 else (0, 0)
    w_strides = (w_s.stride(0), w_s.stride(1)) if w_s.ndim == 2 else (0, 0)
    if config.engine is Engine.WGMMA and wgmma_unusable(ops, problem, options, out, a_s, w_s) is None:
        wgmma_gemm(ops, problem, config, a_s, w_s, out)
        return out
    split = config.split_k
    target = out if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=out.device)
    if split == 1:
        stride_om, stride_on, stride_os = out.stride(0), out.stride(1), 0
    else:
        stride_om, stride_on, stride_os = n, 1, m * n
    bias = ops.bias if ops.bias is not None else out  # never read without HAS_BIAS
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), split)
    kernel = KERNELS[variant.name]
    kernel[grid](
        a, a_s, w, w_s, bias, target,
        m, n, k,
        a.stride(0), w.stride(0), stride_om, stride_on, stride_os,
        a_strides[0], a_strides[1], w_strides[0], w_strides[1],
        GROUP_N=group_n, GROUP_K=group_k,
        HAS_BIAS=ops.bias is not None, SPLIT_K=split, EVEN_K=k % config.block_k == 0,
        FP8_AS_BYTES=options.fp8_as_bytes, FNUZ=problem.fp8_dtype == E4M3FNUZ, SCALE_E8M0=native_e8m0,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
        K_UNROLL=config.k_unroll, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if split > 1:
        block = 1024
        _splitk_reduce[(triton.cdiv(m * n, block),)](
            target, bias, out, m, n, m * n, out.stride(0), out.stride(1),
            SPLIT_K=split, HAS_BIAS=ops.bias is not None, BLOCK=block, num_warps=4,
        )
    return out

