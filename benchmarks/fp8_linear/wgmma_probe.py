"""Diagnostic: a Hopper block-FP8 GEMM written in Gluon (explicit TMA ring, async wgmma, two
partial accumulators in flight) against cuBLAS blockwise and the library's Triton kernel.

Why: the Triton kernel's ``acc += tl.dot(a, w) * scale`` waits for every wgmma before scaling, so
the tensor cores idle during the promotion. Here each K step's wgmma is issued before the previous
step's partial is waited for and promoted (``warpgroup_mma_wait(1)``), so promotion overlaps MMA.

    python benchmarks/fp8_linear/wgmma_probe.py --m 1024,4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import triton
from _common import SHAPES, bench_us, cublas_peer, make_operands, rel_err, rotation, versions
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


@gluon.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
    in_group = GROUP_M * num_pid_n
    first_m = (tile // in_group) * GROUP_M
    size_m = gl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % in_group) % size_m
    pid_n = (tile % in_group) // size_m
    return pid_m, pid_n


@gluon.jit
def _issue_load(a_desc, w_desc, a_bufs, w_bufs, ready, j, total, pid, k_iters, num_pid_m, num_pid_n,
                NUM_PROGRAMS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    valid = j < total
    t = j // k_iters
    kk = j - t * k_iters
    pid_m, pid_n = _tile_coords(pid + t * NUM_PROGRAMS, num_pid_m, num_pid_n, GROUP_M)
    s = j % STAGES
    bar = ready.index(s)
    mbarrier.expect(bar, a_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=valid)
    tma.async_copy_global_to_shared(a_desc, [pid_m * BLOCK_M, kk * BLOCK_K], bar, a_bufs.index(s), pred=valid)
    tma.async_copy_global_to_shared(w_desc, [pid_n * BLOCK_N, kk * BLOCK_K], bar, w_bufs.index(s), pred=valid)


@gluon.jit
def gemm_block_wgmma(a_desc, w_desc, c_desc, a_s_ptr, w_s_ptr, bias_ptr, M, N, K,
                     stride_asm, stride_ask, stride_wsn, stride_wsk,
                     HAS_BIAS: gl.constexpr, OVERLAP: gl.constexpr, GROUP_M: gl.constexpr,
                     STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr, num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BLOCK_N, 32])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, mma_layout)

    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)

    pid = gl.program_id(0)
    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    k_iters = gl.cdiv(K, BLOCK_K)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - pid, NUM_PROGRAMS)
    total = my_tiles * k_iters
    for j in gl.static_range(STAGES - 1):
        _issue_load(a_desc, w_desc, a_bufs, w_bufs, ready, j, total, pid, k_iters, num_pid_m, num_pid_n,
                    NUM_PROGRAMS, STAGES, GROUP_M)
    zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, mma_layout)
    g = 0
    for t in range(my_tiles):
        pid_m, pid_n = _tile_coords(pid + t * NUM_PROGRAMS, num_pid_m, num_pid_n, GROUP_M)
        rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
        row_ok = rows < M
        a_s_ptrs = a_s_ptr + rows * stride_asm
        w_s_tile = w_s_ptr + pid_n * stride_wsn  # BLOCK_N == the weight block: one scale per K step
        s = g % STAGES
        mbarrier.wait(ready.index(s), (g // STAGES) & 1)
        cur = warpgroup_mma(a_bufs.index(s), w_bufs.index(s).permute((1, 0)), zero, use_acc=False, is_async=True)
        if not OVERLAP:
            cur = warpgroup_mma_wait(num_outstanding=0, deps=(cur,))
        gl.thread_barrier()
        _issue_load(a_desc, w_desc, a_bufs, w_bufs, ready, g + STAGES - 1, total, pid, k_iters, num_pid_m,
                    num_pid_n, NUM_PROGRAMS, STAGES, GROUP_M)
        sc = gl.load(a_s_ptrs, mask=row_ok, other=0.0) * gl.load(w_s_tile)
        acc = zero
        for kk in range(1, k_iters):
            gk = g + kk
            s = gk % STAGES
            mbarrier.wait(ready.index(s), (gk // STAGES) & 1)
            nxt = warpgroup_mma(a_bufs.index(s), w_bufs.index(s).permute((1, 0)), zero, use_acc=False,
                                is_async=True)
            if OVERLAP:
                done = warpgroup_mma_wait(num_outstanding=1, deps=(cur,))
            else:
                nxt = warpgroup_mma_wait(num_outstanding=0, deps=(nxt,))
                done = cur
            acc = acc + done * sc[:, None]
            gl.thread_barrier()  # every warpgroup is done with step gk - 1: its stage may be refilled
            _issue_load(a_desc, w_desc, a_bufs, w_bufs, ready, gk + STAGES - 1, total, pid, k_iters, num_pid_m,
                        num_pid_n, NUM_PROGRAMS, STAGES, GROUP_M)
            sc = gl.load(a_s_ptrs + kk * stride_ask, mask=row_ok, other=0.0) * gl.load(w_s_tile + kk * stride_wsk)
            cur = nxt
        if OVERLAP:
            done = warpgroup_mma_wait(num_outstanding=0, deps=(cur,))
        else:
            done = cur
        acc = acc + done * sc[:, None]
        if HAS_BIAS:
            cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
            acc = acc + gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
        tma.store_wait(pendings=0)  # the previous tile's store has read c_smem
        gl.thread_barrier()
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        gl.thread_barrier()
        tma.async_copy_shared_to_global(c_desc, [pid_m * BLOCK_M, pid_n * BLOCK_N], c_smem)
        g += k_iters
    tma.store_wait(pendings=0)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))


# ---- warp-specialized: one TMA producer warp, two consumer warpgroups (64 rows each of a 128-row tile)
@gluon.jit
def _ws_producer(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K,
                 GROUP_M: gl.constexpr, STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr):
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    pid = gl.program_id(0)
    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    k_iters = gl.cdiv(K, BLOCK_K)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - pid, NUM_PROGRAMS)
    j = 0
    for t in range(my_tiles):
        pid_m, pid_n = _tile_coords(pid + t * NUM_PROGRAMS, num_pid_m, num_pid_n, GROUP_M)
        for kk in range(k_iters):
            s = j % STAGES
            mbarrier.wait(empty.index(s), ((j // STAGES) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, a_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [pid_m * BLOCK_M, kk * BLOCK_K], bar, a_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [pid_n * BLOCK_N, kk * BLOCK_K], bar, w_bufs.index(s))
            j += 1


@gluon.jit
def _ws_consumer(c_desc, a_bufs, w_bufs, c_smem, ready, empty, a_s_ptr, w_s_ptr, bias_ptr, M, N, K,
                 stride_asm, stride_ask, stride_wsn, stride_wsk,
                 HALF: gl.constexpr, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                 NUM_PROGRAMS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr):
    SUB_M: gl.constexpr = BLOCK_M // 2
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_N, 32])
    row_layout: gl.constexpr = gl.SliceLayout(1, mma_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, mma_layout)
    pid = gl.program_id(0)
    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    k_iters = gl.cdiv(K, BLOCK_K)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - pid, NUM_PROGRAMS)
    zero = gl.zeros([SUB_M, BLOCK_N], gl.float32, mma_layout)
    g = 0
    for t in range(my_tiles):
        pid_m, pid_n = _tile_coords(pid + t * NUM_PROGRAMS, num_pid_m, num_pid_n, GROUP_M)
        rows = pid_m * BLOCK_M + HALF * SUB_M + gl.arange(0, SUB_M, layout=row_layout)
        row_ok = rows < M
        a_s_ptrs = a_s_ptr + rows * stride_asm
        w_s_tile = w_s_ptr + pid_n * stride_wsn
        sc = gl.load(a_s_ptrs, mask=row_ok, other=0.0) * gl.load(w_s_tile)
        acc = zero
        for kk in range(k_iters):
            s = g % STAGES
            mbarrier.wait(ready.index(s), (g // STAGES) & 1)
            part = warpgroup_mma(a_bufs.index(s).slice(HALF * SUB_M, SUB_M), w_bufs.index(s).permute((1, 0)), zero,
                                 use_acc=False, is_async=True)
            nk = gl.minimum(kk + 1, k_iters - 1)
            sc_next = gl.load(a_s_ptrs + nk * stride_ask, mask=row_ok, other=0.0) * gl.load(w_s_tile + nk * stride_wsk)
            part = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
            mbarrier.arrive(empty.index(s), count=1)
            acc = acc + part * sc[:, None]
            sc = sc_next
            g += 1
        if HAS_BIAS:
            cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
            acc = acc + gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
        tma.store_wait(pendings=0)
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [pid_m * BLOCK_M + HALF * SUB_M, pid_n * BLOCK_N], c_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def gemm_block_wgmma_ws(a_desc, w_desc, c_desc, a_s_ptr, w_s_ptr, bias_ptr, M, N, K,
                        stride_asm, stride_ask, stride_wsn, stride_wsk,
                        HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                        NUM_PROGRAMS: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    """c_desc: blocks [BLOCK_M // 2, BLOCK_N] (one per consumer warpgroup)."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    c0 = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    c1 = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    gl.warp_specialize([
        (_ws_consumer, (c_desc, a_bufs, w_bufs, c0, ready, empty, a_s_ptr, w_s_ptr, bias_ptr, M, N, K, stride_asm,
                        stride_ask, stride_wsn, stride_wsk, 0, HAS_BIAS, GROUP_M, STAGES, NUM_PROGRAMS, BLOCK_M,
                        BLOCK_N, BLOCK_K)),
        (_ws_consumer, (c_desc, a_bufs, w_bufs, c1, ready, empty, a_s_ptr, w_s_ptr, bias_ptr, M, N, K, stride_asm,
                        stride_ask, stride_wsn, stride_wsk, 1, HAS_BIAS, GROUP_M, STAGES, NUM_PROGRAMS, BLOCK_M,
                        BLOCK_N, BLOCK_K)),
        (_ws_producer, (a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M, STAGES, NUM_PROGRAMS)),
    ], [4, 1], [CONSUMER_REGS, 40])
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))
        mbarrier.invalidate(empty.index(i))


