"""Router top-k selection: softmax top-k and DeepSeek-V3 grouped top-k (noaux_tc).

Router logits come from an unquantized gate computed by the caller in full precision; nothing
here quantizes. Both functions return a :class:`TopK`, whose keyword-only fields keep the float
weights and the integer ids from ever being swapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["TopK", "grouped_topk", "softmax_topk"]


@dataclass(frozen=True, kw_only=True)
class TopK:
    """Routing decision: ``weights`` float32 [M, k] and expert ``ids`` int32 [M, k]."""

    weights: torch.Tensor
    ids: torch.Tensor

    def __post_init__(self) -> None:
        if self.weights.dtype != torch.float32:
            raise ValueError(f"TopK.weights must be float32, got {self.weights.dtype}")
        if self.ids.dtype != torch.int32:
            raise ValueError(f"TopK.ids must be int32, got {self.ids.dtype}")
        if self.weights.dim() != 2 or self.weights.shape != self.ids.shape:
            raise ValueError(
                f"TopK.weights {tuple(self.weights.shape)} and ids {tuple(self.ids.shape)} must both be [M, k]"
            )

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.ids.shape[1])


def _work_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check_logits(router_logits: torch.Tensor, top_k: int) -> tuple[int, int]:
    if not isinstance(router_logits, torch.Tensor):
        raise ValueError(f"router_logits must be a torch.Tensor, got {type(router_logits).__name__}")
    if not router_logits.is_floating_point():
        raise ValueError(f"router_logits must be a float tensor, got {router_logits.dtype}")
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [M, E], got shape {tuple(router_logits.shape)}")
    m, num_experts = router_logits.shape
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if top_k > num_experts:
        raise ValueError(f"top_k = {top_k} exceeds the number of experts E = {num_experts}")
    return m, num_experts


def _finish(weights: torch.Tensor, ids: torch.Tensor, *, renormalize: bool, scaling: float = 1.0) -> TopK:
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if scaling != 1.0:
        weights = weights * scaling
    return TopK(weights=weights.to(torch.float32), ids=ids.to(torch.int32))


def softmax_topk(router_logits: torch.Tensor, top_k: int, *, renormalize: bool) -> TopK:
    """Softmax over experts (float32, float64 for float64 logits), then the ``top_k`` largest.

    ``router_logits`` [M, E]. Weights are the chosen probabilities, divided by their sum when
    ``renormalize``. Ids are sorted by descending weight.
    """
    _check_logits(router_logits, top_k)
    probs = torch.softmax(router_logits.to(_work_dtype(router_logits)), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1, sorted=True)
    return _finish(weights, ids, renormalize=renormalize)


def grouped_topk(
    router_logits: torch.Tensor,
    top_k: int,
    *,
    num_expert_group: int,
    topk_group: int,
    correction_bias: torch.Tensor | None = None,
    scoring: Literal["sigmoid", "softmax"] = "sigmoid",
    renormalize: bool = True,
    routed_scaling_factor: float = 1.0,
) -> TopK:
    """DeepSeek-V3 grouped top-k (``noaux_tc``).

    ``scores = sigmoid(logits)`` (or softmax); selection uses ``scores + correction_bias``
    (bias [E], float). The E experts form ``num_expert_group`` contiguous groups; a group's
    score is the sum of its top-2 biased scores (with no bias: its largest score, DeepSeek-V2
    style); the ``topk_group`` best groups are kept and the ``top_k`` best experts among them
    chosen by biased score. Weights are the chosen experts' *unbiased* scores, divided by their
    sum when ``renormalize``, then times ``routed_scaling_factor``. Computed in float32
    (float64 for float64 logits).
    """
    m, num_experts = _check_logits(router_logits, top_k)
    if num_expert_group < 1 or num_experts % num_expert_group != 0:
        raise ValueError(
            f"E = {num_experts} experts cannot be split into num_expert_group = {num_expert_group} equal groups"
        )
    if not 1 <= topk_group <= num_expert_group:
        raise ValueError(f"topk_group = {topk_group} must be in [1, num_expert_group = {num_expert_group}]")
    per_group = num_experts // num_expert_group
    if top_k > topk_group * per_group:
        raise ValueError(
            f"top_k = {top_k} exceeds the {topk_group * per_group} experts in the kept {topk_group} groups"
        )
    if scoring not in ("sigmoid", "softmax"):
        raise ValueError(f"scoring must be 'sigmoid' or 'softmax', got {scoring!r}")

    work = _work_dtype(router_logits)
    logits = router_logits.to(work)
    scores = torch.sigmoid(logits) if scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    if correction_bias is not None:
        if not isinstance(correction_bias, torch.Tensor) or not correction_bias.is_floating_point():
            raise ValueError("correction_bias must be a float tensor [E]")
        if tuple(correction_bias.shape) != (num_experts,):
            raise ValueError(f"correction_bias must be [E] = [{num_experts}], got {list(correction_bias.shape)}")
        choice = scores + correction_bias.to(device=scores.device, dtype=work)
    else:
        choice = scores

    grouped = choice.reshape(m, num_expert_group, per_group)
    if correction_bias is not None:
        group_scores = grouped.topk(min(2, per_group), dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.amax(dim=-1)
    kept = torch.topk(group_scores, topk_group, dim=-1, sorted=False).indices  # [M, topk_group]
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    expert_mask = group_mask.unsqueeze(-1).expand(m, num_expert_group, per_group).reshape(m, num_experts)
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    ids = torch.topk(masked, top_k, dim=-1, sorted=True).indices
    weights = scores.gather(1, ids)
    return _finish(weights, ids, renormalize=renormalize, scaling=routed_scaling_factor)
