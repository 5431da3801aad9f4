"""Triton per-token-group FP8 quantization (the contract is in :mod:`fp8_linear.reference`).

One program quantizes a [BLOCK_M, G] tile: BLOCK_M rows of one group column. The scale is
``max(absmax, eps) / fp8_max`` (IEEE division), optionally rounded up to a power of two; the
quantized value is ``clamp(x / scale)`` cast to FP8, the quotient correctly rounded (reciprocal
plus one FMA correction, cheaper than a division per element). Scales are stored through
their two strides, so row-major, column-major and TMA-aligned layouts are one kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tl_helpers import round_to_fp8_grid

MAX_GRID_Y = 65535


@triton.jit
def _group_quant_kernel(
    x_ptr, q_ptr, s_ptr,
    M, K,
    stride_xm, stride_qm, stride_sm, stride_sg,
    eps, fp8_max,
    G: tl.constexpr, BLOCK_M: tl.constexpr, UE8M0: tl.constexpr, FNUZ: tl.constexpr,
    EXACT_ROUNDING: tl.constexpr,
):
    group = tl.program_id(0)  # neighbouring programs read neighbouring groups of the same rows
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = group * G + tl.arange(0, G)
    row_ok = rows < M
    mask = row_ok[:, None]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    absmax = tl.max(tl.abs(x), axis=1)
    scale = tl.math.div_rn(tl.maximum(absmax, eps), fp8_max)
    if UE8M0:
        bits = scale.to(tl.int32, bitcast=True)
        up = ((bits + 0x7FFFFF) & 0x7F800000).to(tl.float32, bitcast=True)
        scale = tl.where((bits & 0x7F800000) == 0x7F800000, scale, up)  # inf and NaN stay
    # x / scale, correctly rounded, without a per-element IEEE division: the correctly rounded
    # reciprocal, a product within one ulp, and one FMA correction (Markstein's theorem).
    inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)[:, None]
    q0 = x * inv
    y = tl.fma(tl.fma(-q0, scale[:, None], x), inv, q0)
    y = tl.where(x == 0.0, q0, y)  # keeps -0.0 (the correction would add +0)
    y = tl.minimum(tl.maximum(y, -fp8_max), fp8_max)
    if EXACT_ROUNDING:
        y = round_to_fp8_grid(y, FNUZ)
    tl.store(q_ptr + rows64[:, None] * stride_qm + cols[None, :], y.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + rows * stride_sm + group * stride_sg, scale, mask=row_ok)


def launch_group_quant(
    x2: torch.Tensor, q2: torch.Tensor, s2: torch.Tensor, *, group_size: int, eps: float, fp8_max: float,
    ue8m0: bool, exact_rounding: bool,
) -> None:
    """Quantize ``x2`` [M, K] (K contiguous) into ``q2`` [M, K] and scales ``s2`` [M, K/G] (any strides)."""
    m, k = x2.shape
    groups = k // group_size
    block_m = max(1, min(4096 // group_size, triton.next_power_of_2(m)))
    rows_per_launch = MAX_GRID_Y * block_m  # grid dim 1 is limited to 65535 blocks
    for start in range(0, m, rows_per_launch):
        x, q, s = (t[start:start + rows_per_launch] for t in (x2, q2, s2))
        rows = x.shape[0]
        _group_quant_kernel[(groups, triton.cdiv(rows, block_m))](
            x, q, s, rows, k,
            x.stride(0), q.stride(0), s.stride(0), s.stride(1),
            eps, fp8_max,
            G=group_size, BLOCK_M=block_m, UE8M0=ue8m0, FNUZ=q2.dtype == torch.float8_e4m3fnuz,
            EXACT_ROUNDING=exact_rounding,
            num_warps=4 if group_size * block_m >= 2048 else 2,
        )
