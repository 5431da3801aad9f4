"""The prepare/finalize contract and how a layer is spread over processes.

A kernel call is ``prepare -> experts.apply -> finalize``. ``prepare`` turns this rank's tokens
into the rows its experts must run (the same rows on one rank; every rank's tokens after an
all-gather; the (token, slot) rows routed here after an all-to-all) and returns them in a
:class:`Prepared`; ``finalize`` turns the experts' output on those rows back into this rank's
``[M, H]`` result (identity; reduce-scatter / all-reduce; all-to-all back and a weighted sum).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import MoEConfig
from ..experts_base import expert_id_message


class PrepareFinalizeKind(enum.Enum):
    """Which prepare/finalize a layer uses (``AUTO``: let :func:`select_prepare_finalize` choose)."""

    AUTO = "auto"
    LOCAL = "local"
    NAIVE = "naive"
    ALL_TO_ALL = "all_to_all"


class TokenLayout(enum.Enum):
    """How tokens sit on the ranks of the expert-parallel group.

    ``REPLICATED``: every rank holds the same batch (tensor-parallel attention before the MoE).
    ``DATA_PARALLEL``: each rank holds its own tokens (data-parallel attention); always correct,
    hence the default.
    """

    REPLICATED = "replicated"
    DATA_PARALLEL = "data_parallel"


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """How one MoE layer is spread over processes (torch.distributed must be initialized).

    ``kind``: the prepare/finalize to use (``AUTO`` picks from the MoEConfig and ``tokens``).
    ``ep_group``: the expert-parallel process group (None: the default group); its size and this
    rank's place in it must equal the MoEConfig's ``ep_size`` / ``ep_rank``. ``tp_group``: the
    tensor-parallel group whose partial outputs (intermediate dimension sharded, see
    ``weight_layouts.shard_experts_tp``) are all-reduced after the down projection (None: none).
    ``quantize_dispatch``: None quantizes activations before they cross the wire wherever that is
    exact (see :mod:`moe_oracle.parallel.wire`); True insists (raises where the scheme has no
    row-wise activation quantization); False sends rows in the activation dtype.
    """

    kind: PrepareFinalizeKind = PrepareFinalizeKind.AUTO
    tokens: TokenLayout = TokenLayout.DATA_PARALLEL
    ep_group: Any = None
    tp_group: Any = None
    quantize_dispatch: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, PrepareFinalizeKind):
            raise ValueError(f"kind must be a PrepareFinalizeKind, got {self.kind!r} (use PrepareFinalizeKind('naive'))")
        if not isinstance(self.tokens, TokenLayout):
            raise ValueError(f"tokens must be a TokenLayout, got {self.tokens!r} (use TokenLayout('replicated'))")
        if self.quantize_dispatch is not None and not isinstance(self.quantize_dispatch, bool):
            raise ValueError(f"quantize_dispatch must be None, True or False, got {self.quantize_dispatch!r}")


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """What the experts run on after ``prepare``, and what ``finalize`` needs to undo it.

    ``hidden_states`` ``[R, H]`` in the layer's ``in_dtype``; ``topk_weights`` float ``[R, k]``;
    ``topk_ids`` integer ``[R, k]`` global expert ids (-1: padding slot). ``state`` is private to
    the prepare/finalize that made it.
    """

    hidden_states: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    state: Any = None


@runtime_checkable
class PrepareFinalize(Protocol):
    """A prepare/finalize: keyword-only, stateless between calls (per-call state rides in Prepared)."""

    name: str

    def prepare(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> Prepared: ...

    def finalize(self, *, output: torch.Tensor, prepared: Prepared) -> torch.Tensor: ...


def check_inputs(config: MoEConfig, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> None:
    """Clear errors for this rank's inputs, raised before any collective is entered (an expert id out
    of range on an accelerator: a device-side assertion, as the experts do, with no host synchronization)."""
    check_shapes(config, hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
    if not topk_ids.numel():
        return
    if topk_ids.device.type == "cpu":
        top = int(topk_ids.max())
        if top >= config.num_experts:
            raise ValueError(expert_id_message(config.num_experts, top))
    else:  # no host synchronization on an accelerator: a device-side assertion fails the stream loudly
        torch._assert_async(topk_ids.max() < config.num_experts, expert_id_message(config.num_experts))


def check_shapes(config: MoEConfig, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> None:
    """The layer's input contract without reading data: ``[M, H]`` activations in the layer's dtype,
    ``[M, top_k]`` integer ids and float weights."""
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 2 \
            or hidden_states.shape[1] != config.hidden_size:
        got = list(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise ValueError(f"hidden_states must be [M, {config.hidden_size}], got {got}")
    if hidden_states.dtype != config.in_dtype:
        raise ValueError(f"hidden_states dtype {hidden_states.dtype}, the layer was built for {config.in_dtype}")
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dtype not in (torch.int32, torch.int64):
        got = topk_ids.dtype if isinstance(topk_ids, torch.Tensor) else type(topk_ids).__name__
        raise ValueError(f"topk_ids must be int32 or int64, got {got} (were topk_weights and topk_ids swapped?)")
    if not isinstance(topk_weights, torch.Tensor) or not topk_weights.is_floating_point():
        got = topk_weights.dtype if isinstance(topk_weights, torch.Tensor) else type(topk_weights).__name__
        raise ValueError(f"topk_weights must be floating point, got {got}")
    expected = [hidden_states.shape[0], config.top_k]
    for name, t in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if list(t.shape) != expected:
            raise ValueError(f"{name} must be {expected} (tokens x top_k), got {list(t.shape)}")
