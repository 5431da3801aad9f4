"""FP8 E4M3 weights with float scales: ``fp8-tensor``, ``fp8-channel``, ``fp8-block``.

Dequantization multiplies: ``w = float(fp8) * scale`` (DeepSeek's ``weight_scale_inv`` too, despite
its name). Encode picks ``scale = amax / 448`` per tensor / row / block, rounded DOWN onto the scale
dtype with at most ``P = min(20, precision of the dtype)`` significant bits (bfloat16 8, float16
11), then rounds ``w / scale`` to the nearest E4M3 value, saturating at +-448. Rounding the scale
down makes the block max encode as exactly +-448, and with scales that short ``fp8 * scale`` is
exact in float32, so re-encoding a decoded weight gives back the same bytes for every scale dtype.
An all-zero row or block gets scale 1.0.

Error bound (every element, ``s`` its scale, ``ulp(s)`` the spacing of the P-bit scale grid):
``|w - decode(encode(w))| <= max(2**-4 * |w|, 2**-10 * s) + max(0, |w| - 448 * s)``: half an E4M3
ulp (3 mantissa bits; subnormal spacing ``2**-9`` below ``2**-6 * s``) plus the saturation of the
block max, which is below ``448 * ulp(s)`` (for normal scales at most ``448 * 2**(1-P) * s``,
i.e. under an eighth of the E4M3 step at 448 for bfloat16 and far less for float32).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from weight_layouts.formats._common import (
    FLOAT_SCALE_DTYPES,
    check_dtype,
    check_fp8_values,
    check_ndim,
    check_scale_values,
    check_shape,
    fp8_scale,
    to_fp8,
)
from weight_layouts.formats.base import (
    CheckpointFormat,
    DecodedShape,
    FormatError,
    FormatParams,
    check_float_dtype,
    check_int,
)

FP8_MAX = 448.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fp8Params(FormatParams):
    """Params of ``fp8-tensor`` and ``fp8-channel``.

    scale_dtype: dtype of ``weight_scale``. Encode writes float32 when None. Decode accepts any
        of float32 / bfloat16 / float16 when None (compressed-tensors stores the model dtype),
        else requires exactly this dtype.
    """

    scale_dtype: torch.dtype | None = None

    def check(self, fmt: str) -> None:
        check_float_dtype(fmt, "scale_dtype", self.scale_dtype, allowed=FLOAT_SCALE_DTYPES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fp8BlockParams(Fp8Params):
    """Params of ``fp8-block``.

    block_size: ``(bn, bk)``: rows (along N) and columns (along K) of one scale block
        (DeepSeek-V3 / Qwen3-FP8: ``weight_block_size = [128, 128]``). Dims need not be multiples:
        the scale grid is ``[ceil(N/bn), ceil(K/bk)]`` and edge blocks are partial.
    scale_dtype: as for ``fp8-tensor`` (float32 on encode when None).
    """

    block_size: tuple[int, int] = (128, 128)

    def check(self, fmt: str) -> None:
        super().check(fmt)
        bs = self.block_size
        if not isinstance(bs, (tuple, list)) or len(bs) != 2:
            raise FormatError(f"{fmt}: param block_size must be a pair (bn, bk), got {bs!r}")
        for i, v in enumerate(bs):
            check_int(fmt, f"block_size[{i}]", v)
            if v < 1:
                raise FormatError(f"{fmt}: param block_size must hold positive ints, got {tuple(bs)!r}")


class _Fp8Base(CheckpointFormat):
    """Shared encode / validate / decode of the FP8 formats; subclasses say where the scales live."""

    scale_name: str = "weight_scale"
    Params = Fp8Params

    # subclass hooks ---------------------------------------------------------------------------
    def _amax(self, w: torch.Tensor, p: Any) -> torch.Tensor:
        """Per-scale absolute max of ``w`` [..., N, K], shaped like the stored scale."""
        raise NotImplementedError

    def _scale_shape(self, batch: tuple[int, ...], n: int, k: int, p: Any) -> tuple[tuple[int, ...], str]:
        raise NotImplementedError

    def _expand(self, s: torch.Tensor, n: int, k: int, p: Any) -> torch.Tensor:
        """Stored scale -> something broadcastable to [..., N, K]."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    def _encode(self, weight: torch.Tensor, p: Any) -> dict[str, torch.Tensor]:
        dtype = p.scale_dtype or torch.float32
        n, k = weight.shape[-2:]
        s = fp8_scale(self._amax(weight, p), dtype, fmt=self.name, name=self.scale_name)
        q = to_fp8(weight.to(torch.float64) / self._expand(s, n, k, p).to(torch.float64))
        return {"weight": q.contiguous(), self.scale_name: s.contiguous()}

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: Any) -> DecodedShape:
        w = tensors["weight"]
        check_dtype(self.name, "weight", w, (torch.float8_e4m3fn,))
        check_ndim(self.name, "weight", w, 2, "[..., N, K]")
        batch, n, k = tuple(w.shape[:-2]), int(w.shape[-2]), int(w.shape[-1])
        s = tensors[self.scale_name]
        check_dtype(self.name, self.scale_name, s, (p.scale_dtype,) if p.scale_dtype else FLOAT_SCALE_DTYPES)
        expected, meaning = self._scale_shape(batch, n, k, p)
        if not (self.name == "fp8-tensor" and not batch and s.ndim == 0):  # old compressed-tensors files: scalar
            check_shape(self.name, self.scale_name, s, expected, meaning)
        check_scale_values(self.name, self.scale_name, s)
        check_fp8_values(self.name, "weight", w)
        return DecodedShape(batch, n, k)

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: Any, shape: DecodedShape) -> torch.Tensor:
        s = tensors[self.scale_name].to(torch.float32)
        if s.ndim == 0:
            s = s.reshape(1)
        return tensors["weight"].to(torch.float32) * self._expand(s, shape.n, shape.k, p)


