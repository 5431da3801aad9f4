"""All-to-all expert parallelism: each (token, slot) goes only to the rank that owns its expert.

prepare: the valid (token, slot) pairs are grouped by owning rank (:func:`expert_owners`), the
per-rank split sizes exchanged (``all_to_all_single`` on an int64 ``[ep_size]``), and one row per
pair sent with a second ``all_to_all_single``: the token's activations through the layer's
:class:`~moe_oracle.parallel.wire.RowCodec` (quantized where that is exact), its global expert id
(int32) and its router weight. The split sizes are the one read-back to the host. The receiving
rank's experts run on the received rows as tokens of one slot (``topk_ids`` / ``topk_weights``
``[R, 1]``: the expert and the router weight), so they apply the router weight themselves and
size their work by the rows they actually run.

finalize: the weighted rows go back with the reverse splits, and the source rank sums each
token's rows in float32, in ascending global expert id (the order of the single-process
reference), then casts to the result dtype. With float32 activations this reproduces the
single-process reference bit for bit (same GEMM rows per expert when ranks hold consecutive
token blocks, same additions); in bfloat16 each row is rounded once before the sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import MoEConfig
from .base import Prepared, check_inputs
from .collectives import all_to_all_rows, exchange_counts, group_device, group_size
from .placement import expert_owners
from .wire import RowCodec, from_bytes, to_bytes


@dataclass(frozen=True)
class _DispatchState:
    num_tokens: int
    send_counts: list[int]
    recv_counts: list[int]
    sum_rows: torch.Tensor  # [P] positions in the returned rows, in summation order
    sum_tokens: torch.Tensor  # [P] the token each of those rows adds to


class AllToAllPrepareFinalize:
    """Dispatch (token, slot) rows to their experts' ranks and combine the results (see the module docstring).

    Building it is a collective when ``config.expert_map`` is explicit (the ranks' maps are gathered).
    """

    name = "all_to_all"

    def __init__(self, *, config: MoEConfig, codec: RowCodec, group: Any) -> None:
        self.config = config
        self.codec = codec
        self.group = group
        self.size = group_size(group)
        self.owners = expert_owners(config, group=group, device=group_device(group))

    def prepare(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> Prepared:
        check_inputs(self.config, hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
        device = hidden_states.device
        m, k = topk_ids.shape
        flat = topk_ids.reshape(-1).to(torch.int64)
        valid = flat >= 0
        # every slot gets a destination; padding slots go to a bucket past the last rank, sorted last
        dest = torch.where(valid, self.owners.to(device)[flat.clamp(min=0)], self.size)
        send_order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=self.size + 1)[: self.size]
        recv = exchange_counts(send, group=self.group)
        counts = torch.cat([send, recv]).tolist()  # the one read-back to the host: split sizes
        send_counts, recv_counts = counts[: self.size], counts[self.size:]
        send_pairs = send_order[: sum(send_counts)]  # the valid (token, slot) pairs, grouped by rank
        x = self.codec.encode(hidden_states)
        ids = to_bytes(flat[send_pairs].to(torch.int32).reshape(-1, 1))
        weights = to_bytes(topk_weights.reshape(-1)[send_pairs].reshape(-1, 1))
        rows = torch.cat([x[torch.div(send_pairs, k, rounding_mode="floor")], ids, weights], dim=1)
        got = all_to_all_rows(rows, send_counts=send_counts, recv_counts=recv_counts, group=self.group)
        a, b = x.shape[1], x.shape[1] + ids.shape[1]
        # the combine adds each token's rows in ascending expert id (ties: slot order), as the reference does
        position = torch.empty_like(send_order)
        position[send_order] = torch.arange(send_order.numel(), device=device)
        by_expert = torch.argsort(torch.where(valid, flat, self.config.num_experts), stable=True)[: send_pairs.numel()]
        state = _DispatchState(num_tokens=m, send_counts=send_counts, recv_counts=recv_counts,
                               sum_rows=position[by_expert],
                               sum_tokens=torch.div(by_expert, k, rounding_mode="floor"))
        # the received rows are tokens of one slot each: (row, its expert, its router weight)
        return Prepared(hidden_states=self.codec.decode(got[:, :a]),
                        topk_weights=from_bytes(got[:, b:], topk_weights.dtype, (1,)),
                        topk_ids=from_bytes(got[:, a:b], torch.int32, (1,)).to(topk_ids.dtype), state=state)

    def finalize(self, *, output: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        state = prepared.state
        assert isinstance(state, _DispatchState)
        back = all_to_all_rows(output, send_counts=state.recv_counts, recv_counts=state.send_counts, group=self.group)
        out = torch.zeros((state.num_tokens, output.shape[1]), dtype=torch.float32, device=output.device)
        out.index_add_(0, state.sum_tokens, back[state.sum_rows].to(torch.float32))
        return out.to(output.dtype)