_SMS = {}


def wgmma_gemm(a, a_s, w, w_s, *, bias=None, out=None, block_m=128, block_n=128, stages=4, group_m=8,
               overlap=True, num_warps=8, ws=False, consumer_regs=232):
    m, k = a.shape
    n = w.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    fp8 = gl.float8e4nv
    a_desc = TensorDescriptor.from_tensor(a, [block_m, 128], gl.NVMMASharedLayout.get_default_for([block_m, 128], fp8))
    w_desc = TensorDescriptor.from_tensor(w, [block_n, 128], gl.NVMMASharedLayout.get_default_for([block_n, 128], fp8))
    c_rows = block_m // 2 if ws else block_m
    c_desc = TensorDescriptor.from_tensor(out, [c_rows, block_n],
                                          gl.NVMMASharedLayout.get_default_for([c_rows, block_n], gl.bfloat16))
    if a.device.index not in _SMS:
        _SMS[a.device.index] = torch.cuda.get_device_properties(a.device).multi_processor_count
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    programs = min(tiles, _SMS[a.device.index])
    if ws:
        gemm_block_wgmma_ws[(programs,)](
            a_desc, w_desc, c_desc, a_s, w_s, bias if bias is not None else out, m, n, k,
            a_s.stride(0), a_s.stride(1), w_s.stride(0), w_s.stride(1),
            HAS_BIAS=bias is not None, GROUP_M=group_m, STAGES=stages, NUM_PROGRAMS=programs,
            CONSUMER_REGS=consumer_regs, num_warps=4)
        return out
    gemm_block_wgmma[(programs,)](
        a_desc, w_desc, c_desc, a_s, w_s, bias if bias is not None else out, m, n, k,
        a_s.stride(0), a_s.stride(1), w_s.stride(0), w_s.stride(1),
        HAS_BIAS=bias is not None, OVERLAP=overlap, GROUP_M=group_m, STAGES=stages, NUM_PROGRAMS=programs,
        num_warps=num_warps)
    return out


