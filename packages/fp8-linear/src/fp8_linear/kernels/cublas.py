"""cuBLAS blockwise FP8 GEMM (1x128 activations x 128x128 weights) through torch, SM90 only.

torch 2.11 facts this path is built on (see the package README):

* cuBLASLt wants M a multiple of 4: M is padded (rows of A and of its scales) and the result
  sliced back.
* activation scales must be column-major ``[M, K/128]`` with strides ``(1, M)``.
* the v1 ``torch._scaled_mm`` silently returns wrong results when ``ceil(K/128) % 4 != 0``; the v2
  ``torch.nn.functional.scaled_mm`` validates the layout and takes the weight scales padded to
  ``[round_up(K/128, 4), ceil(N/128)]`` with strides ``(1, round_up(K/128, 4))``. This module
  uses v2 when present and v1 only when ``K/128`` is a multiple of 4; the registry refuses the
  rest with the reason.
* the bias is added afterwards in float32 (blockwise cuBLAS bias support is not relied on).
"""

from __future__ import annotations

import torch

from ..fp8 import e8m0_to_float32, is_e8m0
from ..platform import ScaledMMApi
from ..problem import GemmProblem
from ..validation import GemmOperands

BLOCK = 128


def padded_weight_scale(w_s: torch.Tensor) -> torch.Tensor:
    """Weight scales [N/128, K/128] -> the v2 layout: [round_up(K/128, 4), N/128], strides (1, padded).

    Padding columns hold 1.0 (never read for real K groups)."""
    w_s = e8m0_to_float32(w_s) if is_e8m0(w_s.dtype) else w_s.to(torch.float32)
    nb, kb = w_s.shape
    kb4 = -(-kb // 4) * 4
    if kb4 == kb and w_s.is_contiguous():
        return w_s.t()
    buf = torch.ones((nb, kb4), dtype=torch.float32, device=w_s.device)
    buf[:, :kb] = w_s
    return buf.t()


def _column_major_scales(a_s: torch.Tensor, rows: int) -> torch.Tensor:
    """[M, K/128] activation scales -> [rows, K/128] with strides (1, rows) (pad rows hold 1.0)."""
    m, kb = a_s.shape
    if rows == m and (a_s.stride(0) == 1 and (a_s.stride(1) == m or kb == 1)):
        return a_s
    buf = torch.ones((kb, rows), dtype=torch.float32, device=a_s.device)
    buf[:, :m] = a_s.t()
    return buf.t()


def cublas_gemm(ops: GemmOperands, problem: GemmProblem, *, api: ScaledMMApi,
                w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
    """[M, N] of ``problem.out_dtype``; ``w_s_padded`` is :func:`padded_weight_scale` precomputed."""
    m, n, k = problem.m, problem.n, problem.k
    if m == 0:
        return torch.empty((0, n), dtype=problem.out_dtype, device=ops.a.device)
    rows = -(-m // 4) * 4
    a = ops.a
    if rows != m:
        a = torch.zeros((rows, k), dtype=a.dtype, device=a.device)
        a[:m] = ops.a
    a_s = ops.a_s
    if is_e8m0(a_s.dtype):
        a_s = e8m0_to_float32(a_s)
    a_s = _column_major_scales(a_s, rows)
    if api is ScaledMMApi.V2:
        functional = torch.nn.functional
        scale_b = w_s_padded if w_s_padded is not None else padded_weight_scale(ops.w_s)
        out = functional.scaled_mm(
            a, ops.w.t(), a_s, functional.ScalingType.BlockWise1x128, scale_b,
            functional.ScalingType.BlockWise128x128, output_dtype=problem.out_dtype,
        )
    else:
        w_s = e8m0_to_float32(ops.w_s) if is_e8m0(ops.w_s.dtype) else ops.w_s.contiguous()
        out = torch._scaled_mm(a, ops.w.t(), scale_a=a_s, scale_b=w_s.t(), out_dtype=problem.out_dtype)
    if rows != m:
        out = out[:m]
    if ops.bias is not None:
        out = (out.to(torch.float32) + ops.bias.to(torch.float32)).to(problem.out_dtype)
    return out
