"""``dense``: an unquantized float weight stored as is (bf16 / fp16 / fp32 checkpoints)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from weight_layouts.formats._common import check_dtype, check_ndim
from weight_layouts.formats.base import CheckpointFormat, DecodedShape, FormatParams, check_float_dtype

DENSE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenseParams(FormatParams):
    """Params of ``dense``.

    dtype: encode casts ``weight`` to it (None keeps the input dtype); decode, when given,
        requires the stored ``weight`` to have it.
    """

    dtype: torch.dtype | None = None

    def check(self, fmt: str) -> None:
        check_float_dtype(fmt, "dtype", self.dtype, allowed=DENSE_DTYPES)


class DenseFormat(CheckpointFormat):
    """``weight``: float [..., N, K] in the checkpoint's dtype. Decode is exact (a float32 cast)."""

    name = "dense"
    required_tensors = ("weight",)
    Params = DenseParams
    requires_finite_weight = False

    def _encode(self, weight: torch.Tensor, p: DenseParams) -> dict[str, torch.Tensor]:
        return {"weight": weight.to(dtype=p.dtype or weight.dtype, copy=True).contiguous()}

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: DenseParams) -> DecodedShape:
        w = tensors["weight"]
        check_dtype(self.name, "weight", w, (p.dtype,) if p.dtype is not None else DENSE_DTYPES)
        check_ndim(self.name, "weight", w, 2, "[..., N, K]")
        return DecodedShape(tuple(w.shape[:-2]), int(w.shape[-2]), int(w.shape[-1]))

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: DenseParams, shape: DecodedShape) -> torch.Tensor:
        return tensors["weight"].to(torch.float32, copy=True)
