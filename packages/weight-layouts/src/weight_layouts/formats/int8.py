"""``int8-channel``: compressed-tensors int-quantized (W8A8 INT8), symmetric per output channel.

``weight`` int8 [..., N, K] and ``weight_scale`` [..., N, 1]; ``w = int8 * scale``.

Encode: ``scale = amax(row) / 127`` rounded DOWN onto the scale dtype (at most 16 significant
bits), codes ``clamp(round_half_away(w / scale), -127, 127)``. Rounding the scale down keeps the
row's extreme element at code +-127, which makes ``encode(decode(t)) == t`` exact.

Error bound (every element of a row with scale ``s``): ``|w - decode(encode(w))| <= s/2 +
127 * ulp(s)`` (half a step, plus the clamp of the row's extreme by the scale's round-down), where
``ulp(s)`` is the spacing of the scale grid: ``P = min(16, precision of the scale dtype)``
significant bits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from weight_layouts.formats._common import (
    FLOAT_SCALE_DTYPES,
    check_dtype,
    check_ndim,
    check_scale_values,
    check_shape,
    fit_symmetric,
    quantize_int,
)
from weight_layouts.formats.base import CheckpointFormat, DecodedShape, FormatParams, check_float_dtype

INT8_QPOS = 127


@dataclasses.dataclass(frozen=True, kw_only=True)
class Int8Params(FormatParams):
    """Params of ``int8-channel``.

    scale_dtype: dtype of ``weight_scale``; encode writes float32 when None; decode accepts
        float32 / bfloat16 / float16 when None, else exactly this dtype.
    """

    scale_dtype: torch.dtype | None = None

    def check(self, fmt: str) -> None:
        check_float_dtype(fmt, "scale_dtype", self.scale_dtype, allowed=FLOAT_SCALE_DTYPES)


class Int8ChannelFormat(CheckpointFormat):
    """``weight`` int8 [..., N, K] (symmetric), ``weight_scale`` float [..., N, 1]."""

    name = "int8-channel"
    required_tensors = ("weight", "weight_scale")
    Params = Int8Params

    def _encode(self, weight: torch.Tensor, p: Int8Params) -> dict[str, torch.Tensor]:
        dtype = p.scale_dtype or torch.float32
        amax = weight.to(torch.float64).abs().amax(dim=-1, keepdim=True)
        s = fit_symmetric(amax, INT8_QPOS, dtype, fmt=self.name, name="weight_scale")
        q = quantize_int(weight, s, 0, -INT8_QPOS, INT8_QPOS).to(torch.int8)
        return {"weight": q.contiguous(), "weight_scale": s.contiguous()}

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: Int8Params) -> DecodedShape:
        w = tensors["weight"]
        check_dtype(self.name, "weight", w, (torch.int8,))
        check_ndim(self.name, "weight", w, 2, "[..., N, K]")
        batch, n, k = tuple(w.shape[:-2]), int(w.shape[-2]), int(w.shape[-1])
        s = tensors["weight_scale"]
        check_dtype(self.name, "weight_scale", s, (p.scale_dtype,) if p.scale_dtype else FLOAT_SCALE_DTYPES)
        check_shape(self.name, "weight_scale", s, (*batch, n, 1), f"[..., N, 1]: one scale per output row, N={n}")
        check_scale_values(self.name, "weight_scale", s)
        return DecodedShape(batch, n, k)

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: Int8Params, shape: DecodedShape) -> torch.Tensor:
        return tensors["weight"].to(torch.float32) * tensors["weight_scale"].to(torch.float32)
