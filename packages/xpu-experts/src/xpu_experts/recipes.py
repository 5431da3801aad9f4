"""XpuFusedMoe recipes: one value per scheme, never a set of booleans."""

from __future__ import annotations

import enum


class XpuRecipe(enum.Enum):
    """The kernel recipe of an XPU experts class.

    Layouts handed to XpuFusedMoe (E local experts, K hidden, N intermediate; 8/16-bit recipes are
    ``[E, in, out]``, 4-bit recipes ``[E, out, in/2]``):

    ========== ======================================= ===============================================
    recipe     w13 / w2                                 w13_scales / w2_scales
    ========== ======================================= ===============================================
    BF16       activation dtype [E, K, 2N] / [E, N, K]  None
    FP8        float8_e4m3fn [E, K, 2N] / [E, N, K]     float32 [E] / [E]
    BLOCK_FP8  float8_e4m3fn [E, K, 2N] / [E, N, K]     float32 [E, K/128, 2N/128] / [E, N/128, K/128]
    MXFP8      float8_e4m3fn [E, K, 2N] / [E, N, K]     uint8 E8M0 [E, K/32, 2N] / [E, N/32, K]
    MXFP4      float4_e2m1fn_x2 [E, 2N, K/2] / [E, K, N/2]  uint8 E8M0 [E, 2N, K/32] / [E, K, N/32]
    INT4       uint8 (u4, zero 8) [E, 2N, K/2] / [E, K, N/2]  activation dtype [E, 2N, K/g] / [E, K, N/g]
    ========== ======================================= ===============================================
    """

    BF16 = "bf16"
    FP8 = "fp8"
    BLOCK_FP8 = "block_fp8"
    MXFP8 = "mxfp8"
    MXFP4 = "mxfp4"
    INT4 = "int4"

    @property
    def is_4bit(self) -> bool:
        """4-bit recipes keep rows ([E, out, in/2]); the others are transposed ([E, in, out])."""
        return self in (XpuRecipe.MXFP4, XpuRecipe.INT4)

    @property
    def kernel_flag(self) -> str | None:
        """The one ``is_*`` flag of the older XpuFusedMoe constructor that names this recipe."""
        return {
            XpuRecipe.BF16: None,
            XpuRecipe.FP8: "is_fp8",
            XpuRecipe.BLOCK_FP8: "is_block_fp8",
            XpuRecipe.MXFP8: "is_mxfp8",
            XpuRecipe.MXFP4: "is_mxfp4",
            XpuRecipe.INT4: "is_int4",
        }[self]


KERNEL_FLAGS = ("is_fp8", "is_int4", "is_mxfp4", "is_mxfp8", "is_block_fp8")
