"""Tensor parallelism of the experts: the all-reduce after the down projection.

Each rank of the TP group holds a shard of every expert's intermediate dimension
(``weight_layouts.shard_experts_tp``), so its experts' output is a partial sum over that shard;
summing over the group gives the layer's output. It wraps any prepare/finalize: the experts'
partial output is combined over the EP group first, then all-reduced over the TP group.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Prepared, PrepareFinalize
from .collectives import all_reduce


class TensorParallelReduce:
    """``inner``'s prepare; ``inner``'s finalize followed by an all-reduce over ``group``."""

    def __init__(self, *, inner: PrepareFinalize, group: Any) -> None:
        self.inner = inner
        self.group = group
        self.name = f"{inner.name}+tp"

    def prepare(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> Prepared:
        return self.inner.prepare(hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)

    def finalize(self, *, output: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        return all_reduce(self.inner.finalize(output=output, prepared=prepared), group=self.group)
