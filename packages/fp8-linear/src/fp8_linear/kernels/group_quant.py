"""Triton per-token-group FP8 quantization (the contract is in :mod:`fp8_linear.reference`).

One program quantizes a [BLOCK_M, G] tile: BLOCK_M rows of one group column. The scale is
``max(absmax, eps) / fp8_max`` (IEEE division), optionally rounded up to a power of two; the
quantized value is ``clamp(x / scale)`` cast to FP8, the quotient correctly rounded (reciprocal
plus one FMA correction, cheaper than a division per element). Scales are stored through
their two strides, so row-major, column-major and TMA-aligned layouts are one kernel.

Padding rows: ``x`` has ``M`` rows, ``q``'s storage ``M_Q >= M`` and the scales' ``M_S >= M``
(``round_up(M, 4)`` for the TMA-aligned layout). Rows past ``M`` load zeros, so they store
``q = +0`` and the zero group's scale ``eps / fp8_max``: cuBLAS, which needs M a multiple of 4,
then reads the quantizer's output without a padding copy.
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
    M, M_Q, M_S, K,
    stride_xm, stride_qm, stride_sm, stride_sg,
    eps, fp8_max,
    G: tl.constexpr, BLOCK_M: tl.constexpr, UE8M0: tl.constexpr, FNUZ: tl.constexpr,
    EXACT_ROUNDING: tl.constexpr,
):
    group = tl.program_id(0)  # neighbouring programs read neighbouring groups of the same rows
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = group * G + tl.arange(0, G)
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=(rows < M)[:, None],
                other=0.0).to(tl.float32)
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
    tl.store(q_ptr + rows64[:, None] * stride_qm + cols[None, :], y.to(q_ptr.dtype.element_ty),
             mask=(rows < M_Q)[:, None])
    tl.store(s_ptr + rows * stride_sm + group * stride_sg, scale, mask=rows < M_S)


def launch_group_quant(
    x2: torch.Tensor, q2: torch.Tensor, s2: torch.Tensor, *, group_size: int, eps: float, fp8_max: float,
    ue8m0: bool, exact_rounding: bool,
) -> None:
    """Quantize ``x2`` [M, K] (K contiguous) into ``q2`` [M_Q, K] and scales ``s2`` [M_S, K/G] (any
    strides), ``M_Q, M_S >= M``: rows past M are written as the quantization of zeros."""
    m, k = x2.shape
    m_q = q2.shape[0]
    assert m_q >= m and s2.shape[0] >= m
    groups = k // group_size
    block_m = max(1, min(4096 // group_size, triton.next_power_of_2(m_q)))
    rows_per_launch = MAX_GRID_Y * block_m  # grid dim 1 is limited to 65535 blocks
    for start in range(0, m_q, rows_per_launch):
        # each chunk covers q's storage rows [start, start + rows_per_launch); x and the scales
        # pass how many of them they hold (possibly none: an empty slice, every access masked)
        x, q, s = (t[min(start, t.shape[0]):start + rows_per_launch] for t in (x2, q2, s2))
        _group_quant_kernel[(groups, triton.cdiv(q.shape[0], block_m))](
            x, q, s, x.shape[0], q.shape[0], s.shape[0], k,
            x2.stride(0), q2.stride(0), s2.stride(0), s2.stride(1),
            eps, fp8_max,
            G=group_size, BLOCK_M=block_m, UE8M0=ue8m0, FNUZ=q2.dtype == torch.float8_e4m3fnuz,
            EXACT_ROUNDING=exact_rounding,
            num_warps=4 if group_size * block_m >= 2048 else 2,
        )
