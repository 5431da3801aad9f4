"""Torch references: per-token-group quantization (the contract, bit for bit) and the GEMM.

Quantization contract (vLLM's ``per_token_group_quant_fp8``), per group of ``group_size``
consecutive elements along the last dim, computed in float32 (the input is read as float32):

* ``scale = max(absmax, eps) / fp8_max`` (true division; ``fp8_max`` 448 for e4m3fn, 224 for
  e4m3fnuz); with ``ue8m0`` the scale is rounded UP to a power of two (``2**ceil(log2(scale))``,
  taken exactly from the float's bits), so ``|x| / scale`` never exceeds ``fp8_max``;
* ``q = fp8(clamp(x / scale, -fp8_max, fp8_max))``, the float32 -> FP8 cast rounding to nearest
  even.

The GEMM reference dequantizes both operands to float32, multiplies in float32, adds the bias in
float32 and casts once.
"""

from __future__ import annotations

import torch

from .fp8 import e8m0_to_float32, is_e8m0
from .problem import GemmProblem
from .validation import GemmOperands
from .variant_types import ActivationScale, WeightScale


def ue8m0_round_up(scale: torch.Tensor) -> torch.Tensor:
    """Positive normal float32 scales -> the next power of two at or above (exact, on the bits;
    inf stays inf, NaN stays NaN)."""
    bits = scale.view(torch.int32)
    rounded = ((bits + 0x7FFFFF) & 0x7F800000).view(torch.float32)
    return torch.where(torch.isnan(scale), scale, rounded)


def group_scales(x: torch.Tensor, group_size: int, *, eps: float, fp8_max: float, ue8m0: bool) -> torch.Tensor:
    """float32 scales [..., K/group_size] of ``x`` [..., K] (see the module docstring)."""
    xf = x.to(torch.float32).unflatten(-1, (-1, group_size))
    absmax = xf.abs().amax(dim=-1)
    scale = torch.clamp(absmax, min=eps) / fp8_max
    return ue8m0_round_up(scale) if ue8m0 else scale


def quantize_groups(
    x: torch.Tensor, scale: torch.Tensor, group_size: int, *, fp8_max: float, dtype: torch.dtype
) -> torch.Tensor:
    """``fp8(clamp(x / scale, -fp8_max, fp8_max))`` per group, shaped like ``x``."""
    xf = x.to(torch.float32).unflatten(-1, (-1, group_size))
    q = torch.clamp(xf / scale.unsqueeze(-1), -fp8_max, fp8_max)
    return q.to(dtype).flatten(-2)


def dequantize_activation(a: torch.Tensor, a_s: torch.Tensor, problem: GemmProblem) -> torch.Tensor:
    """float32 [M, K] from FP8 ``a`` [M, K] and 2-D (or [1]) scales."""
    s = e8m0_to_float32(a_s) if is_e8m0(a_s.dtype) else a_s.to(torch.float32)
    variant = problem.variant
    if variant.activation_scale is ActivationScale.GROUP:
        assert problem.group_k is not None
        s = s.repeat_interleave(problem.group_k, dim=-1)
    return a.to(torch.float32) * s


def dequantize_weight(w: torch.Tensor, w_s: torch.Tensor, problem: GemmProblem) -> torch.Tensor:
    """float32 [N, K] from FP8 ``w`` [N, K] and its scales."""
    s = e8m0_to_float32(w_s) if is_e8m0(w_s.dtype) else w_s.to(torch.float32)
    n, k = problem.n, problem.k
    ws = problem.variant.weight_scale
    if ws is WeightScale.BLOCK:
        assert problem.block_size is not None
        bn, bk = problem.block_size
        s = s.repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]
    elif ws is WeightScale.ROW_GROUP:
        assert problem.group_k is not None
        s = s.repeat_interleave(problem.group_k, dim=1)
    return w.to(torch.float32) * s


def reference_gemm(ops: GemmOperands, problem: GemmProblem) -> torch.Tensor:
    """The reference kernel: dequantize, float32 matmul, float32 bias, one cast. [M, N]."""
    a = dequantize_activation(ops.a, ops.a_s, problem)
    w = dequantize_weight(ops.w, ops.w_s, problem)
    out = a @ w.t()
    if ops.bias is not None:
        out = out + ops.bias.to(torch.float32)
    return out.to(problem.out_dtype)


__all__ = [
    "dequantize_activation",
    "dequantize_weight",
    "group_scales",
    "quantize_groups",
    "reference_gemm",
    "ue8m0_round_up",
]
