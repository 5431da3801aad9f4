"""``torch.ops.fp8_linear.per_token_group_quant``: the quantization contract as a torch custom op.

Platforms whose Triton cannot convert to FP8 (Intel XPU: no fp8e4nv; CUDA below sm89) quantize
through this op: the torch reference math behind one opaque op with a fake implementation, so
``torch.compile`` traces it without graph breaks. Registered on first import of this module.
"""

import torch  # no `from __future__ import annotations`: torch reads the op's schema from real annotations

from .reference import group_scales, quantize_groups
from .scale_layout import allocate_scales


@torch.library.custom_op("fp8_linear::per_token_group_quant", mutates_args=())
def per_token_group_quant_op(
    x: torch.Tensor, group_size: int, eps: float, fp8_max: float, ue8m0: bool, column_major: bool,
    tma_aligned: bool, dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :func:`fp8_linear.per_token_group_quant`; ``x`` is contiguous with K % group_size == 0."""
    scale = group_scales(x, group_size, eps=eps, fp8_max=fp8_max, ue8m0=ue8m0)
    q = quantize_groups(x, scale, group_size, fp8_max=fp8_max, dtype=dtype)
    out_s = allocate_scales(tuple(x.shape[:-1]), x.shape[-1] // group_size, column_major=column_major,
                            tma_aligned=tma_aligned, device=x.device)
    out_s.copy_(scale)
    return q, out_s


@per_token_group_quant_op.register_fake
def _(x: torch.Tensor, group_size: int, eps: float, fp8_max: float, ue8m0: bool, column_major: bool,
      tma_aligned: bool, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    return q, allocate_scales(tuple(x.shape[:-1]), x.shape[-1] // group_size, column_major=column_major,
                              tma_aligned=tma_aligned, device=x.device)
