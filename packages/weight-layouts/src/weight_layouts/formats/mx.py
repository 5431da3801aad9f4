"""OCP MX formats with E8M0 block scales along K (32 elements per scale): ``mxfp8``, ``mxfp4``.

Shared exponent (OCP MX): ``e = floor(log2(amax of the 32-block)) - emax_elem`` (8 for E4M3,
2 for E2M1), clamped to ``[-127, 127]`` (an all-zero block gets -127); stored byte ``e + 127``;
``w = element * 2**e``. Because ``amax / 2**e`` lies in ``[2**emax, 2**(emax+1))``, elements
above the element type's max (448 for E4M3, 6 for E2M1) saturate to it. Byte 0xFF (NaN) is
rejected on decode. Re-encoding a decoded weight is bit exact (the block max decodes to at least
``2**emax * 2**e``, so the exponent is found again, and the power-of-two scaling is exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from weight_layouts.formats._common import (
    check_batch,
    check_divisible,
    check_dtype,
    check_e8m0_values,
    check_fp8_values,
    check_ndim,
    check_shape,
    to_fp8,
)
from weight_layouts.formats.base import CheckpointFormat, DecodedShape, FormatError, FormatParams
from weight_layouts.packing import (
    e2m1_decode,
    e2m1_encode,
    e8m0_decode,
    e8m0_encode,
    mx_shared_exponent,
    pack_nibbles_uint8,
    unpack_nibbles_uint8,
)

MX_BLOCK = 32
E8M0_DTYPES = tuple(d for d in (torch.uint8, getattr(torch, "float8_e8m0fnu", None)) if d is not None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MxParams(FormatParams):
    """The MX formats take no params (block size 32 and the element types are fixed)."""


def _block_exponent(weight: torch.Tensor, emax_elem: int) -> torch.Tensor:
    """Shared exponent [..., N, K/32] (int32) of the 32-blocks along K."""
    blocks = weight.to(torch.float32).abs().reshape(*weight.shape[:-1], weight.shape[-1] // MX_BLOCK, MX_BLOCK)
    return mx_shared_exponent(blocks.amax(dim=-1), emax_elem=emax_elem)


def _scale_down(weight: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``weight / 2**e`` per 32-block, exact (power-of-two scaling in float64), as [..., N, K]."""
    blocks = weight.to(torch.float64).reshape(*weight.shape[:-1], weight.shape[-1] // MX_BLOCK, MX_BLOCK)
    return torch.ldexp(blocks, (-exponent).unsqueeze(-1).to(torch.float64)).flatten(-2)


def _check_finite(fmt: str, out: torch.Tensor, scale_name: str) -> torch.Tensor:
    if out.numel() and not bool(torch.isfinite(out).all()):
        idx = torch.nonzero(~torch.isfinite(out))[0].tolist()
        raise FormatError(
            f"{fmt}: decoded weight overflows float32 at index {idx}; tensor {scale_name!r} holds an exponent "
            "too large for the block's elements"
        )
    return out


class MxFp8Format(CheckpointFormat):
    """``mxfp8`` (ModelOpt MXFP8): ``weight`` float8_e4m3fn [..., N, K], ``weight_scale`` uint8 E8M0 [..., N, K/32].

    K must be a multiple of 32. Elements whose ``|w| / 2**e`` exceeds 448 are clamped to +-448.
    Error bound (``e`` the block's exponent): ``|w - decode(encode(w))| <= max(2**-4 * |w|,
    2**-10 * 2**e)`` when ``|w| <= 448 * 2**e``, else ``|w| - 448 * 2**e`` (saturation, < 64 * 2**e).
    """

    name = "mxfp8"
    required_tensors = ("weight", "weight_scale")
    Params = MxParams

    def _encode(self, weight: torch.Tensor, p: MxParams) -> dict[str, torch.Tensor]:
        check_divisible(self.name, "K", int(weight.shape[-1]), MX_BLOCK, "one E8M0 scale per 32 input channels")
        e = _block_exponent(weight, emax_elem=8)
        q = to_fp8(_scale_down(weight, e))
        return {"weight": q.contiguous(), "weight_scale": e8m0_encode(e)}

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: MxParams) -> DecodedShape:
        w = tensors["weight"]
        check_dtype(self.name, "weight", w, (torch.float8_e4m3fn,))
        check_ndim(self.name, "weight", w, 2, "[..., N, K]")
        batch, n, k = tuple(w.shape[:-2]), int(w.shape[-2]), int(w.shape[-1])
        check_divisible(self.name, "K", k, MX_BLOCK, "one E8M0 scale per 32 input channels")
        s = tensors["weight_scale"]
        check_dtype(self.name, "weight_scale", s, E8M0_DTYPES, " (E8M0 exponent bytes)")
        check_batch(self.name, tensors, "weight_scale", 2, batch)
        check_shape(self.name, "weight_scale", s, (*batch, n, k // MX_BLOCK), f"[..., N, K/32] with N={n}, K={k}")
        check_e8m0_values(self.name, "weight_scale", s)
        check_fp8_values(self.name, "weight", w)
        return DecodedShape(batch, n, k)

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: MxParams, shape: DecodedShape) -> torch.Tensor:
        scale = e8m0_decode(tensors["weight_scale"]).repeat_interleave(MX_BLOCK, dim=-1)
        return _check_finite(self.name, tensors["weight"].to(torch.float32) * scale, "weight_scale")


class MxFp4Format(CheckpointFormat):
    """``mxfp4`` (GPT-OSS layout): ``blocks`` uint8 [..., N, K/32, 16], ``scales`` uint8 E8M0 [..., N, K/32].

    Byte ``j`` of a block holds E2M1 codes of elements ``2j`` (low nibble) and ``2j + 1`` (high
    nibble); codes 0..7 are 0, .5, 1, 1.5, 2, 3, 4, 6 and bit 3 is the sign. Encode rounds
    ``w / 2**e`` to the nearest E2M1 value (ties to the even code) and saturates at +-6.
    Error bound (``e`` the block's exponent): ``|w - decode(encode(w))| <= max(|w|, 2**e) / 4``
    when ``|w| <= 6 * 2**e``, else ``|w| - 6 * 2**e`` (saturation, < 2 * 2**e).
    """

    name = "mxfp4"
    required_tensors = ("blocks", "scales")
    Params = MxParams

    def _encode(self, weight: torch.Tensor, p: MxParams) -> dict[str, torch.Tensor]:
        check_divisible(self.name, "K", int(weight.shape[-1]), MX_BLOCK, "one E8M0 scale per 32 input channels")
        e = _block_exponent(weight, emax_elem=2)
        codes = e2m1_encode(_scale_down(weight, e))
        packed = pack_nibbles_uint8(codes, dim=-1)  # [..., N, K/2]
        blocks = packed.reshape(*packed.shape[:-1], packed.shape[-1] // (MX_BLOCK // 2), MX_BLOCK // 2).contiguous()
        return {"blocks": blocks, "scales": e8m0_encode(e)}

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: MxParams) -> DecodedShape:
        b = tensors["blocks"]
        check_dtype(self.name, "blocks", b, (torch.uint8,), " (two E2M1 codes per byte)")
        check_ndim(self.name, "blocks", b, 3, "[..., N, K/32, 16]")
        if b.shape[-1] != MX_BLOCK // 2:
            raise FormatError(
                f"{self.name}: tensor 'blocks' has last dim {b.shape[-1]}, expected 16 (32 E2M1 codes per block, two per byte)"
            )
        batch, n, k = tuple(b.shape[:-3]), int(b.shape[-3]), int(b.shape[-2]) * MX_BLOCK
        s = tensors["scales"]
        check_dtype(self.name, "scales", s, E8M0_DTYPES, " (E8M0 exponent bytes)")
        check_batch(self.name, tensors, "scales", 2, batch)
        check_shape(self.name, "scales", s, (*batch, n, k // MX_BLOCK), f"[..., N, K/32] with N={n}, K={k}")
        check_e8m0_values(self.name, "scales", s)
        return DecodedShape(batch, n, k)

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: MxParams, shape: DecodedShape) -> torch.Tensor:
        codes = unpack_nibbles_uint8(tensors["blocks"].flatten(-2), dim=-1)  # [..., N, K]
        scale = e8m0_decode(tensors["scales"]).repeat_interleave(MX_BLOCK, dim=-1)
        return _check_finite(self.name, e2m1_decode(codes) * scale, "scales")


class CtMxFp4Format(CheckpointFormat):
    """``ct-mxfp4``: compressed-tensors' ``mxfp4-pack-quantized`` (llm-compressor's MXFP4A16):
    ``weight_packed`` uint8 [..., N, K/2] and ``weight_scale`` uint8 E8M0 [..., N, K/32].

    The same codes, nibble order and exponents as :class:`MxFp4Format` (``mxfp4``), stored flat per
    row under compressed-tensors' names; :meth:`to_canonical` re-views it as ``mxfp4`` without a copy,
    so backends see one MXFP4 layout whichever checkpoint it came from.
    """

    name = "ct-mxfp4"
    required_tensors = ("weight_packed", "weight_scale")
    Params = MxParams
    canonical_format = "mxfp4"

    def _encode(self, weight: torch.Tensor, p: MxParams) -> dict[str, torch.Tensor]:
        t = MxFp4Format()._encode(weight, p)
        return {"weight_packed": t["blocks"].flatten(-2).contiguous(), "weight_scale": t["scales"]}

    def to_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        packed = tensors["weight_packed"]
        blocks = packed.reshape(*packed.shape[:-1], packed.shape[-1] // (MX_BLOCK // 2), MX_BLOCK // 2)
        return {"blocks": blocks, "scales": tensors["weight_scale"]}

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: MxParams) -> DecodedShape:
        packed = tensors["weight_packed"]
        check_dtype(self.name, "weight_packed", packed, (torch.uint8,), " (two E2M1 codes per byte)")
        check_ndim(self.name, "weight_packed", packed, 2, "[..., N, K/2]")
        check_divisible(self.name, "weight_packed last dim (K/2)", int(packed.shape[-1]), MX_BLOCK // 2,
                        "one E8M0 scale per 32 input channels")
        try:
            return MxFp4Format()._validate(self.to_canonical(tensors), p)
        except FormatError as exc:
            raise FormatError(str(exc).replace("mxfp4: tensor 'scales'", f"{self.name}: tensor 'weight_scale'")) from None

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: MxParams, shape: DecodedShape) -> torch.Tensor:
        return MxFp4Format()._decode(self.to_canonical(tensors), p, shape)
