"""The ``xpu`` layout of weight-layouts: what XpuFusedMoe expects per recipe (see XpuRecipe).

Registered with weight-layouts when xpu_experts is imported; converts from the canonical layout
only. The converted weights carry format ``xpu-<recipe>`` with tensors ``weight`` and (except
bf16) ``scale``, and ``extras["recipe"]``. Gate/up stay in halves (the canonical order); the
experts interleave rows themselves where an activation needs it (swigluoai).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from weight_layouts import CANONICAL, ExpertWeights, LayoutError, StackedWeight, register_layout
from weight_layouts.conversions import gptq_int4_to_nk_uint8, gptq_scales_to_nk, require_group_order

from .recipes import XpuRecipe

LAYOUT = "xpu"
INT4_GROUPS = (32, 64, 128, 256)


def recipe_for_format(fmt: str) -> XpuRecipe:
    recipes = {"dense": XpuRecipe.BF16, "fp8-tensor": XpuRecipe.FP8, "fp8-block": XpuRecipe.BLOCK_FP8,
               "mxfp8": XpuRecipe.MXFP8, "mxfp4": XpuRecipe.MXFP4, "gptq": XpuRecipe.INT4,
               "ct-pack-quantized": XpuRecipe.INT4}
    try:
        return recipes[fmt]
    except KeyError:
        raise LayoutError(f"the xpu layout has no recipe for format {fmt!r} (xpu recipes come from: "
                          f"{', '.join(recipes)})") from None


def _t(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2).contiguous()


def _convert_one(w: StackedWeight, recipe: XpuRecipe) -> StackedWeight:
    t = w.tensors
    fmt = f"xpu-{recipe.value}"
    if recipe is XpuRecipe.BF16:
        tensors = {"weight": _t(t["weight"])}
    elif recipe is XpuRecipe.FP8:
        tensors = {"weight": _t(t["weight"]), "scale": t["weight_scale"].reshape(w.num_experts).to(torch.float32)}
    elif recipe is XpuRecipe.BLOCK_FP8:
        block = tuple(w.params.get("block_size", (128, 128)))
        if block != (128, 128) or w.rows % 128 or w.cols % 128:
            raise LayoutError(f"xpu block_fp8 needs 128x128 blocks over whole blocks; got block {block} for a "
                              f"[{w.rows}, {w.cols}] matrix")
        tensors = {"weight": _t(t["weight"]), "scale": _t(t["weight_scale_inv"].to(torch.float32))}
    elif recipe is XpuRecipe.MXFP8:
        tensors = {"weight": _t(t["weight"]), "scale": _t(t["weight_scale"])}
    elif recipe is XpuRecipe.MXFP4:
        blocks = t["blocks"]
        tensors = {"weight": blocks.reshape(*blocks.shape[:-2], -1).contiguous(), "scale": t["scales"].contiguous()}
    else:
        tensors = _int4(w)
    return StackedWeight(format=fmt, tensors=tensors, params={}, rows=w.rows, cols=w.cols)


def _int4(w: StackedWeight) -> dict[str, torch.Tensor]:
    p = w.params
    bits = int(p.get("bits", 4))
    symmetric = bool(p.get("sym", p.get("symmetric", True)))
    group = int(p.get("group_size", -1) or -1)
    if bits != 4 or not symmetric:
        raise LayoutError(f"xpu int4 serves symmetric 4-bit weights (zero point 8); got bits={bits} "
                          f"symmetric={symmetric}")
    if group not in INT4_GROUPS:
        raise LayoutError(f"xpu int4 needs a group size in {INT4_GROUPS}; got {group} (per channel is -1)")
    if w.cols % group:
        raise LayoutError(f"xpu int4: input size {w.cols} is not a multiple of the group size {group}")
    t = w.tensors
    require_group_order(w, group=group, backend="xpu int4")
    if w.format == "gptq":
        if p.get("checkpoint_format", "gptq") not in ("gptq", "gptq_v2"):
            raise LayoutError(f"unknown GPTQ checkpoint_format {p.get('checkpoint_format')!r}")
        return {"weight": gptq_int4_to_nk_uint8(t["qweight"]), "scale": gptq_scales_to_nk(t["scales"])}
    packed = t["weight_packed"]  # compressed-tensors: [E, N, K/8] int32, stored value + 8, little-endian bytes
    if packed.shape[-1] * 8 != w.cols:
        raise LayoutError(f"xpu int4: compressed-tensors weight padded along K ({packed.shape[-1] * 8} != {w.cols})")
    return {"weight": packed.contiguous().view(torch.uint8), "scale": t["weight_scale"].contiguous()}


def to_xpu(experts: ExpertWeights) -> ExpertWeights:
    """Canonical experts -> the xpu layout (pure: new tensors, the input is untouched)."""
    recipe = recipe_for_format(experts.w13.format)
    return replace(
        experts,
        w13=_convert_one(experts.w13, recipe),
        w2=_convert_one(experts.w2, recipe),
        extras={**experts.extras, "recipe": recipe.value},
    )


register_layout(LAYOUT, description="vllm-xpu-kernels XpuFusedMoe layouts per recipe", convert_from={CANONICAL: to_xpu})
