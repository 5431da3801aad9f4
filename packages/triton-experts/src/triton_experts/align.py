"""Group (token, slot) rows by expert for the grouped GEMM (pure torch, no custom ops).

``align_by_expert(topk_ids, num_local_experts=, block_m=, expert_map=)`` flattens ``topk_ids``
``[M, k]`` into ``M * k`` slot rows, maps global ids to local ones (``expert_map``: -1 = not on
this rank), and returns the rows of each local expert contiguously, each expert's run padded up
to a multiple of ``block_m`` with the sentinel ``M * k``. Rows whose expert is not local (or
whose id is negative: padding) are left out, so the kernels never touch them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Alignment:
    """``sorted_ids`` int32 [P] (P = padded rows, a multiple of block_m), ``expert_ids`` int32
    [P / block_m] (the local expert of each block), ``num_post_padded`` int32 [1] (= P), and
    ``num_valid`` = M * k (the sentinel)."""

    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_post_padded: torch.Tensor
    num_valid: int
    block_m: int


def align_by_expert(topk_ids: torch.Tensor, *, num_local_experts: int, block_m: int,
                    expert_map: torch.Tensor | None = None) -> Alignment:
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_valid = flat.numel()
    device = flat.device
    if expert_map is not None:
        local = torch.where(flat >= 0, expert_map.to(device=device, dtype=torch.int64)[flat.clamp(min=0)],
                            torch.full_like(flat, -1))
    else:
        local = torch.where((flat >= 0) & (flat < num_local_experts), flat, torch.full_like(flat, -1))
    keep = local >= 0
    rows = torch.nonzero(keep, as_tuple=True)[0]
    experts = local[rows]
    order = torch.argsort(experts, stable=True)
    rows, experts = rows[order], experts[order]
    counts = torch.bincount(experts, minlength=num_local_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    total = int(padded.sum())
    sorted_ids = torch.full((max(total, block_m),), num_valid, dtype=torch.int32, device=device)
    if rows.numel():
        starts = torch.cumsum(padded, 0) - padded  # start of each expert's run
        run_start = torch.cumsum(counts, 0) - counts
        pos = starts[experts] + (torch.arange(rows.numel(), device=device) - run_start[experts])
        sorted_ids[pos] = rows.to(torch.int32)
    blocks = torch.repeat_interleave(torch.arange(num_local_experts, device=device), padded // block_m)
    expert_ids = torch.full((max(total, block_m) // block_m,), -1, dtype=torch.int32, device=device)
    expert_ids[: blocks.numel()] = blocks.to(torch.int32)
    return Alignment(sorted_ids=sorted_ids, expert_ids=expert_ids,
                     num_post_padded=torch.tensor([total], dtype=torch.int32, device=device),
                     num_valid=num_valid, block_m=block_m)
