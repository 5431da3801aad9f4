"""Token alignment by expert (torch and Triton): every kept slot appears once in its expert's run."""

from __future__ import annotations

import os

import pytest
import torch

from triton_experts import align as align_module
from triton_experts.align import Alignment, align_by_expert, align_by_expert_triton, align_for_experts

CASES = [(1, 1, 4, 16), (7, 2, 4, 16), (33, 8, 16, 32), (5, 3, 64, 16), (300, 8, 256, 64)]


def _triton_device():
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")


@pytest.mark.parametrize(("m", "k", "e", "block"), CASES)
@pytest.mark.parametrize("ep", [False, True])
def test_alignment(m, k, e, block, ep):
    _check_alignment(m, k, e, block, ep, triton=False)


@pytest.mark.triton
@pytest.mark.parametrize(("m", "k", "e", "block"), CASES)
@pytest.mark.parametrize("ep", [False, True])
def test_alignment_triton(m, k, e, block, ep):
    pytest.importorskip("triton")
    _check_alignment(m, k, e, block, ep, triton=True)


@pytest.mark.triton
@pytest.mark.parametrize("one_launch_max", [0, 1 << 30], ids=["torch-sort", "one-launch"])
@pytest.mark.parametrize("ep", [False, True])
def test_alignment_for_experts(monkeypatch, one_launch_max, ep):
    """The experts' dispatcher on either side of its row threshold (same contract both ways)."""
    pytest.importorskip("triton")
    monkeypatch.setattr(align_module, "ONE_LAUNCH_MAX_ROWS", one_launch_max)
    _check_alignment(33, 8, 16, 32, ep, triton=True, align=align_for_experts)


def _check_alignment(m, k, e, block, ep, *, triton, align=align_by_expert_triton):
    gen = torch.Generator().manual_seed(m * 100 + k)
    global_e = 2 * e if ep else e
    ids = torch.randint(0, global_e, (m, k), generator=gen, dtype=torch.int32)
    ids[0, 0] = -1  # a padding slot
    emap = None
    if ep:  # rank 1 of 2 holds the odd experts
        emap = torch.tensor([g // 2 if g % 2 else -1 for g in range(global_e)], dtype=torch.int32)
    if triton:
        dev = _triton_device()
        ids[-1, -1] = global_e + 3  # past the expert count: dropped
        al = align(ids.to(dev), num_local_experts=e, num_experts=global_e, block_m=block,
                   expert_map=None if emap is None else emap.to(dev))
        al = Alignment(sorted_ids=al.sorted_ids.cpu(), expert_ids=al.expert_ids.cpu(),
                       num_post_padded=al.num_post_padded.cpu(), num_valid=al.num_valid, block_m=block)
    else:
        al = align_by_expert(ids, num_local_experts=e, block_m=block, expert_map=emap)
    total = int(al.num_post_padded)
    assert total % block == 0 and al.sorted_ids.numel() >= total
    flat = ids.reshape(-1).tolist()
    local = [(emap[x].item() if 0 <= x < global_e else -1) if emap is not None else (x if 0 <= x < e else -1)
             for x in flat]
    seen = []
    for b in range(total // block):
        expert = int(al.expert_ids[b])
        for r in al.sorted_ids[b * block:(b + 1) * block].tolist():
            if r == m * k:
                continue
            assert local[r] == expert
            seen.append(r)
    assert sorted(seen) == [r for r, x in enumerate(local) if x >= 0]  # each kept slot exactly once
    assert all(int(x) == -1 for x in al.expert_ids[total // block:])  # blocks past the end are skipped


def test_empty_and_all_padding():
    ids = torch.full((3, 2), -1, dtype=torch.int32)
    al = align_by_expert(ids, num_local_experts=4, block_m=16)
    assert int(al.num_post_padded) == 0


@pytest.mark.triton
def test_all_padding_triton():
    pytest.importorskip("triton")
    ids = torch.full((3, 2), -1, dtype=torch.int32, device=_triton_device())
    al = align_by_expert_triton(ids, num_local_experts=4, num_experts=4, block_m=16)
    assert int(al.num_post_padded) == 0 and torch.all(al.expert_ids == -1)
