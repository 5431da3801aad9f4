"""Group (token, slot) rows by expert for the grouped GEMM (no host synchronization), or not at
all for one-row blocks (:func:`direct_rows`; :func:`rows_for_experts` picks by block size): torch
(:func:`align_by_expert`, a stable sort) and one Triton launch (:func:`align_by_expert_triton`, one
program); :func:`align_for_experts` (what the experts call) takes the Triton launch for up to
:data:`ONE_LAUNCH_MAX_ROWS` rows (decode: one launch instead of about fifteen) and the sort above
(prefill: the single program places rows one atomic cursor at a time, 333 us of a 1766 us Qwen3
layer at 65,536 rows on an H100; benchmarks/triton_experts/align_bench.py measures the crossover).

``align_by_expert(topk_ids, num_local_experts=, block_m=, expert_map=)`` flattens ``topk_ids``
``[M, k]`` into ``M * k`` slot rows, maps global ids to local ones (``expert_map``: -1 = not on
this rank), and lays the rows of each local expert out contiguously, each expert's run padded up
to a multiple of ``block_m`` with the sentinel ``M * k``. Rows whose expert is not local (or whose
id is negative: padding) are left out, so the kernels never touch them.

Every output has a size known on the host (an upper bound of the padded length), so nothing waits
for the GPU: blocks past the real padded length carry expert -1 and the kernels skip them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class Alignment:
    """``sorted_ids`` int32 [P_max] (P_max a multiple of block_m), ``expert_ids`` int32 [P_max /
    block_m] (the local expert of each block, -1 past the end), ``num_post_padded`` int32 [1] (the
    real padded length P, on the device) and ``num_valid`` = M * k (the sentinel)."""

    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_post_padded: torch.Tensor
    num_valid: int
    block_m: int


def align_by_expert(topk_ids: torch.Tensor, *, num_local_experts: int, block_m: int,
                    expert_map: torch.Tensor | None = None, num_experts: int | None = None) -> Alignment:
    """Torch form; ``num_experts`` (global, optional): ids at or past it are dropped, as the Triton form does.
    Rows keep their order (token, slot) inside each expert's run."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_valid = flat.numel()
    device = flat.device
    e = num_local_experts
    in_range = flat >= 0 if num_experts is None else (flat >= 0) & (flat < num_experts)
    if expert_map is not None:
        emap = expert_map.to(device=device, dtype=torch.int64)
        local = torch.where(in_range, emap[flat.clamp(min=0, max=emap.numel() - 1)], torch.full_like(flat, -1))
    else:
        local = torch.where(in_range & (flat < e), flat, torch.full_like(flat, -1))
    valid = local >= 0
    key = torch.where(valid, local, torch.full_like(local, e))  # not-local rows sort last
    sorted_key, order = torch.sort(key, stable=True)
    counts = torch.zeros(e + 1, dtype=torch.int64, device=device).scatter_add_(0, key, torch.ones_like(key))[:e]
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    run_start = torch.cumsum(counts, 0) - counts
    # upper bound of the padded length: every expert adds at most block_m - 1 rows, and no row can
    # take more than a whole block of its own
    cap = padded_capacity(num_valid, e, block_m)
    sk = sorted_key.clamp(max=e - 1)
    dest = starts[sk] + torch.arange(num_valid, device=device) - run_start[sk]
    dest = torch.where(sorted_key < e, dest, torch.full_like(dest, cap))  # not-local rows go to a trash slot
    sorted_ids = torch.full((cap + 1,), num_valid, dtype=torch.int32, device=device)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    block_starts = torch.arange(0, cap, block_m, device=device)
    block_expert = torch.searchsorted(ends, block_starts, right=True)
    expert_ids = torch.where(block_expert < e, block_expert, torch.full_like(block_expert, -1)).to(torch.int32)
    return Alignment(sorted_ids=sorted_ids[:cap], expert_ids=expert_ids,
                     num_post_padded=ends[-1:].to(torch.int32) if e else torch.zeros(1, dtype=torch.int32,
                                                                                   device=device),
                     num_valid=num_valid, block_m=block_m)


