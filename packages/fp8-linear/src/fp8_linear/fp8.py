"""FP8 element formats, their quantization ranges, E8M0 scales and the e4m3fn -> e4m3fnuz switch.

* ``float8_e4m3fn`` (OCP E4M3, Triton ``fp8e4nv``): max finite 448; the quantization range is +-448.
* ``float8_e4m3fnuz`` (ROCm MI300, Triton ``fp8e4b8``): max finite 240, but dynamic quantization
  uses +-224, as vLLM does (240 hurt accuracy there).
* E8M0 scales: ``uint8`` exponent bytes or ``torch.float8_e8m0fnu``, value ``2**(byte - 127)``,
  byte 0xFF is NaN.
"""

from __future__ import annotations

import torch

from weight_layouts.packing import e8m0_decode

E4M3FN = torch.float8_e4m3fn
E4M3FNUZ = torch.float8_e4m3fnuz
FP8_DTYPES: tuple[torch.dtype, ...] = (E4M3FN, E4M3FNUZ)
_QUANT_MAX = {E4M3FN: 448.0, E4M3FNUZ: 224.0}
E8M0_DTYPES: tuple[torch.dtype, ...] = tuple(
    d for d in (torch.uint8, getattr(torch, "float8_e8m0fnu", None)) if d is not None
)
E8M0_NAN = 0xFF
EPS = 1e-10  # floor of a group's absmax (vLLM's eps)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def is_e8m0(dtype: torch.dtype) -> bool:
    return dtype in E8M0_DTYPES


def quant_max(dtype: torch.dtype) -> float:
    """The bound dynamic quantization clamps to: 448 for e4m3fn, 224 for e4m3fnuz."""
    try:
        return _QUANT_MAX[dtype]
    except KeyError:
        raise ValueError(f"not an FP8 dtype of fp8-linear: {dtype}; expected one of {list(FP8_DTYPES)}") from None


def representable_max(dtype: torch.dtype) -> float:
    """Largest finite value of the format (448 for e4m3fn, 240 for e4m3fnuz)."""
    return float(torch.finfo(dtype).max)


def e8m0_to_float32(scale: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes (uint8 or float8_e8m0fnu) -> float32 ``2**(b - 127)`` (exact; 0xFF -> NaN)."""
    return e8m0_decode(scale)


def to_fnuz(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``float8_e4m3fn`` weight + float scale -> the same values as ``float8_e4m3fnuz`` + scale.

    The same byte means half the value in e4m3fnuz (exponent bias 8 instead of 7), so the bytes
    are kept and the scale doubles; byte 0x80 (-0 in e4m3fn, NaN in e4m3fnuz) becomes 0.
    Exact: ``fp8(w) * s`` is unchanged element by element.
    """
    if weight.dtype != E4M3FN:
        raise ValueError(f"to_fnuz needs a float8_e4m3fn weight, got {weight.dtype}")
    raw = weight.view(torch.uint8)
    raw = torch.where(raw == 0x80, torch.zeros_like(raw), raw)
    return raw.view(E4M3FNUZ), scale * 2
