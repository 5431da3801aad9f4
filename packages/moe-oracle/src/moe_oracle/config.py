"""The MoE layer's description (MoEConfig) and its runtime quantization (MoEQuantConfig).

Everything is frozen and keyword-only: no positional slot can take a bias for a scale, and the
runtime quant config is built from the same QuantKeys the oracle selected on
(:meth:`MoEQuantConfig.from_weights`), so selection key and runtime config cannot disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from quantkeys import QuantKey
from weight_layouts import ExpertWeights

from .activations import Activation


class ActivationFormat(enum.Enum):
    """How activations reach the experts: ``[M, H]`` tokens (standard) or ``[E, max_tokens, H]`` per expert (batched)."""

    STANDARD = "standard"
    BATCHED = "batched"


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """A MoE layer as the oracle sees it.

    ``num_experts`` counts all experts (global); with expert parallelism this rank holds
    ``num_local_experts`` of them and ``expert_map[global_id]`` is the local id or -1 (default:
    a contiguous block of ``num_experts // ep_size`` experts per rank).
    ``intermediate_size`` is per tensor-parallel partition.
    """

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    activation: Activation = Activation.SILU
    has_bias: bool = False
    lora_enabled: bool = False
    ep_rank: int = 0
    ep_size: int = 1
    expert_map: tuple[int, ...] | None = None
    activation_format: ActivationFormat = ActivationFormat.STANDARD
    in_dtype: torch.dtype = torch.bfloat16
    out_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        for name in ("num_experts", "top_k", "hidden_size", "intermediate_size", "ep_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MoEConfig.{name} must be a positive int, got {value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if not 0 <= self.ep_rank < self.ep_size:
            raise ValueError(f"ep_rank={self.ep_rank} must be in [0, ep_size={self.ep_size})")
        if not isinstance(self.activation, Activation):
            raise ValueError(f"activation must be an Activation, got {self.activation!r} (use Activation('silu'))")
        if self.expert_map is not None:
            emap = tuple(int(x) for x in self.expert_map)
            if len(emap) != self.num_experts:
                raise ValueError(f"expert_map has {len(emap)} entries, expected num_experts={self.num_experts}")
            local = sorted(x for x in emap if x >= 0)
            if local != list(range(len(local))) or any(x < -1 for x in emap):
                raise ValueError("expert_map must map global ids to distinct local ids 0..L-1, or -1 (not local)")
            object.__setattr__(self, "expert_map", emap)
        elif self.ep_size > 1 and self.num_experts % self.ep_size:
            raise ValueError(
                f"num_experts={self.num_experts} is not divisible by ep_size={self.ep_size}; pass an explicit expert_map"
            )

    @property
    def num_local_experts(self) -> int:
        if self.expert_map is not None:
            return sum(1 for x in self.expert_map if x >= 0)
        return self.num_experts // self.ep_size

    @property
    def uses_expert_parallel(self) -> bool:
        return self.ep_size > 1 or self.expert_map is not None

    def resolved_expert_map(self) -> tuple[int, ...] | None:
        """The global -> local map (None when every expert is local)."""
        if self.expert_map is not None:
            return self.expert_map
        if self.ep_size == 1:
            return None
        per_rank = self.num_experts // self.ep_size
        start = self.ep_rank * per_rank
        return tuple(g - start if start <= g < start + per_rank else -1 for g in range(self.num_experts))

    @property
    def result_dtype(self) -> torch.dtype:
        return self.out_dtype or self.in_dtype


@dataclass(frozen=True, kw_only=True)
class TensorQuant:
    """How one operand is quantized: its key (None = not quantized) and the tensors that go with it.

    ``scale`` multiplies to dequantize; ``global_scale`` is a second per-tensor factor (NVFP4);
    ``zero_point`` exists for asymmetric keys; ``bias`` is added after the GEMM (weights only).
    """

    key: QuantKey | None = None
    scale: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.key is None and any(t is not None for t in (self.scale, self.global_scale, self.zero_point)):
            raise ValueError("an unquantized operand carries no scale, global scale or zero point")
        if self.key is not None and self.key.symmetric and self.zero_point is not None:
            raise ValueError(f"{self.key} is symmetric: it has no zero point")


@dataclass(frozen=True, kw_only=True)
class MoEQuantConfig:
    """The four operands of a MoE layer: GEMM1 weight/input (w13, a13), GEMM2 weight/input (w2, a2)."""

    w13: TensorQuant
    w2: TensorQuant
    a13: TensorQuant
    a2: TensorQuant

    def __post_init__(self) -> None:
        if self.w13.key != self.w2.key:
            raise ValueError(f"w13 and w2 keys differ ({self.w13.key} vs {self.w2.key}); one scheme per layer")
        if self.a13.key != self.a2.key:
            raise ValueError(f"a13 and a2 keys differ ({self.a13.key} vs {self.a2.key}); one scheme per layer")
        for name in ("a13", "a2"):
            op = getattr(self, name)
            if op.bias is not None:
                raise ValueError(f"{name} is an activation operand; biases belong to w13 / w2")

    @property
    def weight_key(self) -> QuantKey | None:
        return self.w13.key

    @property
    def activation_key(self) -> QuantKey | None:
        return self.a13.key

    @classmethod
    def from_keys(
        cls,
        *,
        weight_key: QuantKey | None,
        activation_key: QuantKey | None,
        w13_bias: torch.Tensor | None = None,
        w2_bias: torch.Tensor | None = None,
        a13_scale: torch.Tensor | None = None,
        a2_scale: torch.Tensor | None = None,
    ) -> MoEQuantConfig:
        """The runtime config of a scheme; static activation keys need ``a13_scale`` / ``a2_scale``."""
        static_act = activation_key is not None and activation_key.is_static
        if static_act and (a13_scale is None or a2_scale is None):
            raise ValueError(f"activation key {activation_key} is static: pass a13_scale and a2_scale")
        if not static_act and (a13_scale is not None or a2_scale is not None):
            raise ValueError(f"activation key {activation_key} is not static: it takes no a13_scale / a2_scale")
        return cls(
            w13=TensorQuant(key=weight_key, bias=w13_bias),
            w2=TensorQuant(key=weight_key, bias=w2_bias),
            a13=TensorQuant(key=activation_key, scale=a13_scale),
            a2=TensorQuant(key=activation_key, scale=a2_scale),
        )

    @classmethod
    def from_weights(
        cls, weights: ExpertWeights, *, a13_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None
    ) -> MoEQuantConfig:
        """The runtime config of loaded experts: their keys, biases and static activation scales (the
        checkpoint's unless given), so the selection key is the runtime config."""
        return cls.from_keys(
            weight_key=weights.weight_key,
            activation_key=weights.activation_key,
            w13_bias=weights.w13_bias,
            w2_bias=weights.w2_bias,
            a13_scale=weights.a13_scale if a13_scale is None else a13_scale,
            a2_scale=weights.a2_scale if a2_scale is None else a2_scale,
        )
