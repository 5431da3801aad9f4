"""Packed 4-bit weights as rows [E, N, K/2] and as K tiles [E, K/128, N, 64]: one grouped GEMM, both
layouts, against float64 math on the dequantized weights; the tiling round-trips bit-exactly."""

from __future__ import annotations

import os

import pytest
import torch

from triton_experts.layout import K_TILE_BYTES, k_rows, k_tiles
from triton_experts.tuning import LaunchConfig

# bf16 A and bf16 (OFFSET + code) weights are exact; the float32 accumulation and the bf16 rounding
# of A (2^-9 relative) bound the error: 1% relative to the output's norm.
BOUND = 1e-2


def _device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")


def test_k_tiles_round_trip_and_leave_ragged_rows():
    w = torch.randint(0, 256, (3, 40, 3 * K_TILE_BYTES), dtype=torch.uint8)
    tiled = k_tiles(w)
    assert tiled.shape == (3, 3, 40, K_TILE_BYTES) and tiled.is_contiguous()
    assert torch.equal(tiled[1, 2, 7], w[1, 7, 2 * K_TILE_BYTES:])
    assert torch.equal(k_rows(tiled), w)
    ragged = torch.randint(0, 256, (2, 8, 96), dtype=torch.uint8)  # K = 192: not whole tiles
    assert torch.equal(k_tiles(ragged), ragged)


@pytest.mark.triton
@pytest.mark.parametrize(("k", "group", "block_m", "block_k"),
                         [(256, 128, 16, 128), (256, 128, 16, 64), (512, 128, 16, 256), (256, 64, 32, 128),
                          (192, 64, 16, 64)])
def test_rows_and_tiles_match_float64(k, group, block_m, block_k):
    """Codes path (16-row tiles of at most one group), per-element path (two groups per tile: a run
    straddling two K tiles; 32-row tiles), and K = 192 which stays in rows."""
    pytest.importorskip("triton")
    from triton_experts.align import align_by_expert_triton
    from triton_experts.kernels.launch import grouped_gemm

    dev = _device()
    gen = torch.Generator().manual_seed(k + group + block_k)
    e, n, m, top_k = 4, 48, 6, 2
    codes = torch.randint(0, 16, (e, n, k), generator=gen)
    zero = torch.randint(0, 16, (e, n, k // group), generator=gen).to(torch.uint8)
    scale = torch.rand(e, n, k // group, generator=gen) * 0.02 + 0.005
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    dense = (codes.double() - zero.double().repeat_interleave(group, -1)) * scale.double().repeat_interleave(group, -1)
    a = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(e, generator=gen)[:top_k] for _ in range(m)]).to(torch.int32)
    expected = torch.einsum("mk,mjnk->mjn", a.double(), dense[ids.long()]).reshape(m * top_k, n)
    config = LaunchConfig(block_m, 32, block_k, 1, 4, 2)
    alignment = align_by_expert_triton(ids.to(dev), num_local_experts=e, num_experts=e, block_m=block_m)
    results = {}
    for name, weight in (("rows", packed), ("tiles", k_tiles(packed))):
        out = torch.zeros(m * top_k, n, device=dev, dtype=torch.float32)
        grouped_gemm(variant="int4_w4a16", a=a.to(dev), a_scale=None, weight=weight.to(dev), scale=scale.to(dev),
                     zero=zero.to(dev), bias=None, out=out, topk_weights=None, alignment=alignment, top_k=top_k,
                     n=n, k=k, group_k=group, config=config)
        err = float((out.cpu().double() - expected).norm() / expected.norm())
        assert err < BOUND, (name, err)
        results[name] = out.cpu()
    assert (k_tiles(packed).dim() == 4) == (k % (2 * K_TILE_BYTES) == 0)
    assert torch.equal(results["rows"], results["tiles"])  # same per-row arithmetic, only addresses differ


def test_wrong_weight_shape_is_refused():
    from triton_experts.kernels.launch import plan_gemm

    config = LaunchConfig(16, 32, 128, 1, 4, 2)
    scale = torch.ones(2, 64, 2)
    zero = torch.full((2, 64, 2), 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"weights must be \[E, N, K/2\] or \[E, K/2/T, N, T\] for N=64, K=256"):
        plan_gemm(variant="int4_w4a16", weight=torch.zeros(2, 64, 256, dtype=torch.uint8), scale=scale, zero=zero,
                  bias=None, top_k=1, n=64, k=256, group_k=128, config=config)
    with pytest.raises(ValueError, match=r"K-tiled weights must be \[E, K/2/T, N, T\] = \[2, 2, 64, 64\]"):
        plan_gemm(variant="int4_w4a16", weight=torch.zeros(2, 2, 32, 64, dtype=torch.uint8), scale=scale, zero=zero,
                  bias=None, top_k=1, n=64, k=256, group_k=128, config=config)
