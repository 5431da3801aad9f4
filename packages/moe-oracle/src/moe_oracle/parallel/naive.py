"""Naive expert parallelism: every rank runs its local experts on every token; partial outputs are summed.

Tokens ``REPLICATED`` over the EP group: prepare is the identity and finalize all-reduces the
``[M, H]`` partial outputs. Tokens ``DATA_PARALLEL``: prepare all-gathers every rank's rows
(activations through the layer's :class:`~moe_oracle.parallel.wire.RowCodec`, quantized where that
is exact, plus int32 expert ids and the router weights), padded to the largest batch on the wire;
the experts run on all ``sum(M_r)`` tokens (slots of other ranks' experts add zero); finalize
reduce-scatters the partial outputs back to each rank's own rows. The sums run in the layer's
result dtype (what the wire carries), in the collective's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import MoEConfig
from .base import Prepared, TokenLayout, check_inputs
from .collectives import all_gather_counts, all_gather_rows, all_reduce, group_rank, reduce_scatter_rows
from .wire import RowCodec, from_bytes, to_bytes


@dataclass(frozen=True)
class _GatherState:
    counts: list[int]


class NaivePrepareFinalize:
    """All-gather (or nothing, for replicated tokens), local experts, reduce-scatter (or all-reduce)."""

    name = "naive"

    def __init__(self, *, config: MoEConfig, codec: RowCodec, tokens: TokenLayout, group: Any) -> None:
        self.config = config
        self.codec = codec
        self.tokens = tokens
        self.group = group
        self.rank = group_rank(group)

    def prepare(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> Prepared:
        check_inputs(self.config, hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
        if self.tokens is TokenLayout.REPLICATED:
            return Prepared(hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
        m, k = topk_ids.shape
        counts = all_gather_counts(m, group=self.group, device=hidden_states.device)
        x = self.codec.encode(hidden_states)
        ids = to_bytes(topk_ids.to(torch.int32))
        rows = torch.cat([x, ids, to_bytes(topk_weights)], dim=1)
        gathered = all_gather_rows(rows, counts=counts, group=self.group)
        a, b = x.shape[1], x.shape[1] + ids.shape[1]
        return Prepared(
            hidden_states=self.codec.decode(gathered[:, :a]),
            topk_weights=from_bytes(gathered[:, b:], topk_weights.dtype, (k,)),
            topk_ids=from_bytes(gathered[:, a:b], torch.int32, (k,)).to(topk_ids.dtype),
            state=_GatherState(counts),
        )

    def finalize(self, *, output: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        if self.tokens is TokenLayout.REPLICATED:
            return all_reduce(output, group=self.group)
        assert isinstance(prepared.state, _GatherState)
        return reduce_scatter_rows(output, counts=prepared.state.counts, rank=self.rank, group=self.group)
