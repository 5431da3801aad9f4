"""The experts base class: typed capabilities, `is_supported` with structured reasons, keyword-only apply.

An experts class declares what it serves in one frozen :class:`Capabilities` record; the
generic checks in :meth:`Experts.is_supported` turn that record into a yes or a
:class:`Rejection` with a :class:`RejectReason`. A class adds checks that data cannot express
(shape divisibility, tuned configs) by overriding :meth:`Experts.check_extra`.
"""

from __future__ import annotations

import enum
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from quantkeys import PlatformKind, QuantKey, key_name
from weight_layouts import ExpertWeights, to_layout

from .activations import Activation
from .config import ActivationFormat, MoEConfig, MoEQuantConfig
from .platform import Platform

QuantPair = tuple[QuantKey | None, QuantKey | None]



def expert_id_message(num_experts: int, found: int | None = None) -> str:
    """The error for an expert id out of range: naming the id ``found`` (a host check) or, for a
    device-side assertion that cannot read it, any id ``>= num_experts``."""
    held = f"expert id {found}" if found is not None else f"an expert id >= {num_experts}"
    return f"topk_ids holds {held}; valid ids are 0..{num_experts - 1} (negative ids mark padding slots)"

class RejectReason(enum.Enum):
    """Why a backend cannot serve a layer; tools filter on these."""

    UNKNOWN_BACKEND = "unknown backend"
    MISSING_DEPENDENCY = "missing dependency"
    PLATFORM = "platform"
    DEVICE_CAPABILITY = "device capability"
    QUANT_KEYS = "quant-key pair"
    ACTIVATION = "activation"
    ACTIVATION_FORMAT = "activation format"
    EXPERT_PARALLEL = "expert parallelism"
    BIAS = "bias"
    LORA = "lora"
    DTYPE = "dtype"
    SHAPE = "shape divisibility"
    NO_TUNED_CONFIG = "no tuned config"


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """One backend's (or experts class's) reason for not serving a layer."""

    backend: str
    experts: str
    reason: RejectReason
    detail: str

    def __str__(self) -> str:
        return f"{self.backend} ({self.experts}): {self.reason.value}: {self.detail}"


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """What an experts class serves. Selection and "why rejected" reports are queries over this.

    ``min_capability`` gives, per platform kind, the lowest CUDA compute capability (or None for
    no limit); ``min_capability_by_key`` tightens it for particular weight keys (fp8 needs sm89).
    ``requires`` lists modules that must be importable.
    """

    quant_pairs: frozenset[QuantPair]
    platforms: frozenset[PlatformKind]
    activations: frozenset[Activation]
    activation_formats: frozenset[ActivationFormat] = frozenset({ActivationFormat.STANDARD})
    in_dtypes: frozenset[torch.dtype] = frozenset({torch.bfloat16, torch.float16, torch.float32})
    bias: bool = True
    expert_parallel: bool = True
    lora: bool = False
    min_capability: tuple[int, int] | None = None
    min_capability_by_key: Mapping[QuantKey, tuple[int, int]] = field(default_factory=dict)
    requires: tuple[str, ...] = ()


def _key_text(key: QuantKey | None) -> str:
    name = key_name(key)
    return f"{key} ({name})" if name and name != "none" else str(key) if key is not None else "none"


