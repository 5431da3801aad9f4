"""Activation-scale layouts of per-token-group quantization.

For ``x`` [..., K] with ``G = K / group_size`` groups and ``M`` = product of the leading dims, the
scales are a float32 tensor of logical shape ``[..., G]`` laid out as:

* row-major (default): contiguous, strides ``(..., G, 1)``;
* column-major: group-major storage ``[G, M]``, i.e. 2-D strides ``(1, M)`` (cuBLAS, DeepGEMM);
* TMA-aligned column-major: storage ``[G, round_up(M, 4)]``, 2-D strides ``(1, round_up(M, 4))``
  (16-byte aligned columns).
"""

from __future__ import annotations

import math

import torch


def allocate_scales(
    lead: tuple[int, ...], groups: int, *, column_major: bool, tma_aligned: bool, device: torch.device
) -> torch.Tensor:
    """An uninitialised float32 scale tensor of shape ``(*lead, groups)`` in the layout above."""
    if not column_major:
        return torch.empty((*lead, groups), dtype=torch.float32, device=device)
    m = math.prod(lead)
    rows = -(-m // 4) * 4 if tma_aligned else m
    storage = torch.empty((groups, max(rows, 1)), dtype=torch.float32, device=device)
    return storage[:, :m].t().view(*lead, groups)
