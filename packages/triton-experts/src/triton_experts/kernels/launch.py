"""Thin launcher: validate operands, then run one generated grouped-GEMM variant."""

from __future__ import annotations

import os

import torch

from ..align import Alignment
from ..tuning import LaunchConfig


def grouped_gemm(
    *,
    variant: str,
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    zero: torch.Tensor | None,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    topk_weights: torch.Tensor | None,
    alignment: Alignment,
    top_k: int,
    n: int,
    k: int,
    group_k: int,
    config: LaunchConfig,
) -> None:
    """``out[row, :n] (+)= A[row // top_k] @ W[e].T`` for every aligned row (see the kernels' docstring).

    ``a`` [M, K] (quantized per variant), ``weight`` [E, N, K] (or [E, N, K/2] packed), ``out``
    [M * top_k, N]; rows not listed in the alignment are left untouched.
    """
    from ._generated_moe import KERNELS, VARIANTS

    kernel = KERNELS[variant]
    meta = VARIANTS[variant]
    if a.dim() != 2 or a.shape[1] != k:
        raise ValueError(f"A must be [M, {k}], got {list(a.shape)}")
    if out.shape != (a.shape[0] * top_k, n):
        raise ValueError(f"out must be [{a.shape[0] * top_k}, {n}], got {list(out.shape)}")
    if weight.stride(-1) != 1:
        raise ValueError("weights must be contiguous along K")
    bk = config.BLOCK_K
    if meta["k_granule"] and meta["k_granule"] % bk:
        raise ValueError(f"{variant}: BLOCK_K={bk} must divide the {meta['k_granule']}-wide scale groups")
    if meta["b"] == "int_group" and group_k % bk:
        raise ValueError(f"{variant}: BLOCK_K={bk} must divide the quantization group {group_k}")
    dummy, dummy_u8 = _dummies(a.device)
    a_s = a_scale if a_scale is not None else dummy
    s = scale if scale is not None else dummy
    z = zero if zero is not None else dummy_u8
    b = bias if bias is not None else dummy
    tw = topk_weights if topk_weights is not None else dummy
    a_s2 = a_s if a_s.dim() == 2 else a_s.reshape(-1, 1)
    s3 = s if s.dim() == 3 else (s.reshape(s.shape[0], -1, 1) if s.dim() == 2 else s.reshape(-1, 1, 1))
    b2 = b if b.dim() == 2 else b.reshape(1, -1)
    num_m_blocks = alignment.sorted_ids.numel() // config.BLOCK_M
    grid = (num_m_blocks * triton_cdiv(n, config.BLOCK_N),)
    kernel[grid](
        a, a_s, weight, s, z, b, out, tw,
        alignment.sorted_ids, alignment.expert_ids, alignment.num_post_padded,
        n, k, alignment.num_valid, num_m_blocks,
        a.stride(0), a.stride(1), a_s2.stride(0), a_s2.stride(1),
        weight.stride(0), weight.stride(1), weight.stride(2),
        s3.stride(0), s3.stride(1), s3.stride(2),
        b2.stride(0), b2.stride(1),
        out.stride(0), out.stride(1),
        GROUP_K=group_k, TOP_K=top_k, MUL_WEIGHT=topk_weights is not None, HAS_BIAS=bias is not None,
        DOT_UPCAST=_INTERPRETED and a.dtype == torch.bfloat16,
        BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N, BLOCK_K=bk, GROUP_M=config.GROUP_M,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DUMMIES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _dummies(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholders for absent operands (never read: the kernel's constexpr flags skip them)."""
    if device not in _DUMMIES:
        _DUMMIES[device] = (torch.zeros(1, device=device, dtype=torch.float32),
                            torch.zeros(1, 1, 1, device=device, dtype=torch.uint8))
    return _DUMMIES[device]


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