def padded_capacity(num_valid: int, num_local_experts: int, block_m: int) -> int:
    """The host-known upper bound of the padded length (a multiple of block_m, at least one block)."""
    cap = min(num_valid + num_local_experts * (block_m - 1), num_valid * block_m)
    return max(block_m, (cap + block_m - 1) // block_m * block_m)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@functools.cache
def fused_kernels() -> Any:
    """triton_experts.kernels.fused, imported on first use (this package must import without Triton)."""
    from .kernels import fused

    return fused


def align_by_expert_triton(topk_ids: torch.Tensor, *, num_local_experts: int, num_experts: int, block_m: int,
                           expert_map: torch.Tensor | None = None) -> Alignment:
    """:func:`align_by_expert` in one Triton launch (one buffer, no host synchronization).

    Also drops ids ``>= num_experts`` (global). Inside an expert's run the rows come in arbitrary
    order (atomics); the set of rows per block-run is the same as the torch version's.
    """
    align_rows = fused_kernels().align_rows
    flat = topk_ids.reshape(-1)
    num_valid = flat.numel()
    e = num_local_experts
    cap = padded_capacity(num_valid, e, block_m)
    num_blocks = cap // block_m
    nb = _next_pow2(e + 1)
    buf = torch.empty(cap + num_blocks + 1 + nb, dtype=torch.int32, device=flat.device)
    sorted_ids = buf[:cap]
    expert_ids = buf[cap:cap + num_blocks]
    num_post_padded = buf[cap + num_blocks:cap + num_blocks + 1]
    cursor = buf[cap + num_blocks + 1:]
    align_rows[(1,)](flat, expert_map if expert_map is not None else cursor, sorted_ids, expert_ids, num_post_padded,
                     cursor, num_valid, cap, num_blocks, num_experts, e, HAS_MAP=expert_map is not None,
                     BLOCK_M=block_m, NB=nb, BLOCK=1024, BLOCK_B=max(1, min(64, 16384 // nb)), num_warps=8)
    return Alignment(sorted_ids=sorted_ids, expert_ids=expert_ids, num_post_padded=num_post_padded,
                     num_valid=num_valid, block_m=block_m)


# (token, slot) rows up to which the one-program Triton alignment runs: on the H100 it is faster than
# the torch sort up to 16,384 rows for 8, 128 and 256 experts (66-115 us vs ~150 us, CUDA-graph
# replay) and slower at 65,536 (248-409 us vs ~155 us); benchmarks/results/triton_experts-align-*.txt
ONE_LAUNCH_MAX_ROWS = 16384


def align_for_experts(topk_ids: torch.Tensor, *, num_local_experts: int, num_experts: int, block_m: int,
                      expert_map: torch.Tensor | None = None) -> Alignment:
    """The experts' alignment: :func:`align_by_expert_triton` for up to :data:`ONE_LAUNCH_MAX_ROWS`
    rows, :func:`align_by_expert` above (same contract; see the module docstring)."""
    if topk_ids.numel() <= ONE_LAUNCH_MAX_ROWS:
        return align_by_expert_triton(topk_ids, num_local_experts=num_local_experts, num_experts=num_experts,
                                      block_m=block_m, expert_map=expert_map)
    return align_by_expert(topk_ids, num_local_experts=num_local_experts, block_m=block_m, expert_map=expert_map,
                           num_experts=num_experts)


@dataclass(frozen=True)
class DirectRows:
    """No grouping (kernels with BLOCK_M = 1): GEMM block r is (token, slot) row r of the flat
    ``topk_ids``, and each program looks its row's expert up itself (through ``expert_map``: -1 = not
    on this rank), skipping negative ids, ids at or past ``num_experts`` and other ranks' experts.
    Nothing runs before the GEMMs. One token's (distinct) top-k experts
    are each read once; at more tokens, an expert hit by several tokens is read once per row (from
    L2 when those programs run together)."""

    topk_ids: torch.Tensor
    expert_map: torch.Tensor | None
    num_valid: int
    num_experts: int
    num_local_experts: int
    block_m: ClassVar[int] = 1  # (as :class:`Alignment`'s field: the BLOCK_M these rows serve)


def direct_rows(topk_ids: torch.Tensor, *, num_local_experts: int, num_experts: int,
                expert_map: torch.Tensor | None = None) -> DirectRows:
    """:class:`DirectRows` for ``topk_ids`` [M, k] (int32 or int64): no launch."""
    flat = topk_ids.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return DirectRows(topk_ids=flat, expert_map=expert_map, num_valid=flat.numel(), num_experts=num_experts,
                      num_local_experts=num_local_experts)


def rows_for_experts(topk_ids: torch.Tensor, *, num_local_experts: int, num_experts: int, block_m: int,
                     expert_map: torch.Tensor | None = None) -> Alignment | DirectRows:
    """What the GEMMs of ``block_m``-row blocks take: :func:`direct_rows` for 1, else
    :func:`align_for_experts`."""
    if block_m == 1:
        return direct_rows(topk_ids, num_local_experts=num_local_experts, num_experts=num_experts,
                           expert_map=expert_map)
    return align_for_experts(topk_ids, num_local_experts=num_local_experts, num_experts=num_experts,
                             block_m=block_m, expert_map=expert_map)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b
