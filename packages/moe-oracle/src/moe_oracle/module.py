"""QuantizedMoE: a torch.nn.Module for one MoE layer built from a quantized checkpoint.

``forward(hidden_states, router_logits)``: the caller's router (kept in full precision, never
quantized) produces ``router_logits`` ``[M, E]``; the module routes (softmax top-k or DeepSeek's
grouped top-k), then runs the selected experts kernel.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weight_layouts import load_experts
from weight_layouts.loading import ShardIndex, moe_dims, read_config, resolve_naming

from .config import MoEConfig
from .kernel import MoEKernel, make_kernel
from .model_info import MoELayerInfo, RoutingKind, moe_layer_info
from .platform import Platform
from .routing import TopK, grouped_topk, softmax_topk


class QuantizedMoE(nn.Module):
    """One MoE layer: routing + a selected experts kernel. Build with :meth:`from_checkpoint`."""

    def __init__(self, *, kernel: MoEKernel, info: MoELayerInfo, correction_bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.kernel = kernel
        self.info = info
        if correction_bias is not None:
            self.register_buffer("correction_bias", correction_bias.to(torch.float32), persistent=False)
        else:
            self.correction_bias = None

    @property
    def backend(self) -> str:
        return self.kernel.selection.backend

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_dir: str | Path,
        layer: int,
        *,
        dtype: torch.dtype = torch.bfloat16,
        platform: Platform | None = None,
        force: str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> QuantizedMoE:
        """Load layer ``layer``'s experts, select a backend for ``platform`` and build the kernel."""
        config_json = read_config(checkpoint_dir)
        info = moe_layer_info(config_json)
        dims = moe_dims(config_json)
        weights = load_experts(checkpoint_dir, layer, progress=progress)
        if device is not None:
            weights = weights.to(device)
        config = MoEConfig(
            num_experts=dims.num_experts,
            top_k=info.routing.top_k,
            hidden_size=dims.hidden_size,
            intermediate_size=dims.intermediate_size,
            activation=info.activation,
            has_bias=weights.w13_bias is not None,
            in_dtype=dtype,
        )
        kernel = make_kernel(weights=weights, config=config, platform=platform, force=force)
        bias = None
        if info.routing.kind is RoutingKind.GROUPED_TOPK:
            naming = resolve_naming(config_json, None)
            # the router's score-correction bias sits beside the experts: "...mlp.gate.e_score_correction_bias"
            name = naming.expert_prefix.split("experts.")[0].format(layer=layer) + "gate.e_score_correction_bias"
            index = ShardIndex(checkpoint_dir)
            if name in index:
                bias = index.load([name])[name]
        module = cls(kernel=kernel, info=info, correction_bias=bias)
        return module.to(device) if device is not None else module

    def route(self, router_logits: torch.Tensor) -> TopK:
        r = self.info.routing
        if r.kind is RoutingKind.GROUPED_TOPK:
            return grouped_topk(router_logits, r.top_k, num_expert_group=r.num_expert_group, topk_group=r.topk_group,
                                correction_bias=self.correction_bias, scoring=r.scoring, renormalize=r.renormalize,
                                routed_scaling_factor=r.routed_scaling_factor)
        return softmax_topk(router_logits, r.top_k, renormalize=r.renormalize)

    def forward(self, hidden_states: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` ``[M, H]`` in the layer dtype, ``router_logits`` ``[M, E]`` -> ``[M, H]``."""
        if router_logits.dim() != 2 or router_logits.shape[0] != hidden_states.shape[0]:
            raise ValueError(f"router_logits must be [M, E] with M = {hidden_states.shape[0]}, "
                             f"got {list(router_logits.shape)}")
        topk = self.route(router_logits)
        return self.kernel(hidden_states=hidden_states, topk_weights=topk.weights, topk_ids=topk.ids)
