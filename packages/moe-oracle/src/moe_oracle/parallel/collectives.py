"""torch.distributed collectives on row-shaped tensors: uneven row counts, split sizes, group checks.

Every function is a collective: all ranks of ``group`` call it in the same order. Tensors live
on the device the group's backend reads (CPU for gloo, the current CUDA device for NCCL).
"""

from __future__ import annotations

from typing import Any

import torch


def dist() -> Any:
    """``torch.distributed``, initialized (a clear error otherwise)."""
    import torch.distributed as d

    if not d.is_available() or not d.is_initialized():
        raise RuntimeError("expert / tensor parallelism runs over torch.distributed: call "
                           "torch.distributed.init_process_group(...) on every rank first")
    return d


def resolve_group(group: Any) -> Any:
    """``group``, or the default group when None."""
    d = dist()
    return d.group.WORLD if group is None else group


def group_size(group: Any) -> int:
    return int(dist().get_world_size(group))


def group_rank(group: Any) -> int:
    return int(dist().get_rank(group))


def group_device(group: Any) -> torch.device:
    """Where the group's collectives want their tensors: the current CUDA device for NCCL, else CPU."""
    if str(dist().get_backend(group)).lower() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_single(out: torch.Tensor, inp: torch.Tensor, group: Any) -> None:
    d = dist()
    (getattr(d, "all_gather_single", None) or d.all_gather_into_tensor)(out, inp, group=group)


def _reduce_scatter_single(out: torch.Tensor, inp: torch.Tensor, group: Any) -> None:
    d = dist()
    (getattr(d, "reduce_scatter_single", None) or d.reduce_scatter_tensor)(out, inp, group=group)


def all_gather_counts(count: int, *, group: Any, device: torch.device) -> list[int]:
    """Every rank's ``count`` (one int per rank, in rank order)."""
    mine = torch.tensor([count], dtype=torch.int64, device=device)
    out = torch.empty(group_size(group), dtype=torch.int64, device=device)
    _all_gather_single(out, mine, group)
    return [int(c) for c in out.tolist()]


def all_gather_rows(rows: torch.Tensor, *, counts: list[int], group: Any) -> torch.Tensor:
    """Concatenate every rank's ``rows`` ``[counts[r], ...]`` in rank order (padded to the largest on the wire)."""
    most = max(counts) if counts else 0
    size = len(counts)
    padded = rows.new_zeros((most, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    out = rows.new_empty((size * most, *rows.shape[1:]))
    _all_gather_single(out, padded, group)
    return torch.cat([out[r * most: r * most + c] for r, c in enumerate(counts)])


def reduce_scatter_rows(rows: torch.Tensor, *, counts: list[int], rank: int, group: Any) -> torch.Tensor:
    """Sum ``rows`` ``[sum(counts), ...]`` over ranks and return this rank's ``counts[rank]`` rows."""
    most = max(counts) if counts else 0
    padded = rows.new_zeros((len(counts) * most, *rows.shape[1:]))
    start = 0
    for r, c in enumerate(counts):
        padded[r * most: r * most + c] = rows[start: start + c]
        start += c
    out = rows.new_empty((most, *rows.shape[1:]))
    _reduce_scatter_single(out, padded, group)
    return out[: counts[rank]]


def exchange_counts(send_counts: torch.Tensor, *, group: Any) -> torch.Tensor:
    """int64 ``[size]``: how many rows this rank sends to each rank -> how many it receives from each."""
    recv = torch.empty_like(send_counts)
    dist().all_to_all_single(recv, send_counts, group=group)
    return recv


def all_to_all_rows(rows: torch.Tensor, *, send_counts: list[int], recv_counts: list[int], group: Any) -> torch.Tensor:
    """Send ``rows[...]`` in rank-ordered runs of ``send_counts``; receive ``sum(recv_counts)`` rows in rank order."""
    out = rows.new_empty((sum(recv_counts), *rows.shape[1:]))
    dist().all_to_all_single(out, rows.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts,
                             group=group)
    return out


def all_reduce(t: torch.Tensor, *, group: Any) -> torch.Tensor:
    """Sum ``t`` over the group, in place; returns it."""
    dist().all_reduce(t, group=group)
    return t
