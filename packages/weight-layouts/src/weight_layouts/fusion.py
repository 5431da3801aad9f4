"""How the gate and up projections of a format fuse into one w13 ``[2I, H]`` matrix.

Each tensor of a format either concatenates along the axis that indexes output rows (``concat``),
is one value both projections must share (``shared``: GPTQ ``g_idx``), records the shape
(``shape``: compressed-tensors ``weight_shape``), or is kept per projection and merged after
loading (``separate``: per-tensor FP8 scales, re-scaled to the larger of the two, as kernels that
take one scale per expert need; this re-rounds the smaller half once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch


@dataclass(frozen=True)
class FusionRule:
    kind: str  # "concat" | "shared" | "shape" | "separate" | "whole"
    axis: int = 0  # per-expert axis of output rows, for "concat"

    @classmethod
    def concat(cls, axis: int) -> FusionRule:
        return cls("concat", axis)

    @classmethod
    def whole(cls) -> FusionRule:
        return cls("whole")


_ROWS0 = FusionRule.concat(0)
_RULES: Mapping[str, Mapping[str, FusionRule]] = MappingProxyType({
    "dense": {"weight": _ROWS0},
    "fp8-tensor": {"weight": _ROWS0, "weight_scale": FusionRule("separate")},
    "fp8-channel": {"weight": _ROWS0, "weight_scale": _ROWS0},
    "fp8-block": {"weight": _ROWS0, "weight_scale_inv": _ROWS0},
    "int8-channel": {"weight": _ROWS0, "weight_scale": _ROWS0},
    "gptq": {"qweight": FusionRule.concat(1), "qzeros": FusionRule.concat(1), "scales": FusionRule.concat(1),
             "g_idx": FusionRule("shared")},
    "ct-pack-quantized": {"weight_packed": _ROWS0, "weight_scale": _ROWS0, "weight_zero_point": _ROWS0,
                          "weight_shape": FusionRule("shape"), "weight_g_idx": FusionRule("shared")},
    "mxfp8": {"weight": _ROWS0, "weight_scale": _ROWS0},
    "mxfp4": {"blocks": _ROWS0, "scales": _ROWS0},
    "ct-mxfp4": {"weight_packed": _ROWS0, "weight_scale": _ROWS0},
    "ct-fp8-block": {"weight": _ROWS0, "weight_scale": _ROWS0},
})


def fusion_rules(fmt: str) -> Mapping[str, FusionRule]:
    try:
        return _RULES[fmt]
    except KeyError:
        raise ValueError(f"no gate/up fusion rules for format {fmt!r}") from None


def check_fusable(fmt: str, params: Mapping[str, Any], *, intermediate: int) -> None:
    """Raise ValueError when gate and up cannot be stacked exactly for this intermediate size."""
    if fmt in ("fp8-block", "ct-fp8-block"):
        rows = int(params.get("block_size", (128, 128))[0])
        if intermediate % rows:
            raise ValueError(
                f"fp8-block: intermediate size {intermediate} is not a multiple of the {rows}-row weight block, so "
                "gate and up blocks cannot be stacked into w13 (pad the shard to a multiple of the block)"
            )
    if fmt in ("gptq", "ct-pack-quantized") and params.get("symmetric", params.get("sym", True)) is False:
        per_word = 32 // int(params.get("bits", 4))
        if intermediate % per_word:
            raise ValueError(
                f"{fmt}: intermediate size {intermediate} is not a multiple of {per_word}, the zero points packed per "
                "int32 word, so gate and up zero points cannot be stacked"
            )
    if fmt == "gptq":
        per_word = 32 // int(params.get("bits", 4))
        if intermediate % per_word:
            raise ValueError(f"gptq: intermediate size {intermediate} is not a multiple of {per_word}")


def merge_fp8_tensor_scales(tensors: dict[str, torch.Tensor], name: str, gate: torch.Tensor, up: torch.Tensor,
                            *, params: Mapping[str, Any]) -> torch.Tensor:
    """Give w13 one per-tensor scale per expert: ``s = max(s_gate, s_up)``; the half with the smaller
    scale is re-quantized (``q' = fp8(q * s_half / s)``, one extra rounding). Returns ``[E, 1]``."""
    weight = tensors["weight"]
    s_gate = gate.reshape(gate.shape[0], -1).to(torch.float32)
    s_up = up.reshape(up.shape[0], -1).to(torch.float32)
    if s_gate.shape[1] != 1 or s_up.shape[1] != 1:
        raise ValueError(f"{name}: expected one per-tensor scale per projection, got {tuple(gate.shape[1:])}")
    merged = torch.maximum(s_gate, s_up)
    half = weight.shape[1] // 2
    for e in range(weight.shape[0]):
        for rows, s in ((slice(0, half), s_gate[e, 0]), (slice(half, None), s_up[e, 0])):
            if s != merged[e, 0]:
                part = weight[e, rows].to(torch.float32) * (s / merged[e, 0])
                weight[e, rows] = part.to(weight.dtype)
    return merged.to(gate.dtype)