def reference(a, a_s, w, w_s):
    """float32 dequantized operands, one matmul."""
    m, k = a.shape
    n = w.shape[0]
    a32 = a.float() * a_s.repeat_interleave(128, dim=1)[:, :k]
    w32 = w.float() * w_s.repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
    return a32 @ w32.t()


def main() -> None:
    import fp8_linear

    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1024,4096")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--configs", default="s4o,s4s,w4,w5",
                   help="s<stages>o / s<stages>s: one partition, overlapped / serial promotion; w<stages>: warp-specialized")
    args = p.parse_args()
    print("#", versions())
    configs = args.configs.split(",")

    def run(cfg, o, bias=None):
        if cfg.startswith("w"):
            return wgmma_gemm(o.a, o.a_s_col, o.w, o.w_s, bias=bias, stages=int(cfg[1:]), ws=True)
        return wgmma_gemm(o.a, o.a_s_col, o.w, o.w_s, bias=bias, stages=int(cfg[1:-1]), overlap=cfg[-1] == "o")

    # correctness first: odd M and N, bias, against float32 of the dequantized operands
    for m, n, k in ((200, 384, 512), (1000, 576, 1536), (77, 2112, 7168)):
        o = make_operands(m, n, k, seed=m)
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        ref = reference(o.a, o.a_s_row, o.w, o.w_s) + bias.float()
        for cfg in configs:
            got = run(cfg, o, bias).float()
            err = rel_err(got, ref)
            print(f"check m={m} n={n} k={k} {cfg}: rel err {err:.2e}"
                  f" {'ok' if err < 1e-2 else 'WRONG'}")
    ratios: dict[str, list[float]] = {}
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        for m in map(int, args.m.split(",")):
            set_bytes = m * k + n * k
            sets = [make_operands(m, n, k, seed=1000 * i + m) for i in range(rotation(set_bytes))]
            cols = {"cublas": [lambda o=o: cublas_peer(o, m) for o in sets],
                    "triton": [lambda o=o: fp8_linear.block_scaled_mm(o.a, o.a_s_row, o.w, o.w_s, kernel="triton",
                                                                      check_values=False) for o in sets]}
            for cfg in configs:
                cols[cfg] = [lambda o=o, c=cfg: run(c, o) for o in sets]
            times = {key: [] for key in cols}
            for _ in range(3):
                for key, calls in cols.items():
                    times[key].append(bench_us(calls, rep_ms=20))
            med = {key: statistics.median(v) for key, v in times.items()}
            err = max(rel_err(cols[cfg][0](), cublas_peer(sets[0], m)) for cfg in configs)
            tf = 2.0 * m * n * k / 1e6
            line = f"{name:>17} M={m:5d} cublas {med['cublas']:8.1f}us {tf / med['cublas']:6.0f}TF |"
            for key in cols:
                if key == "cublas":
                    continue
                ratio = med["cublas"] / med[key]
                ratios.setdefault(key, []).append(ratio)
                line += f" {key} {med[key]:8.1f} {ratio:5.2f}"
            print(line + f" | err {err:.1e}", flush=True)
    for key, vals in ratios.items():
        gm = statistics.geometric_mean(vals)
        print(f"geomean x cublas {key}: {gm:.3f} (min {min(vals):.2f})")


if __name__ == "__main__":
    main()
