"""XPUExpertsBase: the experts contract on top of XpuFusedMoe (native or emulated).

What vLLM's XPU experts got wrong, and how this base avoids it: the recipe is one enum value per
class (no mutually exclusive booleans); ``expert_map`` is passed to the kernel (not rebuilt from
ep_rank / ep_size); weights are converted once through the layout tag (no double transposes);
MXFP4 bytes are viewed as float4 before the kernel can take them for int4; the kernel object is
built once, at load time. Activation quantization: the native kernel runs its GEMMs on bf16/fp16
activations, so for schemes with an activation key the experts quantize-dequantize GEMM1's input
with that key before the kernel (matching the scheme); GEMM2's input is not re-quantized inside
the native kernel, a documented deviation from the reference of at most one activation rounding.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from moe_oracle import Activation, Capabilities, Experts, MoEConfig, Platform, RejectReason
from moe_oracle.reference.activation_quant import dequantize_activation, quantize_activation
from quantkeys import PlatformKind, QuantKey

from .adapter import KernelArgs, XpuFusedMoeAdapter
from .layout import LAYOUT
from .recipes import XpuRecipe

KERNEL_ACTIVATIONS = {
    Activation.SILU: "silu",
    Activation.GELU: "gelu",
    Activation.GELU_TANH: "gelu_tanh",
    Activation.SWIGLUOAI: "swigluoai",
    Activation.RELU2: "relu2_no_mul",
}


def xpu_capabilities(*, quant_pairs: frozenset) -> Capabilities:
    """The capability record shared by every XPU experts class, with its own quant pairs."""
    return Capabilities(
        quant_pairs=quant_pairs,
        platforms=frozenset({PlatformKind.XPU}),
        activations=frozenset(KERNEL_ACTIVATIONS),
        in_dtypes=frozenset({torch.bfloat16, torch.float16}),
        bias=True,
        expert_parallel=True,
        lora=False,
    )


def _interleave(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Halves ``[gate | up]`` along ``dim`` -> interleaved ``g0 u0 g1 u1 ...`` (swigluoai's kernel order)."""
    gate, up = t.chunk(2, dim=dim)
    return torch.stack([gate, up], dim=dim + 1 if dim >= 0 else dim).flatten(dim if dim >= 0 else dim - 1,
                                                                              dim + 1 if dim >= 0 else dim)


class XPUExpertsBase(Experts):
    """Base of the generated XPU experts classes (one recipe each)."""

    backend = "xpu"
    layout = LAYOUT
    recipe: ClassVar[XpuRecipe]

    @classmethod
    def check_extra(cls, config: MoEConfig, platform: Platform, *, weight_key: QuantKey | None,
                    activation_key: QuantKey | None) -> tuple[RejectReason, str] | None:
        h, i = config.hidden_size, config.intermediate_size
        if (2 * i) % 8 or h % 8:
            return RejectReason.SHAPE, f"GEMM N must be a multiple of 8 (hidden {h}, 2 x intermediate {2 * i})"
        if cls.recipe is XpuRecipe.BLOCK_FP8:
            if h % 128 or i % 128:
                return RejectReason.SHAPE, f"block_fp8 needs hidden {h} and intermediate {i} multiples of 128"
            if config.activation is Activation.SWIGLUOAI:
                return RejectReason.ACTIVATION, "swigluoai reads interleaved gate/up rows; 128-row blocks cannot be interleaved"
        if cls.recipe in (XpuRecipe.MXFP8, XpuRecipe.MXFP4) and (h % 32 or i % 32):
            return RejectReason.SHAPE, f"MX recipes need hidden {h} and intermediate {i} multiples of 32"
        if cls.recipe is XpuRecipe.INT4 and weight_key is not None:
            g = weight_key.group_shape.group_size
            if g is None or h % g or i % g:
                return RejectReason.SHAPE, f"int4 groups of {g} must divide hidden {h} and intermediate {i}"
        return None

    def prepare(self) -> None:
        w, cfg = self.weights, self.config
        recipe = XpuRecipe(w.extras.get("recipe", ""))
        if recipe is not self.recipe:
            raise ValueError(f"{type(self).__name__} runs recipe {self.recipe.value}, the weights are {recipe.value}")
        dtype = cfg.in_dtype
        w13, w2 = w.w13.tensors["weight"], w.w2.tensors["weight"]
        s13, s2 = w.w13.tensors.get("scale"), w.w2.tensors.get("scale")
        b13 = None if w.w13_bias is None else w.w13_bias.to(dtype)
        b2 = None if w.w2_bias is None else w.w2_bias.to(dtype)
        if recipe is XpuRecipe.BF16:  # bf16 weights must be in the activation dtype
            w13, w2 = w13.to(dtype), w2.to(dtype)
        if recipe is XpuRecipe.INT4:  # the kernel reads int4 scales as the activation type
            s13, s2 = s13.to(dtype), s2.to(dtype)  # type: ignore[union-attr]
        if cfg.activation is Activation.SWIGLUOAI:
            rows = 1 if recipe.is_4bit else -1
            w13 = _interleave(w13, rows).contiguous()
            if s13 is not None and s13.dim() == 3:
                s13 = _interleave(s13, rows).contiguous()
            if b13 is not None:
                b13 = _interleave(b13, -1).contiguous()
        emap = None if self.expert_map is None else self.expert_map.to(torch.int32)
        self.adapter = XpuFusedMoeAdapter(KernelArgs(
            recipe=recipe, w13=w13, w13_scales=s13, w13_bias=b13, w2=w2, w2_scales=s2, w2_bias=b2,
            top_k=cfg.top_k, activation=KERNEL_ACTIVATIONS[cfg.activation], num_experts=cfg.num_local_experts,
            ep_rank=cfg.ep_rank, ep_size=cfg.ep_size, expert_map=emap,
        ), kernel_cls=self.kernel_class())
        self.adapter.impl  # noqa: B018  (build the kernel object now: errors at load time, not first forward)

    @classmethod
    def kernel_class(cls) -> type | None:
        """The XpuFusedMoe class to use (None: installed kernel or emulation, see the adapter)."""
        return None

    @property
    def native(self) -> bool:
        """True when the real vllm-xpu-kernels runs, False for the emulation."""
        return self.adapter.native

    def forward(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        a13 = self.quant.a13
        if a13.key is not None:  # the scheme quantizes GEMM1's input; the native kernel takes bf16/fp16
            qa = quantize_activation(x, a13.key, static_scale=a13.scale)
            x = dequantize_activation(qa).to(hidden_states.dtype)
        slots = topk_ids.shape[1]
        if slots < self.config.top_k:  # the kernel object is built for top_k slots: pad with empty slots
            pad = self.config.top_k - slots
            topk_ids = torch.cat([topk_ids, topk_ids.new_full((topk_ids.shape[0], pad), -1)], dim=1)
            topk_weights = torch.cat([topk_weights, topk_weights.new_zeros((topk_weights.shape[0], pad))], dim=1)
        out = torch.empty_like(hidden_states, dtype=self.config.result_dtype)
        self.adapter.apply(output=out, hidden_states=x, topk_weights=topk_weights, topk_ids=topk_ids)
        return out
