"""A GEMM problem as a value: what kernel selection and config lookup look at."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._generated_variants import VARIANTS, Granularity
from .variant_types import GemmVariant, ScaleDtype

OUT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True, kw_only=True)
class GemmProblem:
    """``out [M, N] = a [M, K] @ w [N, K]^T`` with the scales of ``granularity``.

    ``block_size``: the weight block ``(bn, bk)`` of the ``block`` / ``mx`` granularities (None for
    per-token/per-channel and per-tensor scales). ``scale_dtype``: E8M0 when both scales are E8M0
    bytes, else float32 (a single E8M0 operand is upcast before launch). ``fp8_dtype``: the
    operands' FP8 dtype.
    """

    m: int
    n: int
    k: int
    granularity: Granularity
    block_size: tuple[int, int] | None
    fp8_dtype: torch.dtype
    scale_dtype: ScaleDtype
    out_dtype: torch.dtype
    has_bias: bool

    @property
    def variant(self) -> GemmVariant:
        return VARIANTS[self.granularity]

    @property
    def group_k(self) -> int | None:
        """bk for the k_group granularities, None otherwise."""
        return None if self.block_size is None else self.block_size[1]

    def __str__(self) -> str:
        block = f" {self.block_size[0]}x{self.block_size[1]}" if self.block_size else ""
        fp8 = str(self.fp8_dtype).replace("torch.", "")
        out = str(self.out_dtype).replace("torch.", "")
        bias = ", bias" if self.has_bias else ""
        return (f"M={self.m} N={self.n} K={self.k}, {self.granularity.value}{block} scales ({self.scale_dtype.value}), "
                f"{fp8} -> {out}{bias}")
