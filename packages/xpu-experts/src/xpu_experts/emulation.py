"""A torch emulation of vllm-xpu-kernels' ``XpuFusedMoe`` (the 0.1.16.x API), runnable anywhere.

Same constructor and ``apply`` signature, same layouts in (see :class:`XpuRecipe`), same recipe
inference from dtypes, same math as the native Xe2 path: weights dequantized per recipe,
activations kept in the model dtype (the native kernel ignores activation scales), GEMM1 (+bias),
the activation (gated ones on ``[gate | up]`` halves, ``swigluoai`` on interleaved rows as the
kernel reads them, ``relu2_no_mul`` non-gated), GEMM2 (+bias), top-k weighted sum written into the
preallocated ``output``. Experts are placed by ``expert_map`` when given, else by the contiguous
``ep_rank`` / ``ep_size`` partition; token rows whose ids are all negative (padding) give zeros.
It does not mutate the tensors it is given (the native constructor converts int4 weights in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from weight_layouts.packing import e2m1_decode, e8m0_decode

from .recipes import XpuRecipe

_ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "swigluoai", "relu2_no_mul")


def infer_recipe(w13: torch.Tensor, w13_scales: torch.Tensor | None) -> XpuRecipe:
    """The recipe XpuFusedMoe infers from dtypes (priority mxfp8 > fp8block > mxfp4 > int4 > fp8 > bf16)."""
    fp8 = w13.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    if fp8 and w13_scales is not None and w13_scales.dtype in (torch.uint8, torch.float8_e8m0fnu):
        return XpuRecipe.MXFP8
    if fp8 and w13_scales is not None and w13_scales.dtype == torch.float32 and w13_scales.dim() == 3:
        return XpuRecipe.BLOCK_FP8
    if w13.dtype == torch.float4_e2m1fn_x2:
        return XpuRecipe.MXFP4
    if w13.dtype in (torch.uint8, torch.int8) and w13_scales is not None:
        return XpuRecipe.INT4
    if fp8:
        return XpuRecipe.FP8
    return XpuRecipe.BF16


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., R, C/2] -> codes uint8 [..., R, C] (low nibble = even column)."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)


def dequantize(recipe: XpuRecipe, weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """One weight in its XPU layout -> float32 ``[E, out, in]`` (the nn.Linear orientation)."""
    if recipe is XpuRecipe.BF16:
        return weight.to(torch.float32).transpose(-1, -2)
    if recipe is XpuRecipe.FP8:
        assert scale is not None
        return (weight.to(torch.float32) * scale.to(torch.float32)[:, None, None]).transpose(-1, -2)
    if recipe is XpuRecipe.BLOCK_FP8:
        assert scale is not None
        s = scale.to(torch.float32).repeat_interleave(128, dim=1).repeat_interleave(128, dim=2)
        return (weight.to(torch.float32) * s[:, : weight.shape[1], : weight.shape[2]]).transpose(-1, -2)
    if recipe is XpuRecipe.MXFP8:
        assert scale is not None
        s = e8m0_decode(scale.view(torch.uint8)).repeat_interleave(32, dim=1)
        return (weight.to(torch.float32) * s).transpose(-1, -2)
    assert scale is not None
    codes = _nibbles(weight.view(torch.uint8))
    if recipe is XpuRecipe.MXFP4:
        values = e2m1_decode(codes)
        return values * e8m0_decode(scale.view(torch.uint8)).repeat_interleave(32, dim=-1)
    # INT4: unsigned codes with the implicit zero point 8 (uint8), or signed nibbles (int8, after the
    # native constructor's in-place `byte ^ 0x88`)
    signed = codes.to(torch.int16) - 8 if weight.dtype == torch.uint8 else ((codes.to(torch.int16) + 8) % 16) - 8
    group = codes.shape[-1] // scale.shape[-1]
    return signed.to(torch.float32) * scale.to(torch.float32).repeat_interleave(group, dim=-1)


def _activate(name: str, h: torch.Tensor) -> torch.Tensor:
    if name == "relu2_no_mul":
        return torch.relu(h).square()
    if name == "swigluoai":  # interleaved rows: gate at even, up at odd positions
        gate, up = h[..., 0::2].clamp(max=7.0), h[..., 1::2].clamp(-7.0, 7.0)
        return (up + 1) * gate * torch.sigmoid(1.702 * gate)
    half = h.shape[-1] // 2
    gate, up = h[..., :half], h[..., half:]
    if name == "silu":
        return F.silu(gate) * up
    if name == "gelu":
        return F.gelu(gate) * up
    return F.gelu(gate, approximate="tanh") * up


class XpuFusedMoeEmulation:
    """Emulates ``vllm_xpu_kernels.fused_moe_interface.XpuFusedMoe`` (current API), see the module doc."""

    def __init__(
        self,
        w13: torch.Tensor,
        w13_scales: torch.Tensor | None,
        w13_bias: torch.Tensor | None,
        w2: torch.Tensor,
        w2_scales: torch.Tensor | None,
        w2_bias: torch.Tensor | None,
        n_experts_per_token: int,
        activation: str,
        num_experts: int,
        ep_rank: int = 0,
        ep_size: int = 1,
        expert_map: torch.Tensor | None = None,
        gemm1_clamp_limit: float | None = None,
        activation_situ_beta: float | None = None,
        activation_situ_linear_beta: float | None = None,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation {activation!r} not in {_ACTIVATIONS}")
        if not (w13.is_contiguous() and w2.is_contiguous()):
            raise ValueError("w13 and w2 must be contiguous")
        if w13.shape[0] != num_experts or w2.shape[0] != num_experts:
            raise ValueError(f"num_experts={num_experts} but w13 has {w13.shape[0]} and w2 {w2.shape[0]} experts")
        self.recipe = infer_recipe(w13, w13_scales)
        self.w13 = dequantize(self.recipe, w13, w13_scales)  # [E, 2N, K]
        self.w2 = dequantize(self.recipe, w2, w2_scales)  # [E, K, N]
        self.w13_bias, self.w2_bias = w13_bias, w2_bias
        self.top_k, self.activation, self.num_experts = n_experts_per_token, activation, num_experts
        self.ep_rank, self.ep_size, self.expert_map = ep_rank, ep_size, expert_map
        self.clamp = gemm1_clamp_limit

    def _local_ids(self, topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
        ids = topk_ids.to(torch.int64)
        emap = expert_map if expert_map is not None else self.expert_map
        if emap is not None:
            emap = emap.to(device=ids.device, dtype=torch.int64)
            return torch.where(ids >= 0, emap[ids.clamp(min=0)], ids.new_full((), -1))
        start = self.ep_rank * self.num_experts
        local = ids - start
        return torch.where((ids >= 0) & (local >= 0) & (local < self.num_experts), local, ids.new_full((), -1))

    def apply(
        self,
        output: torch.Tensor,
        hidden_states: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        expert_map: torch.Tensor | None = None,
        a1q_scale: torch.Tensor | None = None,
    ) -> None:
        if hidden_states.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"XPU MoE activations must be bf16 or fp16, got {hidden_states.dtype}")
        x = hidden_states.to(torch.float32)
        local = self._local_ids(topk_ids, expert_map)
        acc = torch.zeros_like(x)
        for e in torch.unique(local[local >= 0]).tolist():
            rows, slots = torch.nonzero(local == e, as_tuple=True)
            h = x[rows] @ self.w13[e].T
            if self.w13_bias is not None:
                h = h + self.w13_bias[e].to(torch.float32)
            if self.clamp is not None:
                half = h.shape[-1] // 2
                h = torch.cat([h[:, :half].clamp(max=self.clamp), h[:, half:].clamp(-self.clamp, self.clamp)], -1)
            a = _activate(self.activation, h).to(hidden_states.dtype).to(torch.float32)  # the kernel's dtype round
            y = a @ self.w2[e].T
            if self.w2_bias is not None:
                y = y + self.w2_bias[e].to(torch.float32)
            acc.index_add_(0, rows, y * topk_weights[rows, slots].to(torch.float32)[:, None])
        output.copy_(acc.to(output.dtype))
