"""Probe: how fast can a Triton MoE decode GEMM stream packed int4 expert weights, by tile shape and layout?

Diagnostic for issue #6 (int4 decode 1.7-2.5x the weight-bandwidth floor). One GEMM of DeepSeek-V3 shape
(N 4096, K 7168, int4 -> K/2 bytes per row) over the experts hit by M tokens of top-8 routing, rows of
each expert in one 16-row tile. Modes:
  0  bytes as fp8 codes, one fp8 dot per chunk: memory only, row-major weights [E, N, K/2], CH bytes
     per row per step
  1  as 0 with tile-major weights [E, K/2/CH, N, CH] (one step's tile is one contiguous block)
  2  int4 codes (prmt/lop3 -> bf16 128 + c), two bf16 dots per 128-k group, scale/zero after the dot,
     row-major weights: the shipped decode path
  3  as 2 with tile-major weights
  4  as 3 with scales and zeros [E, G, N] (one coalesced row per group) instead of [E, N, G]
  5  as 2 (row-major weights) with scales and zeros [E, G, N]
  6  as 4 with A's even/odd halves as contiguous runs (timing only: the packing it needs, low nibble
     = k and high nibble = k + 64, is not what the weights hold)
SPLIT > 1 splits K over programs that add float32 partials atomically (modes 2-6).
Prints time, GB/s of weight bytes, and the ratio to the device's copy bandwidth measured in the run.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl

from triton_experts.kernels._generated_moe import _nibble_values


@triton.jit
def stream_kernel(a_ptr, b_ptr, s_ptr, z_ptr, c_ptr, experts_ptr, rows_per_expert,
                  N, KB, stride_be, stride_bt, stride_bn, stride_se, stride_sn, stride_sg,
                  MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr,
                  SPLIT: tl.constexpr):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    split = pid % SPLIT
    pid = pid // SPLIT
    slot = pid // num_n
    pid_n = pid % num_n
    expert = tl.load(experts_ptr + slot).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < rows_per_expert
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, CH)
    b_base = b_ptr + expert * stride_be
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    steps = KB // CH // SPLIT
    for t in range(split * steps, (split + 1) * steps):
        if MODE == 0 or MODE == 2 or MODE == 5:  # noqa: PLR1714
            ptrs = b_base + offs_n[:, None] * stride_bn + (t * CH + offs_c)[None, :]
        else:
            ptrs = b_base + t * stride_bt + offs_n[:, None] * stride_bn + offs_c[None, :]
        packed = tl.load(ptrs)
        if MODE <= 1:
            a = tl.load(a_ptr + (slot * BLOCK_M + offs_m)[:, None] * KB + (t * CH + offs_c)[None, :],
                        mask=m_mask[:, None], other=0.0)
            acc = tl.dot(a, tl.trans(packed.to(tl.float8e4nv, bitcast=True)), acc)
        else:
            # CH = 64 bytes = one 128-k group
            kb = t * 2 * CH
            if MODE == 6:
                a_e = tl.load(a_ptr + (slot * BLOCK_M + offs_m)[:, None] * (2 * KB) + (kb + offs_c)[None, :],
                              mask=m_mask[:, None], other=0.0)
                a_o = tl.load(a_ptr + (slot * BLOCK_M + offs_m)[:, None] * (2 * KB) + (kb + CH + offs_c)[None, :],
                              mask=m_mask[:, None], other=0.0)
            else:
                a_e = tl.load(a_ptr + (slot * BLOCK_M + offs_m)[:, None] * (2 * KB) + (kb + 2 * offs_c)[None, :],
                              mask=m_mask[:, None], other=0.0)
                a_o = tl.load(a_ptr + (slot * BLOCK_M + offs_m)[:, None] * (2 * KB) + (kb + 2 * offs_c + 1)[None, :],
                              mask=m_mask[:, None], other=0.0)
            scale = tl.load(s_ptr + expert * stride_se + offs_n * stride_sn + t * stride_sg).to(tl.float32)
            zero = tl.load(z_ptr + expert * stride_se + offs_n * stride_sn + t * stride_sg).to(tl.float32)
            lo, hi = _nibble_values(packed, tl.bfloat16, True)
            part = tl.dot(a_e, tl.trans(lo))
            part = tl.dot(a_o, tl.trans(hi), part)
            a_sum = tl.sum(a_e.to(tl.float32), axis=1) + tl.sum(a_o.to(tl.float32), axis=1)
            acc += (part - a_sum[:, None] * (zero + 128.0)[None, :]) * scale[None, :]
    c_ptrs = c_ptr + (slot * BLOCK_M + offs_m)[:, None] * N + offs_n[None, :]
    if SPLIT == 1:
        tl.store(c_ptrs, acc, mask=m_mask[:, None])
    else:
        tl.atomic_add(c_ptrs, acc, mask=m_mask[:, None], sem="relaxed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=7168)
    ap.add_argument("--experts", default="8,60,160", help="distinct experts hit (M=1, 8, 32 of DeepSeek)")
    ap.add_argument("--modes", default="2,3,4,5,6")
    ap.add_argument("--split", default="1", help="K splits tried for modes 2-6")
    args = ap.parse_args()
    dev = "cuda"
    e_total, n, k = 256, args.n, args.k
    kb = k // 2
    src = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_s = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median") * 1e-3
    copy_bw = 2 * src.numel() / copy_s
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"copy bandwidth {copy_bw / 1e12:.3f} TB/s (read + write of 256 MiB)")
    w = torch.randint(0, 256, (e_total, n, kb), dtype=torch.uint8, device=dev)
    s = (torch.rand(e_total, n, kb // 64, device=dev) * 0.01).to(torch.bfloat16)
    z = torch.full((e_total, n, kb // 64), 8, dtype=torch.uint8, device=dev)
    s_t, z_t = s.transpose(1, 2).contiguous(), z.transpose(1, 2).contiguous()
    layouts: dict[int, torch.Tensor] = {}

    def tile_major(ch: int) -> torch.Tensor:
        if ch not in layouts:
            layouts[ch] = w.view(e_total, n, kb // ch, ch).permute(0, 2, 1, 3).contiguous()
        return layouts[ch]

    for hit in (int(x) for x in args.experts.split(",")):
        experts = torch.randperm(e_total, device=dev)[:hit].to(torch.int32)
        floor = hit * n * kb / copy_bw * 1e6
        for mode in (int(x) for x in args.modes.split(",")):
            best = None
            chs = (64, 128) if mode <= 1 else (64,)
            splits = (1,) if mode <= 1 else tuple(int(x) for x in args.split.split(","))
            for ch, bn, warps, stages, split in itertools.product(chs, (64, 128, 256), (4, 8), (2, 3, 4), splits):
                if ch * bn * stages > 160 * 1024:
                    continue
                wt = w if mode in (0, 2, 5) else tile_major(ch)
                strides = (wt.stride(0), 0, wt.stride(1)) if mode in (0, 2, 5) else (wt.stride(0), wt.stride(1), wt.stride(2))
                ss, zz = (s_t, z_t) if mode >= 4 else (s, z)
                sstr = (ss.stride(0), ss.stride(2), ss.stride(1)) if mode >= 4 else ss.stride()
                if mode <= 1:
                    a = torch.randn(hit * 16, kb, device=dev).to(torch.float8_e4m3fn)
                else:
                    a = torch.randn(hit * 16, k, device=dev).to(torch.bfloat16)
                c = torch.zeros(hit * 16, n, device=dev)
                grid = (hit * triton.cdiv(n, bn) * split,)

                def go():
                    stream_kernel[grid](a, wt, ss, zz, c, experts, 1, n, kb, *strides, *sstr, MODE=mode, BLOCK_M=16,
                                        BLOCK_N=bn, CH=ch, SPLIT=split, num_warps=warps, num_stages=stages)
                try:
                    go()
                    torch.cuda.synchronize()
                except Exception as exc:  # a probe: report and go on
                    print(f"  mode {mode} ch{ch} bn{bn} w{warps} s{stages}: {type(exc).__name__} {str(exc)[:120]}")
                    continue
                t = triton.testing.do_bench(go, warmup=5, rep=20, return_mode="median") * 1e3
                if best is None or t < best[0]:
                    best = (t, f"ch{ch} bn{bn} w{warps} s{stages} split{split}")
            print(f"experts {hit:3d} mode {mode}: {best[0]:8.1f} us  {hit * n * kb / best[0] / 1e3:7.1f} GB/s  "
                  f"x{best[0] / floor:4.2f} floor  ({best[1]})", flush=True)


if __name__ == "__main__":
    main()
