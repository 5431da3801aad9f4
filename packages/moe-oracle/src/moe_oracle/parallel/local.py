"""Single-rank prepare/finalize: tokens stay where they are; the experts reduce the top-k slots."""

from __future__ import annotations

import torch

from ..config import MoEConfig
from .base import Prepared, check_shapes


class LocalPrepareFinalize:
    """Identity prepare and finalize. With ``ep_size > 1`` and no collective, the output is this
    rank's partial sum over its local experts (the caller reduces).

    prepare checks the layer's shapes (``[M, top_k]`` routing); the experts check the expert ids."""

    name = "local"

    def __init__(self, *, config: MoEConfig) -> None:
        self.config = config

    def prepare(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> Prepared:
        check_shapes(self.config, hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)
        return Prepared(hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids)

    def finalize(self, *, output: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        return output
