"""``block_scaled_mm``: the public block-scaled FP8 GEMM."""

from __future__ import annotations

import torch

from ._generated_variants import Granularity
from .platform import LinearPlatform
from .registry import KernelChoice, select_kernel
from .validation import GemmOperands, check_gemm


def block_scaled_mm(
    a_q: torch.Tensor,
    a_s: torch.Tensor,
    w_q: torch.Tensor,
    w_s: torch.Tensor,
    *,
    block_size: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    kernel: str | None = None,
    granularity: Granularity | str | None = None,
    platform: LinearPlatform | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """``out = dequant(a_q, a_s) @ dequant(w_q, w_s)^T (+ bias)``, accumulated in float32.

    Args:
        a_q: FP8 activations [..., K], contiguous (``float8_e4m3fn``, or ``float8_e4m3fnuz`` on ROCm).
        a_s: activation scales: [..., K/bk] for ``block`` and ``mx`` (any strides: row- or
            column-major), [..., 1] per token, or one value per tensor.
        w_q: FP8 weight [N, K] (nn.Linear orientation, contiguous), same dtype as ``a_q``.
        w_s: weight scales: [ceil(N/bn), K/bk] for ``block``, [N, K/32] for ``mx``, [N, 1] per
            channel, one value per tensor.
        block_size: ``(bn, bk)`` of the weight block; activation groups are 1 x bk and K must be a
            multiple of bk. Ignored by the per-token and per-tensor granularities.
        out_dtype: bfloat16 (default), float16 or float32.
        bias: optional [N] (bf16 / fp16 / fp32), added in float32 before the output cast.
        kernel: a registry name to force (``"cublas"``, ``"triton"``, ``"reference"``), None for auto.
        granularity: ``"block"``, ``"token_channel"``, ``"tensor"`` or ``"mx"``; None infers it from
            the scales (E8M0 scales [.., K/32] are MX; see :func:`fp8_linear.validation.infer_granularity`).
        platform: what to select for (default: detected).
        check_values: scan the scales for NaN / inf / negatives (E8M0: 0xFF) first. This costs a
            device sync; pass False in CUDA graphs and hot loops.

    Scale dtypes: float32, or E8M0 (uint8 / float8_e8m0fnu) for ``block`` and ``mx``; E8M0 is
    upcast to float32 where a kernel or platform needs it.

    Returns:
        ``a_q.shape[:-1] + (N,)`` of ``out_dtype``.

    Raises:
        InvalidInputError: bad operands (before any launch).
        KernelSelectionError: no kernel (or not the forced one) serves the problem here.
    """
    ops, problem = check_gemm(a_q, a_s, w_q, w_s, block_size=block_size, out_dtype=out_dtype, bias=bias,
                              granularity=granularity, check_values=check_values)
    choice = select_kernel(problem, platform=platform, force=kernel)
    return run_choice(choice, ops).reshape(ops.out_shape)


def run_choice(choice: KernelChoice, ops: GemmOperands, *, w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
    """Run a selected kernel on validated operands; [M, N]."""
    return choice.implementation.run(ops, choice.problem, choice, w_s_padded=w_s_padded)
