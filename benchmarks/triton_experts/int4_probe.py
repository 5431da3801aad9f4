"""Probe: ways to dequantize packed int4 group-quantized weights inside the fused-MoE GEMM (decode).

Modes of the probe kernel (mode 0 = the generated kernel as shipped):
  1  even/odd k split (no nibble interleave), float32 magic, scale per weight element
  2  even/odd split, codes as 16-bit floats 128 + c by integer ops, zero and scale after the dot
  3  even/odd split, codes as 16-bit floats by inline PTX (prmt + lop3), zero and scale after the dot
     (what the generated kernel does for 16-row tiles since this probe)
  4  even/odd split, codes by int->float conversion, zero and scale after the dot
  5, 6  modes 3 and 2 with A and W swapped (C^T = W A^T: the weight tile on the MMA's wide side)
  7, 8  modes 2 and 4 with the weight tile loaded as [BLOCK_K / 2, BLOCK_N] (no transpose)
  9  mode 3 with A's two halves loaded as contiguous runs (k in [0, BLOCK_K/2) and [BLOCK_K/2,
     BLOCK_K)), as a packing of low nibble = k, high nibble = k + BLOCK_K/2 would allow; timing
     only (the weights are packed even/odd, so its output is not checked)
For each mode the best of a small config grid per GEMM, beside the weight-bandwidth floor, with
the TTGIR's layout conversions for the M=8 winners. H100 results (2026-11-24, M=8 GEMM1 / GEMM2 over
the floor): DeepSeek-V3 m0 before this probe 2.23 / 2.19, m1 2.63 / 2.58, m2 1.99 / 1.98, m3 1.80 /
1.88, m4 2.60 / 2.68, m5 1.93 / 2.13, m6 2.30 / 2.27, m7 1.90 / 1.85, m8 2.48 / 2.39. The weight
tiles go from shared memory to the dot operand without a layout conversion in every mode; what keeps
them near 1.8x is not the dequantization's arithmetic. Mode 9 (2026-11-24, session 4, BLOCK_N up to
256; benchmarks/results/triton_experts-int4_probe9-NVIDIA_H100_80GB_HBM3.txt): contiguous A halves
instead of stride-2 ones are no faster (DeepSeek M=8 GEMM1 / GEMM2 1.90 / 1.91 vs mode 3's 1.80 /
1.88; M=32 1.68 / 1.73 vs 1.64 / 1.71), so a weight packing that pairs k with k + BLOCK_K/2 would not
help either. Diagnostic only.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))

from triton_experts.kernels._generated_moe import _nibble_values


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    if UPCAST:
        return acc + tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b, acc)


@triton.jit(do_not_specialize=["num_valid", "num_m_blocks"])
def probe_int4(
    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, b_zero_ptr, bias_ptr, c_ptr, topk_weights_ptr,
    sorted_ids_ptr, expert_ids_ptr, num_post_padded_ptr,
    N, K, num_valid, num_m_blocks,
    stride_am, stride_ak, stride_asm, stride_ask,
    stride_be, stride_bn, stride_bk,
    stride_bse, stride_bsn, stride_bsk,
    stride_biase, stride_biasn,
    stride_cm, stride_cn,
    GROUP_K: tl.constexpr, TOP_K: tl.constexpr, MUL_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_UPCAST: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    MODE: tl.constexpr,
    SWAP: tl.constexpr,
):
    pid = tl.program_id(0)
    num_post_padded = tl.load(num_post_padded_ptr)
    num_pid_m = num_m_blocks
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % (GROUP_M * num_pid_n)) % size_m)
    pid_n = (pid % (GROUP_M * num_pid_n)) // size_m
    if pid_m * BLOCK_M >= num_post_padded:
        return
    offs_row = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_ids_ptr + offs_row).to(tl.int64)
    row_mask = rows < num_valid
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    a_rows = rows // TOP_K
    b_base = b_ptr + expert * stride_be
    offs_j = tl.arange(0, BLOCK_K // 2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K // BLOCK_K):
        kb = k0 * BLOCK_K
        if MODE == 9:  # contiguous halves
            a_e = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + offs_j)[None, :] * stride_ak,
                          mask=row_mask[:, None], other=0.0)
            a_o = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + BLOCK_K // 2 + offs_j)[None, :] * stride_ak,
                          mask=row_mask[:, None], other=0.0)
        else:
            a_e = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + 2 * offs_j)[None, :] * stride_ak,
                          mask=row_mask[:, None], other=0.0)
            a_o = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + 2 * offs_j + 1)[None, :] * stride_ak,
                          mask=row_mask[:, None], other=0.0)
        packed = tl.load(b_base + offs_n[:, None] * stride_bn + (k0 * (BLOCK_K // 2) + offs_j)[None, :] * stride_bk,
                         mask=n_mask[:, None], other=0)
        g = kb // GROUP_K
        scale = tl.load(b_scale_ptr + expert * stride_bse + offs_n * stride_bsn + g * stride_bsk,
                        mask=n_mask, other=0.0).to(tl.float32)
        zero = tl.load(b_zero_ptr + expert * stride_bse + offs_n * stride_bsn + g * stride_bsk,
                       mask=n_mask, other=0).to(tl.float32)
        if MODE == 7 or MODE == 8:  # noqa: PLR1714  weight tile loaded as [BLOCK_K / 2, BLOCK_N]: no transpose
            packed_t = tl.load(b_base + offs_n[None, :] * stride_bn + (k0 * (BLOCK_K // 2) + offs_j)[:, None] * stride_bk,
                               mask=n_mask[None, :], other=0)
            if MODE == 7:
                lo_t = ((packed_t & 0xF).to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
                hi_t = ((packed_t >> 4).to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
            else:
                lo_t = ((packed_t & 0xF).to(tl.float32) + 128.0).to(tl.bfloat16)
                hi_t = ((packed_t >> 4).to(tl.float32) + 128.0).to(tl.bfloat16)
            asum = tl.sum(a_e.to(tl.float32), axis=1) + tl.sum(a_o.to(tl.float32), axis=1)
            part = _dot(a_e, lo_t, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_UPCAST)
            part = _dot(a_o, hi_t, part, DOT_UPCAST)
            acc += (part - asum[:, None] * (zero + 128.0)[None, :]) * scale[None, :]
        elif MODE == 1:
            lo = ((packed & 0xF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
            hi = ((packed >> 4).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
            lo = ((lo - (zero + 8388608.0)[:, None]) * scale[:, None]).to(a_e.dtype)
            hi = ((hi - (zero + 8388608.0)[:, None]) * scale[:, None]).to(a_e.dtype)
            acc = _dot(a_e, tl.trans(lo), acc, DOT_UPCAST)
            acc = _dot(a_o, tl.trans(hi), acc, DOT_UPCAST)
        else:
            if MODE == 2 or MODE == 6:  # noqa: PLR1714 (constexpr compares)
                lo = ((packed & 0xF).to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
                hi = ((packed >> 4).to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
            elif MODE == 3 or MODE == 5 or MODE == 9:  # noqa: PLR1714
                lo, hi = _nibble_values(packed, tl.bfloat16, True)  # the shipped PTX dequantization
            else:
                lo = ((packed & 0xF).to(tl.float32) + 128.0).to(tl.bfloat16)
                hi = ((packed >> 4).to(tl.float32) + 128.0).to(tl.bfloat16)
            asum = tl.sum(a_e.to(tl.float32), axis=1) + tl.sum(a_o.to(tl.float32), axis=1)
            if SWAP:
                part_t = _dot(lo, tl.trans(a_e), tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), DOT_UPCAST)
                part_t = _dot(hi, tl.trans(a_o), part_t, DOT_UPCAST)
                acc_t += (part_t - (zero + 128.0)[:, None] * asum[None, :]) * scale[:, None]
            else:
                part = _dot(a_e, tl.trans(lo), tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_UPCAST)
                part = _dot(a_o, tl.trans(hi), part, DOT_UPCAST)
                acc += (part - asum[:, None] * (zero + 128.0)[None, :]) * scale[None, :]
    if SWAP:
        acc = tl.trans(acc_t)
    if MUL_WEIGHT:
        acc *= tl.load(topk_weights_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(c_ptr + rows[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc.to(c_ptr.dtype.element_ty),
             mask=row_mask[:, None] & n_mask[None, :])


_ROWS: dict[int, torch.Tensor] = {}


def run_probe(plan, *, mode, a, out, topk_weights, alignment):
    from triton_experts.kernels.launch import _dummies, run_gemm

    if mode == 0:
        return run_gemm(plan, a=a, a_scale=None, out=out, topk_weights=topk_weights, alignment=alignment)
    from triton_experts.layout import k_rows

    c = plan.config
    weight, s, z, b = plan.weight_args
    weight = _ROWS.setdefault(weight.data_ptr(), k_rows(weight).contiguous())  # the probe reads [E, N, K/2] rows
    dummy = _dummies(a.device)[0]
    num_m_blocks = alignment.sorted_ids.shape[0] // c.BLOCK_M
    ws = (*weight.stride(), *plan.weight_strides[4:])
    return probe_int4[(num_m_blocks * plan.n_blocks,)](
        a, dummy, weight, s, z, b, out, topk_weights if topk_weights is not None else dummy,
        alignment.sorted_ids, alignment.expert_ids, alignment.num_post_padded,
        plan.n, plan.k, alignment.num_valid, num_m_blocks,
        a.stride(0), a.stride(1), 0, 0,
        ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6], ws[7],
        out.stride(0), out.stride(1),
        GROUP_K=plan.group_k, TOP_K=plan.top_k, MUL_WEIGHT=topk_weights is not None, HAS_BIAS=False,
        DOT_UPCAST=a.device.type == 'cpu', EVEN_K=True, BLOCK_M=c.BLOCK_M, BLOCK_N=c.BLOCK_N, BLOCK_K=c.BLOCK_K,
        GROUP_M=c.GROUP_M, MODE=mode, SWAP=mode in (5, 6), num_warps=c.num_warps, num_stages=c.num_stages)


MODES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
TIMING_ONLY = (9,)


def main() -> None:
    import argparse

    import triton.testing
    from run import MODELS, routing
    from tune import _setup

    from triton_experts.align import align_by_expert_triton
    from triton_experts.kernels.launch import plan_gemm
    from triton_experts.tuning import LaunchConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="deepseek,mixtral,qwen3")
    ap.add_argument("--m", default="1,8,32")
    ap.add_argument("--modes", default=",".join(map(str, MODES)))
    ap.add_argument("--block-n", default="64,128", help="BLOCK_N values of the config grid")
    args = ap.parse_args()
    modes = [int(x) for x in args.modes.split(",")]
    bns = [int(x) for x in args.block_n.split(",")]
    bw = 3.0e12
    for model in args.models.split(","):
        d = MODELS[model]
        e, k = d["e"], d["k"]
        ex, gemms = _setup(model, "int4_w4a16")
        for m in [int(x) for x in args.m.split(",")]:
            _, ids = routing(m, e, k, seed=m)
            hit = int(torch.unique(ids).numel())
            for name, (n, kk, w, group) in gemms.items():
                rows = m if name == "w13" else m * k
                a = torch.randn(rows, kk, device="cuda", dtype=torch.bfloat16)
                tw = torch.rand(m * k, device="cuda") if name == "w2" else None
                floor_us = hit * n * kk * (0.5 + 4 / 128) / bw * 1e6
                ref = None
                line = [f"{model:8s} {name} M={m:3d} floor {floor_us:7.1f} us"]
                for mode in modes:
                    best = None
                    bks = (128, 256) if mode == 0 else (128,)
                    for bn, bk, stages in itertools.product(bns, bks, (2, 3, 4, 5)):
                        cfg = LaunchConfig(16, bn, bk, 1, 4, stages)
                        al = align_by_expert_triton(ids, num_local_experts=e, num_experts=e, block_m=16)
                        plan = plan_gemm(variant=ex.variant_name, weight=w["weight"], scale=w.get("scale"),
                                         zero=w.get("zero"), bias=None, top_k=k if name == "w13" else 1, n=n,
                                         k=kk, group_k=group, config=cfg)
                        out = torch.zeros(m * k, n, device="cuda", dtype=torch.float32)
                        try:
                            run_probe(plan, mode=mode, a=a, out=out, topk_weights=tw, alignment=al)
                            torch.cuda.synchronize()
                        except Exception as exc:  # a probe: report and go on
                            print(f"  mode {mode} {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                            continue
                        valid = al.sorted_ids[al.sorted_ids < m * k].long()
                        if mode in TIMING_ONLY:
                            pass
                        elif ref is None:
                            ref = out.clone()
                        else:
                            err = ((out[valid] - ref[valid]).norm() / ref[valid].norm()).item()
                            if err > 2e-2:
                                print(f"  mode {mode} {cfg}: WRONG rel err {err:.3g}", flush=True)
                                continue
                        t = triton.testing.do_bench(
                            lambda: run_probe(plan, mode=mode, a=a, out=out, topk_weights=tw, alignment=al),
                            warmup=5, rep=10, return_mode="median") * 1e3
                        if best is None or t < best[0]:
                            best = (t, cfg)
                    if best and m == 8 and mode:
                        c = best[1]
                        al = align_by_expert_triton(ids, num_local_experts=e, num_experts=e, block_m=16)
                        plan = plan_gemm(variant=ex.variant_name, weight=w["weight"], scale=w.get("scale"),
                                         zero=w.get("zero"), bias=None, top_k=k if name == "w13" else 1, n=n,
                                         k=kk, group_k=group, config=c)
                        ck = run_probe(plan, mode=mode, a=a, out=out, topk_weights=tw, alignment=al)
                        ir = ck.asm["ttgir"]
                        for ln in ir.splitlines():
                            if "convert_layout" in ln and name == "w13":
                                print("     ", ln.strip()[:260], flush=True)
                        print(f"   mode {mode} ttgir: " + ", ".join(f"{t}={ir.count(t)}" for t in (
                            "async_copy_global_to_local", "warp_group_dot", "ttg.local_alloc", "ttng.async_tma",
                            "tt.dot", "convert_layout", "inline_asm")), flush=True)
                    if best:
                        line.append(f"m{mode} {best[0]:7.1f} (x{best[0] / floor_us:4.2f}) "
                                    f"bn{best[1].BLOCK_N} bk{best[1].BLOCK_K} s{best[1].num_stages}")
                print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
