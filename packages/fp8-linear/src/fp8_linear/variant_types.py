"""What a block-scaled GEMM variant is: where its scales live and when they are applied.

The variants themselves (one per scale granularity) are generated from codegen/spec.toml into
``_generated_variants.py``; their Triton kernels into ``kernels/_generated_gemm.py``.
Shapes: M tokens, N output features, K input features, ``(bn, bk)`` the weight block.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ActivationScale(enum.Enum):
    GROUP = "group"  # [M, K/bk]: one per token per bk along K
    TOKEN = "token"  # [M, 1]
    TENSOR = "tensor"  # one value


class WeightScale(enum.Enum):
    BLOCK = "block"  # [ceil(N/bn), K/bk]
    ROW_GROUP = "row_group"  # [N, K/bk]: one per output row per bk along K (MX)
    CHANNEL = "channel"  # [N, 1]
    TENSOR = "tensor"  # one value


class ScaleApply(enum.Enum):
    K_GROUP = "k_group"  # every K group's partial dot is scaled, then accumulated in float32
    EPILOGUE = "epilogue"  # the float32 accumulator is scaled once at the end


class ScaleDtype(enum.Enum):
    FLOAT32 = "float32"
    E8M0 = "e8m0"  # uint8 / float8_e8m0fnu exponent bytes


@dataclass(frozen=True, kw_only=True)
class GemmVariant:
    """One generated GEMM variant.

    ``block_size``: the fixed or default weight block ``(bn, bk)`` (None where scales do not
    depend on it). ``block_k``: the bk values the kernel serves. ``scale_dtype``: what the kernel
    reads natively (other scale dtypes are converted before launch). ``schemes``: the spec's
    schemes whose ``linear_gemm`` names this variant. ``kernel``: the Triton function's name in
    ``fp8_linear.kernels._generated_gemm``. ``wgmma``: the variant also has a warp-specialized
    Hopper kernel in Gluon (``<kernel>_wgmma`` in ``fp8_linear.kernels._generated_wgmma``), which
    tuned configs may choose (``engine = "wgmma"``).
    """

    name: str
    title: str
    activation_scale: ActivationScale
    weight_scale: WeightScale
    apply: ScaleApply
    scale_dtype: ScaleDtype
    block_size: tuple[int, int] | None
    block_k: tuple[int, ...]
    schemes: tuple[str, ...]
    kernel: str
    wgmma: bool = False

    def scale_shapes(self, m: int, n: int, k: int, block_size: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Expected 2-D shapes of the activation and weight scales (tensor scales: ``(1,)``)."""
        bn, bk = block_size
        kb = -(-k // bk)
        act = {ActivationScale.GROUP: (m, kb), ActivationScale.TOKEN: (m, 1), ActivationScale.TENSOR: (1,)}
        weight = {
            WeightScale.BLOCK: (-(-n // bn), kb),
            WeightScale.ROW_GROUP: (n, kb),
            WeightScale.CHANNEL: (n, 1),
            WeightScale.TENSOR: (1,),
        }
        return act[self.activation_scale], weight[self.weight_scale]

    def describe_scales(self) -> str:
        """The scale layout in words, for error messages."""
        act = {
            ActivationScale.GROUP: "a_s [M, K/bk]",
            ActivationScale.TOKEN: "a_s [M, 1]",
            ActivationScale.TENSOR: "a_s [1]",
        }[self.activation_scale]
        weight = {
            WeightScale.BLOCK: "w_s [ceil(N/bn), K/bk]",
            WeightScale.ROW_GROUP: "w_s [N, K/bk]",
            WeightScale.CHANNEL: "w_s [N, 1]",
            WeightScale.TENSOR: "w_s [1]",
        }[self.weight_scale]
        return f"{act}, {weight}"
