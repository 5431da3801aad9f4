"""Activation-scale layouts of per-token-group quantization.

For ``x`` [..., K] with ``G = K / group_size`` groups and ``M`` = product of the leading dims, the
scales are a float32 tensor of logical shape ``[..., G]`` laid out as:

* row-major (default): contiguous, strides ``(..., G, 1)``;
* column-major: group-major storage ``[G, M]``, i.e. 2-D strides ``(1, M)`` (cuBLAS, DeepGEMM);
* TMA-aligned column-major: storage ``[G, round_up(M, 4)]``, 2-D strides ``(1, round_up(M, 4))``
  (16-byte aligned columns). The quantizers write the padding entries too (the scale of an
  all-zero group, ``eps / fp8_max``), so cuBLAS can read ``round_up(M, 4)`` rows of this storage
  without a copy (:mod:`fp8_linear.kernels.cublas`).
"""

from __future__ import annotations

import math

import torch


def allocate_scales(
    lead: tuple[int, ...], groups: int, *, column_major: bool, tma_aligned: bool, device: torch.device
) -> torch.Tensor:
    """An uninitialised float32 scale tensor of shape ``(*lead, groups)`` in the layout above."""
    return allocate_scale_storage(lead, groups, column_major=column_major, tma_aligned=tma_aligned,
                                  device=device)[0]


def allocate_scale_storage(
    lead: tuple[int, ...], groups: int, *, column_major: bool, tma_aligned: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_s, s2)``: :func:`allocate_scales`'s tensor and a 2-D ``[rows, groups]`` view of all its
    storage rows (``rows = round_up(M, 4)`` for the TMA-aligned layout, else ``M``), strides as ``x_s``'s."""
    m = math.prod(lead)
    if not column_major:
        x_s = torch.empty((*lead, groups), dtype=torch.float32, device=device)
        return x_s, x_s.view(m, groups)
    rows = -(-m // 4) * 4 if tma_aligned else m
    storage = torch.empty((groups, max(rows, 1)), dtype=torch.float32, device=device)
    return storage[:, :m].t().view(*lead, groups), storage[:, :rows].t()