class Fp8TensorFormat(_Fp8Base):
    """``fp8-tensor`` (compressed-tensors float-quantized, tensor strategy; ModelOpt FP8).

    ``weight`` float8_e4m3fn [..., N, K]; ``weight_scale`` [..., 1] (float32 by default; plain
    ``[1]`` for a 2-D weight; decode also accepts the scalar ``[]`` of older files).
    """

    name = "fp8-tensor"
    required_tensors = ("weight", "weight_scale")

    def _amax(self, w: torch.Tensor, p: Any) -> torch.Tensor:
        return w.abs().amax(dim=(-2, -1)).unsqueeze(-1)

    def _scale_shape(self, batch: tuple[int, ...], n: int, k: int, p: Any) -> tuple[tuple[int, ...], str]:
        return (*batch, 1), "[..., 1]: one scale per tensor"

    def _expand(self, s: torch.Tensor, n: int, k: int, p: Any) -> torch.Tensor:
        return s.unsqueeze(-1)


class Fp8ChannelFormat(_Fp8Base):
    """``fp8-channel`` (compressed-tensors float-quantized, channel strategy, FP8_DYNAMIC preset).

    ``weight`` float8_e4m3fn [..., N, K]; ``weight_scale`` [..., N, 1] (float32 by default).
    """

    name = "fp8-channel"
    required_tensors = ("weight", "weight_scale")

    def _amax(self, w: torch.Tensor, p: Any) -> torch.Tensor:
        return w.abs().amax(dim=-1, keepdim=True)

    def _scale_shape(self, batch: tuple[int, ...], n: int, k: int, p: Any) -> tuple[tuple[int, ...], str]:
        return (*batch, n, 1), f"[..., N, 1]: one scale per output row, N={n}"

    def _expand(self, s: torch.Tensor, n: int, k: int, p: Any) -> torch.Tensor:
        return s


class Fp8BlockFormat(_Fp8Base):
    """``fp8-block`` (DeepSeek-V3/R1, Qwen3-*-FP8, HF FineGrainedFP8).

    ``weight`` float8_e4m3fn [..., N, K]; ``weight_scale_inv`` float32 [..., ceil(N/bn),
    ceil(K/bk)], MULTIPLIED: ``w[n, k] = fp8[n, k] * s[n // bn, k // bk]``. Edge blocks of
    non-multiple dims are partial (their scale comes from the elements that exist).
    """

    name = "fp8-block"
    required_tensors = ("weight", "weight_scale_inv")
    scale_name = "weight_scale_inv"
    Params = Fp8BlockParams

    def _amax(self, w: torch.Tensor, p: Fp8BlockParams) -> torch.Tensor:
        bn, bk = p.block_size
        n, k = w.shape[-2:]
        gn, gk = math.ceil(n / bn), math.ceil(k / bk)
        a = torch.nn.functional.pad(w.abs(), (0, gk * bk - k, 0, gn * bn - n))
        a = a.reshape(*w.shape[:-2], gn, bn, gk, bk)
        return a.amax(dim=(-3, -1))

    def _scale_shape(self, batch: tuple[int, ...], n: int, k: int, p: Fp8BlockParams) -> tuple[tuple[int, ...], str]:
        bn, bk = p.block_size
        return (
            (*batch, math.ceil(n / bn), math.ceil(k / bk)),
            f"[..., ceil(N/{bn}), ceil(K/{bk})] with N={n}, K={k}, block_size=({bn}, {bk})",
        )

    def _expand(self, s: torch.Tensor, n: int, k: int, p: Fp8BlockParams) -> torch.Tensor:
        bn, bk = p.block_size
        return s.repeat_interleave(bn, dim=-2)[..., :n, :].repeat_interleave(bk, dim=-1)[..., :k]


class CtFp8BlockFormat(Fp8BlockFormat):
    """``ct-fp8-block``: compressed-tensors' float-quantized block strategy (llm-compressor's
    FP8_BLOCK): the ``fp8-block`` data with the scale stored as ``weight_scale`` (multiplied, same
    shape). :meth:`to_canonical` re-views it as ``fp8-block`` (``weight_scale_inv``), no copy."""

    name = "ct-fp8-block"
    required_tensors = ("weight", "weight_scale")
    scale_name = "weight_scale"
    canonical_format = "fp8-block"

    def to_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"weight": tensors["weight"], "weight_scale_inv": tensors["weight_scale"]}
