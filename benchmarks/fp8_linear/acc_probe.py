"""Probe: block-scaled FP8 GEMM (1x128 activations x 128x128 weights) with the per-group scaling
applied two ways, on the GPU, against torch's blockwise cuBLASLt in the same run.

* ``add``: the shipped kernels' form, ``acc += dot(a_k, w_k) * s_k`` (``s_k = a_s[:, k] w_s[k]``):
  every K group's dot lands in fresh float32 registers before it is scaled and added.
* ``rescale``: the accumulator is kept in units of the current group's scale and the dot
  accumulates in place, ``acc = dot(a_k, w_k, acc * s_{k-1} / s_k)``, the result ``acc * s_K``:
  one float32 tile of registers instead of two, which is what larger tiles (128 x 256, two
  consumer warpgroups) need. Scales are positive and finite (the library validates them; dynamic
  activation scales are at least eps / 448), so the ratios stay far inside float32's range.

Prints, per shape and M, each (mode, tile) time and TFLOPS beside cuBLAS's, and the relative
error against cuBLAS's output. A diagnostic: the library's kernels are generated from
templates/fp8_linear/gemm.py.j2.

Finding (H100, 2026-11-24, benchmarks/results/fp8_linear-acc_probe-NVIDIA_H100_80GB_HBM3.txt):
``rescale`` lets 128 x 256 tiles run (best-tile geomean vs cuBLAS 0.523 against 0.490 for ``add``
in this stripped-down kernel), but its error against cuBLAS grows with K (1.2e-3 at K = 512,
5.3e-3 at K = 16384, where ``add`` matches cuBLAS bit for bit): accumulating across K groups
inside the FP8 tensor-core instruction keeps Hopper's reduced accumulator precision over the whole
K, which scaling every 128-wide group's dot in float32 (``add``) avoids. Not adopted.

    python benchmarks/fp8_linear/acc_probe.py [--m 1024,4096]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_us, cublas_peer, make_operands, rel_err, versions

from fp8_linear.kernels._tl_helpers import tile_coords

SHAPES = [(24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048), (2112, 7168), (576, 7168)]
TILES = [(128, 128, 4, 4), (128, 128, 8, 3), (128, 256, 8, 3), (128, 256, 8, 4), (256, 128, 8, 3)]


@triton.jit
def _probe_gemm(a_ptr, a_s_ptr, w_ptr, w_s_ptr, out_ptr, M, N, K, stride_am, stride_wn, stride_om, stride_asm,
                stride_ask, stride_wsn, stride_wsk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, RESCALE: tl.constexpr):
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn + offs_k[:, None]
    a_s_ptrs = a_s_ptr + offs_m * stride_asm
    w_s_ptrs = w_s_ptr + (offs_n // 128) * stride_wsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    prev_a = tl.full((BLOCK_M,), 1.0, tl.float32)
    prev_w = tl.full((BLOCK_N,), 1.0, tl.float32)
    for it in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_ptrs)
        w = tl.load(w_ptrs)
        a_s = tl.load(a_s_ptrs + it * stride_ask)
        w_s = tl.load(w_s_ptrs + it * stride_wsk)
        if RESCALE:
            acc = tl.dot(a, w, acc * ((prev_a / a_s)[:, None] * (prev_w / w_s)[None, :]))
            prev_a = a_s
            prev_w = w_s
        else:
            acc += tl.dot(a, w) * (a_s[:, None] * w_s[None, :])
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if RESCALE:
        acc = acc * (prev_a[:, None] * prev_w[None, :])
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


def run_probe(ops, m: int, n: int, k: int, tile, rescale: bool, out: torch.Tensor):
    bm, bn, warps, stages = tile
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    a_s, w_s = ops.a_s_row, ops.w_s

    def call():
        _probe_gemm[grid](ops.a, a_s, ops.w, w_s, out, m, n, k, ops.a.stride(0), ops.w.stride(0), out.stride(0),
                          a_s.stride(0), a_s.stride(1), w_s.stride(0), w_s.stride(1), BLOCK_M=bm, BLOCK_N=bn,
                          BLOCK_K=128, GROUP_M=8, RESCALE=rescale, num_warps=warps, num_stages=stages)
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1024,4096")
    args = ap.parse_args()
    print(versions(), flush=True)
    best: dict[str, list[float]] = {"add": [], "rescale": []}
    for m in [int(x) for x in args.m.split(",")]:
        for n, k in SHAPES:
            ops = make_operands(m, n, k, seed=m + n + k)
            ref = cublas_peer(ops, m)
            t_cub = bench_us([lambda: cublas_peer(ops, m)])
            flops = 2 * m * n * k
            line = [f"M={m:5d} N={n:5d} K={k:5d} cublas {t_cub:7.1f} us {flops / t_cub / 1e6:6.0f} TF"]
            for mode in ("add", "rescale"):
                top = 0.0
                for tile in TILES:
                    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                    call = run_probe(ops, m, n, k, tile, mode == "rescale", out)
                    try:
                        call()
                        err = rel_err(out, ref)
                        t = bench_us([call])
                    except Exception as exc:  # a tile that does not compile or fit is reported
                        line.append(f"  {mode} {tile}: {type(exc).__name__}")
                        continue
                    top = max(top, t_cub / t)
                    line.append(f"  {mode:7} {tile}: {t:7.1f} us {flops / t / 1e6:6.0f} TF x{t_cub / t:5.2f} "
                                f"err {err:.1e}")
                best[mode].append(top)
            print("\n".join(line), flush=True)
    for mode, ratios in best.items():
        geo = torch.tensor(ratios).log().mean().exp().item() if ratios else float("nan")
        print(f"{mode}: geomean over shapes and M of the best tile / cublas = {geo:.3f}", flush=True)


if __name__ == "__main__":
    main()
