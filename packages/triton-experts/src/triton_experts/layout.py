"""The ``triton`` layout of weight-layouts: what the fused-MoE kernels read.

Weights keep the nn.Linear orientation ``[E, N, K]`` (rows = output features; w13 = gate rows then
up rows), which is how every checkpoint but GPTQ stores them, so most conversions only reshape
scales. Tensors per format (variant in brackets):

* dense [bf16]: ``weight`` [E, N, K] (cast to the activation dtype when the experts are built).
* fp8-tensor [fp8_tensor]: ``weight`` fp8, ``scale`` float32 [E].
* fp8-channel [fp8_channel], int8-channel [int8_w8a8]: ``weight``, ``scale`` float32 [E, N].
* fp8-block [fp8_block]: ``weight`` fp8, ``scale`` float32 [E, N/128, K/128].
* gptq, ct-pack-quantized [int4_w4a16 / int8_w8a16]: ``weight`` uint8 codes (value + offset):
  4-bit packed (below), 8-bit [E, N, K]; ``scale`` float32 [E, N, K/g];
  ``zero`` uint8 [E, N, K/g] (the symmetric offset 8 / 128 when there are no zero points).
  Per-channel weights use g = K. Act-order (non-monotonic g_idx) is refused.
* mxfp8 [mxfp8]: ``weight`` fp8, ``scale`` uint8 E8M0 [E, N, K/32].
* mxfp4 [mxfp4]: ``weight`` uint8 packed (below), ``scale`` uint8 E8M0 [E, N, K/32].

Packed 4-bit weights hold two k per byte (low nibble = even k). When K is a multiple of 128 they are
stored as K tiles ``[E, K/128, N, 64]``: the 64 bytes (128 k) of every row for one tile sit together,
so a decode GEMM step reads one contiguous block (:func:`k_tiles`; measured on an H100, 1.36-1.48x
the weight-bandwidth floor instead of 1.74-1.85x, benchmarks/results/triton_experts-stream_probe-*);
otherwise as rows ``[E, N, K/2]``. :func:`k_rows` undoes the tiling.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from weight_layouts import CANONICAL, ExpertWeights, LayoutError, StackedWeight, register_layout
from weight_layouts.conversions import gptq_int4_to_nk_uint8, require_group_order
from weight_layouts.packing import unpack_int32

LAYOUT = "triton"
K_TILE_BYTES = 64  # packed 4-bit bytes per row of a K tile (128 k: one group of the common g = 128)
VARIANT_OF_FORMAT = {
    "dense": "bf16", "fp8-tensor": "fp8_tensor", "fp8-channel": "fp8_channel", "fp8-block": "fp8_block",
    "int8-channel": "int8_w8a8", "mxfp8": "mxfp8", "mxfp4": "mxfp4",
}


def k_tiles(weight: torch.Tensor) -> torch.Tensor:
    """Packed 4-bit rows [E, N, K/2] -> K tiles [E, K/128, N, 64] (a new tensor); rows whose K is not a
    multiple of 128 stay rows."""
    e, n, kb = weight.shape
    if kb % K_TILE_BYTES:
        return weight.contiguous()
    return weight.reshape(e, n, kb // K_TILE_BYTES, K_TILE_BYTES).permute(0, 2, 1, 3).contiguous()


def k_rows(weight: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`k_tiles`: [E, K/2/T, N, T] -> [E, N, K/2] (rows pass through)."""
    if weight.dim() == 3:
        return weight
    e, t, n, width = weight.shape
    return weight.permute(0, 2, 1, 3).reshape(e, n, t * width)


def variant_for(fmt: str, params: dict) -> str:
    if fmt in VARIANT_OF_FORMAT:
        return VARIANT_OF_FORMAT[fmt]
    if fmt in ("gptq", "ct-pack-quantized"):
        return "int4_w4a16" if int(params.get("bits", 4)) == 4 else "int8_w8a16"
    raise LayoutError(f"the triton layout has no kernel variant for format {fmt!r}")


