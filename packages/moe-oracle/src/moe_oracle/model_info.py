"""What a MoE layer needs from config.json beyond the weights: routing and activation."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .activations import Activation


class RoutingKind(enum.Enum):
    SOFTMAX_TOPK = "softmax_topk"  # Qwen-MoE, Mixtral, GPT-OSS
    GROUPED_TOPK = "grouped_topk"  # DeepSeek-V3 (sigmoid scores, correction bias, expert groups)


@dataclass(frozen=True, kw_only=True)
class RoutingSpec:
    kind: RoutingKind
    top_k: int
    renormalize: bool = True
    num_expert_group: int = 1
    topk_group: int = 1
    scoring: str = "softmax"
    routed_scaling_factor: float = 1.0


@dataclass(frozen=True, kw_only=True)
class MoELayerInfo:
    routing: RoutingSpec
    activation: Activation
    swiglu_limit: float | None = None


_ACTIVATIONS = {"silu": Activation.SILU, "swiglu": Activation.SILU, "gelu": Activation.GELU,
                "gelu_pytorch_tanh": Activation.GELU_TANH, "gelu_tanh": Activation.GELU_TANH}


def moe_layer_info(config: Mapping[str, Any]) -> MoELayerInfo:
    """Routing and activation of a Qwen-MoE / Mixtral / DeepSeek-V2/V3 / GPT-OSS config.json."""
    model_type = config.get("model_type")
    top_k = config.get("num_experts_per_tok")
    if not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"config.json: num_experts_per_tok={top_k!r} must be a positive int")
    if model_type == "gpt_oss":
        return MoELayerInfo(routing=RoutingSpec(kind=RoutingKind.SOFTMAX_TOPK, top_k=top_k, renormalize=True),
                            activation=Activation.SWIGLUOAI, swiglu_limit=float(config.get("swiglu_limit", 7.0)))
    act_name = str(config.get("hidden_act", "silu"))
    if act_name not in _ACTIVATIONS:
        raise ValueError(f"config.json: hidden_act={act_name!r} is not an expert activation this project knows "
                         f"({', '.join(_ACTIVATIONS)})")
    activation = _ACTIVATIONS[act_name]
    if model_type in ("deepseek_v3", "deepseek_v2") and config.get("topk_method") in ("noaux_tc", "group_limited_greedy"):
        routing = RoutingSpec(
            kind=RoutingKind.GROUPED_TOPK,
            top_k=top_k,
            renormalize=bool(config.get("norm_topk_prob", True)),
            num_expert_group=int(config.get("n_group", 1)),
            topk_group=int(config.get("topk_group", 1)),
            scoring=str(config.get("scoring_func", "sigmoid")),
            routed_scaling_factor=float(config.get("routed_scaling_factor", 1.0)),
        )
    elif model_type == "mixtral":
        routing = RoutingSpec(kind=RoutingKind.SOFTMAX_TOPK, top_k=top_k, renormalize=True)
    else:
        routing = RoutingSpec(kind=RoutingKind.SOFTMAX_TOPK, top_k=top_k,
                              renormalize=bool(config.get("norm_topk_prob", False)))
    return MoELayerInfo(routing=routing, activation=activation)