class Experts(ABC):
    """Base class of every experts implementation.

    Subclasses set ``backend`` (registry name), ``layout`` (the weight-layouts layout their
    weights must be in) and ``capabilities``; they implement :meth:`forward`. Construction
    converts the weights to ``layout`` once (a no-op when they are already there) and validates
    everything, so errors surface at load time, not on the first forward.
    """

    backend: ClassVar[str]
    layout: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, *, config: MoEConfig, quant: MoEQuantConfig, weights: ExpertWeights,
                 platform: Platform | None = None) -> None:
        platform = platform or Platform.detect()
        ok, rejection = type(self).is_supported(
            config, platform, weight_key=quant.weight_key, activation_key=quant.activation_key
        )
        if not ok:
            assert rejection is not None
            raise ValueError(f"{type(self).__name__} cannot serve this layer: {rejection}")
        if (weights.weight_key, weights.activation_key) != (quant.weight_key, quant.activation_key):
            raise ValueError(
                f"the weights are {_key_text(weights.weight_key)} / {_key_text(weights.activation_key)} but the "
                f"quant config says {_key_text(quant.weight_key)} / {_key_text(quant.activation_key)}"
            )
        if weights.num_experts != config.num_local_experts:
            raise ValueError(f"the weights hold {weights.num_experts} experts; this rank serves "
                             f"{config.num_local_experts} (num_experts={config.num_experts}, ep_size={config.ep_size})")
        if (weights.hidden_size, weights.intermediate_size) != (config.hidden_size, config.intermediate_size):
            raise ValueError(
                f"weights have hidden {weights.hidden_size} / intermediate {weights.intermediate_size}; the config "
                f"says {config.hidden_size} / {config.intermediate_size}"
            )
        if weights.gated != config.activation.is_gated:
            raise ValueError(f"activation {config.activation} is {'' if config.activation.is_gated else 'not '}gated "
                             f"but the weights are {'' if weights.gated else 'not '}gated")
        if (weights.w13_bias is not None) != config.has_bias:
            raise ValueError(f"config.has_bias={config.has_bias} but the weights "
                             f"{'have' if weights.w13_bias is not None else 'have no'} biases")
        self.config = config
        self.quant = quant
        self.platform = platform
        self.weights = to_layout(weights, self.layout)
        self.expert_map: torch.Tensor | None = None
        emap = config.resolved_expert_map()
        if emap is not None:
            self.expert_map = torch.tensor(emap, dtype=torch.int32)
        self.prepare()

    def prepare(self) -> None:  # noqa: B027  (optional hook)
        """Build-time work after the weights are in layout (kernel objects, tuned configs)."""

    # -- capability checks ---------------------------------------------------------------
    @classmethod
    def is_supported(
        cls,
        config: MoEConfig,
        platform: Platform,
        *,
        weight_key: QuantKey | None,
        activation_key: QuantKey | None,
    ) -> tuple[bool, Rejection | None]:
        """``(True, None)`` or ``(False, Rejection)`` naming the first unmet requirement."""
        reason = cls._first_unmet(config, platform, weight_key, activation_key)
        if reason is None:
            return True, None
        kind, detail = reason
        return False, Rejection(backend=cls.backend, experts=cls.__name__, reason=kind, detail=detail)

    @classmethod
    def _first_unmet(cls, config: MoEConfig, platform: Platform, weight_key: QuantKey | None,
                     activation_key: QuantKey | None) -> tuple[RejectReason, str] | None:
        caps = cls.capabilities
        if platform.kind not in caps.platforms:
            served = ", ".join(sorted(p.value for p in caps.platforms))
            return RejectReason.PLATFORM, f"runs on {served}, not {platform.kind.value}"
        for module in caps.requires:
            if not (platform.has(module) or importlib.util.find_spec(module) is not None):
                return RejectReason.MISSING_DEPENDENCY, f"needs the Python package {module!r}, which is not installed"
        if (weight_key, activation_key) not in caps.quant_pairs:
            return RejectReason.QUANT_KEYS, (
                f"does not serve weight {_key_text(weight_key)} with activation {_key_text(activation_key)}"
            )
        need = caps.min_capability_by_key.get(weight_key) if weight_key is not None else None
        need = need or caps.min_capability
        if platform.kind is PlatformKind.CUDA and need is not None and not platform.at_least(*need):
            cap = platform.capability
            return RejectReason.DEVICE_CAPABILITY, (
                f"needs compute capability >= {need[0]}.{need[1]} for {_key_text(weight_key)}; "
                f"this device is {cap[0]}.{cap[1]}" if cap else "needs a CUDA capability"
            )
        if config.activation not in caps.activations:
            served = ", ".join(sorted(a.value for a in caps.activations))
            return RejectReason.ACTIVATION, f"activation {config.activation.value} not in [{served}]"
        if config.activation_format not in caps.activation_formats:
            return RejectReason.ACTIVATION_FORMAT, f"{config.activation_format.value} activation format not served"
        if config.in_dtype not in caps.in_dtypes:
            return RejectReason.DTYPE, f"activations in {config.in_dtype} not served"
        if config.has_bias and not caps.bias:
            return RejectReason.BIAS, "expert biases not served"
        if config.uses_expert_parallel and not caps.expert_parallel:
            return RejectReason.EXPERT_PARALLEL, "expert parallelism (expert_map) not served"
        if config.lora_enabled and not caps.lora:
            return RejectReason.LORA, "LoRA on experts not served"
        return cls.check_extra(config, platform, weight_key=weight_key, activation_key=activation_key)

    @classmethod
    def check_extra(cls, config: MoEConfig, platform: Platform, *, weight_key: QuantKey | None,
                    activation_key: QuantKey | None) -> tuple[RejectReason, str] | None:
        """Override for checks the capability record cannot express (shapes, tuned configs)."""
        return None

    # -- running -------------------------------------------------------------------------
    def apply(
        self,
        *,
        hidden_states: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The weighted sum over each token's experts: ``[M, H]`` in the config's result dtype.

        ``topk_ids`` ``[M, S]`` hold global expert ids (negative = padding slot, contributes 0);
        ``topk_weights`` ``[M, S]`` float. ``S`` slots, ``1 <= S <= config.top_k``: the layer's
        ``top_k`` for routed tokens, 1 for rows that arrive one (token, slot) pair each (the
        all-to-all dispatch). ``out`` (optional) receives the result.
        """
        self.validate_inputs(hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
        if out is not None and (tuple(out.shape) != tuple(hidden_states.shape) or out.dtype != self.config.result_dtype):
            raise ValueError(f"out is {tuple(out.shape)} {out.dtype}, expected {tuple(hidden_states.shape)} "
                             f"{self.config.result_dtype}")
        if hidden_states.shape[0] == 0:
            result = hidden_states.new_empty((0, self.config.hidden_size), dtype=self.config.result_dtype)
        else:
            result = self.forward(hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
        if out is not None:
            out.copy_(result)
            return out
        return result

    @abstractmethod
    def forward(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        """Backend work on validated, non-empty inputs."""

    def validate_inputs(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                        topk_ids: torch.Tensor) -> None:
        """Clear errors for wrong shapes, dtypes and out-of-range expert ids (before any launch)."""
        cfg = self.config
        if hidden_states.dim() != 2 or hidden_states.shape[1] != cfg.hidden_size:
            raise ValueError(f"hidden_states must be [M, {cfg.hidden_size}], got {list(hidden_states.shape)}")
        if hidden_states.dtype != cfg.in_dtype:
            raise ValueError(f"hidden_states dtype {hidden_states.dtype}, the layer was built for {cfg.in_dtype}")
        m = hidden_states.shape[0]
        if topk_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"topk_ids must be int32 or int64, got {topk_ids.dtype} (were topk_weights and topk_ids "
                             "swapped?)")
        if not topk_weights.is_floating_point():
            raise ValueError(f"topk_weights must be floating point, got {topk_weights.dtype}")
        for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
            if t.dim() != 2 or t.shape[0] != m or not 1 <= t.shape[1] <= cfg.top_k:
                raise ValueError(f"{name} must be [{m}, S] (tokens x slots, 1 <= S <= top_k = {cfg.top_k}), "
                                 f"got {list(t.shape)}")
        if topk_ids.shape != topk_weights.shape:
            raise ValueError(f"topk_ids {list(topk_ids.shape)} and topk_weights {list(topk_weights.shape)} must have "
                             "the same shape")
        if m and topk_ids.numel():
            if topk_ids.device.type == "cpu":
                top = int(topk_ids.max())
                if top >= cfg.num_experts:
                    raise ValueError(expert_id_message(cfg.num_experts, top))
            else:
                self.assert_expert_ids_on_device(topk_ids)

    def assert_expert_ids_on_device(self, topk_ids: torch.Tensor) -> None:
        """Accelerator inputs: a device-side assertion that every id is below ``num_experts``, which
        fails the stream (and the next synchronizing call) loudly; no host synchronization, CUDA-graph
        safe. A backend whose own first kernel reads every id may override this and assert there
        instead (one launch rather than three); it must then assert on every forward."""
        torch._assert_async(topk_ids.max() < self.config.num_experts, expert_id_message(self.config.num_experts))