def _int_group(w: StackedWeight) -> dict[str, torch.Tensor]:
    p, t = w.params, w.tensors
    bits = int(p.get("bits", 4))
    group = int(p.get("group_size", -1) or -1)
    g = w.cols if group in (-1, 0) else group
    symmetric = bool(p.get("sym", p.get("symmetric", True)))
    require_group_order(w, group=g, backend="the triton int kernels")
    offset = 1 << (bits - 1)
    if w.format == "gptq":
        q = t["qweight"]  # [E, K*bits/32, N]
        if bits == 4:
            weight = gptq_int4_to_nk_uint8(q)
        else:
            weight = unpack_int32(q, bits=8, dim=-2).transpose(-1, -2).contiguous().to(torch.uint8)
        scale = t["scales"].transpose(-1, -2).contiguous().to(torch.float32)  # [E, N, G]
        if symmetric:
            zero = torch.full_like(scale, offset, dtype=torch.uint8)
        else:
            z = unpack_int32(t["qzeros"], bits=bits, dim=-1)[..., : w.rows]  # [E, G, N]
            if p.get("checkpoint_format", "gptq") == "gptq":
                z = z + 1  # GPTQ v1 stores zero - 1
            zero = z.transpose(-1, -2).contiguous().to(torch.uint8)
    else:  # compressed-tensors pack-quantized: [E, N, K*bits/32] int32, stored value + offset
        packed = t["weight_packed"]
        codes = unpack_int32(packed, bits=bits, dim=-1)[..., : w.cols]
        weight = codes.to(torch.uint8)
        if bits == 4:
            weight = (weight[..., 0::2] | (weight[..., 1::2] << 4)).contiguous()
        scale = t["weight_scale"].to(torch.float32).contiguous()
        if symmetric:
            zero = torch.full_like(scale, offset, dtype=torch.uint8)
        else:
            zp = unpack_int32(t["weight_zero_point"], bits=bits, dim=-2)[..., : w.rows, :]
            zero = zp.to(torch.uint8).contiguous()  # stored zero + offset, as the codes
    if scale.shape[-1] * g < w.cols:
        raise LayoutError(f"int scales cover {scale.shape[-1]} groups of {g}, fewer than K={w.cols}")
    return {"weight": k_tiles(weight) if bits == 4 else weight.contiguous(), "scale": scale, "zero": zero}


def _convert(w: StackedWeight) -> StackedWeight:
    t, variant = w.tensors, variant_for(w.format, dict(w.params))
    e = w.num_experts
    if variant == "bf16":
        tensors = {"weight": t["weight"].contiguous()}
    elif variant == "fp8_tensor":
        tensors = {"weight": t["weight"].contiguous(), "scale": t["weight_scale"].reshape(e).to(torch.float32)}
    elif variant in ("fp8_channel", "int8_w8a8"):
        tensors = {"weight": t["weight"].contiguous(), "scale": t["weight_scale"].reshape(e, w.rows).to(torch.float32)}
    elif variant == "fp8_block":
        block = tuple(w.params.get("block_size", (128, 128)))
        if block != (128, 128):
            raise LayoutError(f"the triton fp8_block kernel serves 128x128 blocks, got {block}")
        tensors = {"weight": t["weight"].contiguous(), "scale": t["weight_scale_inv"].to(torch.float32).contiguous()}
    elif variant == "mxfp8":
        tensors = {"weight": t["weight"].contiguous(), "scale": t["weight_scale"].view(torch.uint8).contiguous()}
    elif variant == "mxfp4":
        blocks = t["blocks"]
        tensors = {"weight": k_tiles(blocks.reshape(*blocks.shape[:-2], -1)),
                   "scale": t["scales"].view(torch.uint8).contiguous()}
    else:
        tensors = _int_group(w)
    return StackedWeight(format=f"triton-{variant}", tensors=tensors, params={"variant": variant,
                         "group_size": int(w.params.get("group_size", -1) or -1)}, rows=w.rows, cols=w.cols)


def to_triton(experts: ExpertWeights) -> ExpertWeights:
    """Canonical experts -> the triton layout (pure: new tensors)."""
    w13, w2 = _convert(experts.w13), _convert(experts.w2)
    return replace(experts, w13=w13, w2=w2, extras={**experts.extras, "variant": w13.params["variant"]})


register_layout(LAYOUT, description="fused-MoE Triton kernels: [E, N, K] weights, per-variant scales",
                convert_from={CANONICAL: to_triton})
