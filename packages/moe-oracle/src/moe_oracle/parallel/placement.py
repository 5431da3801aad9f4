"""Which expert-parallel rank holds each global expert."""

from __future__ import annotations

from typing import Any

import torch

from ..config import MoEConfig
from .collectives import all_gather_rows, group_size


def expert_owners(config: MoEConfig, *, group: Any, device: torch.device) -> torch.Tensor:
    """int64 ``[num_experts]``: the rank of ``group`` that holds each global expert.

    Without an ``expert_map`` the placement is the default contiguous one (expert ``e`` on rank
    ``e // (num_experts / ep_size)``) and nothing is exchanged. An explicit ``expert_map`` is
    all-gathered (a collective, at build time) and every expert must sit on exactly one rank;
    every rank then raises the same error otherwise.
    """
    num = config.num_experts
    if config.expert_map is None:
        per_rank = num // config.ep_size
        return torch.arange(num, dtype=torch.int64, device=device) // per_rank
    size = group_size(group)
    mine = torch.tensor(config.expert_map, dtype=torch.int64, device=device).reshape(1, num)
    maps = all_gather_rows(mine, counts=[1] * size, group=group)  # [size, E]
    owned = maps >= 0
    holders = owned.sum(dim=0)
    orphans = torch.nonzero(holders == 0).reshape(-1).tolist()
    shared = torch.nonzero(holders > 1).reshape(-1).tolist()
    if orphans or shared:
        parts = []
        if orphans:
            parts.append(f"experts {orphans} are on no rank")
        if shared:
            parts.append(f"experts {shared} are on several ranks (redundant replicas need a load balancer's choice)")
        raise ValueError("the ranks' expert_maps do not place every expert exactly once: " + "; ".join(parts))
    return owned.to(torch.int64).argmax(dim=0)
