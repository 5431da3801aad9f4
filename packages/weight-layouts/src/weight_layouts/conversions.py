"""Tensor-level conversions between checkpoint orientations and kernel layouts.

Building blocks for the backend layouts that kernel packages register (they compose these in
their ``register_layout`` converters). Each function is pure and states its input and output
layouts; none converts anything twice because layout tags decide when they run.
"""

from __future__ import annotations

import sys

import torch

from .experts import StackedWeight
from .layouts import LayoutError
from .packing import pack_nibbles_uint8, unpack_int32


def gptq_int4_to_nk_uint8(qweight: torch.Tensor) -> torch.Tensor:
    """GPTQ 4-bit ``qweight`` int32 ``[..., K/8, N]`` (packed along K, LSB first) ->
    uint8 ``[..., N, K/2]``: row n holds codes k = 2j (low nibble) and 2j+1 (high nibble).

    This is the XPU int4 layout (vLLM's w13 ``[E, K/8, 2N]`` -> ``[E, 2N, K/2]``). On a
    little-endian host it is a transpose plus a byte view of each int32 word (bytes b of word w hold
    codes 8w+2b and 8w+2b+1); elsewhere it unpacks and repacks explicitly. Codes stay unsigned
    (stored value = signed value + 8); a kernel that wants signed nibbles XORs each byte with 0x88.
    """
    if qweight.dtype != torch.int32:
        raise ValueError(f"qweight must be int32 (GPTQ packs 8 codes per word), got {qweight.dtype}")
    if qweight.dim() < 2:
        raise ValueError(f"qweight must be [..., K/8, N], got shape {list(qweight.shape)}")
    if sys.byteorder == "little":
        nk_words = qweight.transpose(-1, -2).contiguous()  # [..., N, K/8] int32
        return nk_words.view(torch.uint8)  # [..., N, K/2]: 4 bytes per word, 2 codes per byte
    codes = unpack_int32(qweight, bits=4, dim=-2)  # pragma: no cover - big-endian hosts
    return pack_nibbles_uint8(codes.transpose(-1, -2).contiguous(), dim=-1)  # pragma: no cover


def gptq_scales_to_nk(scales: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """GPTQ ``scales`` ``[..., K/g, N]`` -> ``[..., N, K/g]`` (contiguous), cast to ``dtype`` if given
    (XPU reads int4 scales as the activation dtype, so pass it)."""
    out = scales.transpose(-1, -2).contiguous()
    return out if dtype is None else out.to(dtype)


def nk_uint8_to_signed_int4(packed: torch.Tensor) -> torch.Tensor:
    """Unsigned-offset nibbles (value + 8) -> two's-complement signed nibbles: ``byte ^ 0x88``."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"expected uint8 packed nibbles, got {packed.dtype}")
    return packed ^ 0x88


def require_group_order(weight: StackedWeight, *, group: int, backend: str) -> None:
    """Refuse act-order int weights: their ``g_idx`` (GPTQ ``g_idx`` / compressed-tensors
    ``weight_g_idx``) must be ``k // group`` for every input channel k. Raises LayoutError naming
    ``backend``; weights without a g_idx pass."""
    t = weight.tensors
    g_idx = t.get("g_idx", t.get("weight_g_idx"))
    if g_idx is None:
        return
    trivial = torch.arange(weight.cols, dtype=g_idx.dtype, device=g_idx.device) // group
    if not torch.equal(g_idx, trivial.expand_as(g_idx)):
        raise LayoutError(f"{backend} does not serve act-order (non-monotonic g_idx) weights")
