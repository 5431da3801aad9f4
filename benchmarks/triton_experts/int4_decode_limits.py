"""Probe: what limits the int4 decode GEMM (16-row tiles), and do three ways around it help?

Diagnostic for issue #6 (int4 decode 1.4-2.4x the weight-bandwidth floor). Nsight Compute on the
shipped kernel (``ncu_gemm.py``; DeepSeek-V3 w13 at M=8, BLOCK_N 256): 255 registers per thread, so
two CTAs of 4 warps per SM (1.97 warps per scheduler), 0.39 instructions issued per scheduler-cycle,
DRAM at 64% of peak, 5.4 thread-instructions per weight byte. The kernel is latency-bound at low
occupancy: neither memory nor issue is saturated. Three ways to change that, each timed against the
shipped kernel and config on the same alignment (and checked against its output first):

  tma      the packed weight tile through a host TensorDescriptor (TMA into shared memory) instead
           of cp.async pointer loads; configs BLOCK_N x stages x warps x SPLIT_K
  slices   each 128-k group's step split into SLICES dots of 128 / SLICES k (one slice's
           dequantized weights alive at a time: 168 instead of 255 registers, three CTAs per SM),
           zero and scale still once per group
  maxnreg  the shipped kernel under a register cap (168: three CTAs per SM, 128: four), which
           ptxas meets by spilling; stages x SPLIT_K
  gluon    the Gluon decode kernel (kernels/_generated_gluon.py: explicit mma.sync layouts, one
           16-pair slice of dequantized weights alive at a time, 32-bit shared loads);
           BLOCK_N x stages x warps x SPLIT_K

Each row prints the shipped kernel's time and the best probe config's, with the ratio. Columns past
N read other rows' bytes in the tma kernel; their outputs are never stored. H100 results (2026-11-24,
benchmarks/results/triton_experts-int4_decode_limits-*): maxnreg 1.07-1.22x slower, slices 1.49-1.88x
slower, tma 0.92-1.04x (within the run-to-run spread); none is kept. The gluon mode measured 0.90-0.94x
of the shipped Triton kernel on every row (a copy of the kernel that then moved into the package,
which the tuner now picks for 16-row int4 decode tiles: triton_experts-gluon_int4_decode-*).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))

from triton_experts.kernels._generated_moe import _nibble_values


@triton.jit(do_not_specialize=["num_valid", "num_m_blocks"])
def moe_int4_tma(a_ptr, w_desc, s_ptr, z_ptr, c_ptr, tw_ptr, sorted_ids_ptr, expert_ids_ptr, npp_ptr,
                 N, K, KT, num_valid, num_m_blocks,
                 stride_am, stride_bse, stride_bsn, stride_bsk, stride_cm, stride_cs,
                 TOP_K: tl.constexpr, MUL_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 SPLIT_K: tl.constexpr, STAGES: tl.constexpr):
    """The generated kernel's int4 codes path (16-row tiles, 128-k steps = one group = one 64-byte K
    tile) with the weight tile loaded by TMA from ``w_desc`` ([E * K/128 * N, 64] bytes)."""
    BLOCK_K: tl.constexpr = 128
    pid = tl.program_id(0)
    split = pid % SPLIT_K
    pid = pid // SPLIT_K
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    # no early returns but an empty K range (written for Triton's automatic warp specialization, which
    # needs that; on this kernel it compiled to one unpipelined weight buffer, so the probe leaves it off)
    live = pid_m * BLOCK_M < tl.load(npp_ptr)
    rows = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M), mask=live, other=num_valid).to(tl.int64)
    expert = tl.load(expert_ids_ptr + pid_m, mask=live, other=-1)
    live = live & (expert >= 0)
    expert = tl.maximum(expert, 0)
    row_mask = (rows < num_valid) & live
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    a_rows = rows // TOP_K
    offs_h = tl.arange(0, BLOCK_K // 2)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_steps = K // BLOCK_K
    k_per = tl.cdiv(k_steps, SPLIT_K)
    k_first = split * k_per
    k_last = tl.where(live, tl.minimum(k_first + k_per, k_steps), k_first)
    w_row0 = expert * KT * N + pid_n * BLOCK_N
    for k0 in tl.range(k_first, k_last, num_stages=STAGES):
        kb = k0 * BLOCK_K
        a_even = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + 2 * offs_h)[None, :],
                         mask=row_mask[:, None], other=0.0)
        a_odd = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + 2 * offs_h + 1)[None, :],
                        mask=row_mask[:, None], other=0.0)
        packed = w_desc.load([w_row0 + k0 * N, 0])
        sz = expert * stride_bse + offs_n * stride_bsn + k0 * stride_bsk
        scale = tl.load(s_ptr + sz, mask=n_mask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + sz, mask=n_mask, other=0).to(tl.float32)
        lo, hi = _nibble_values(packed, tl.bfloat16, True)
        part = tl.dot(a_even, tl.trans(lo))
        part = tl.dot(a_odd, tl.trans(hi), part)
        a_sum = tl.sum(a_even.to(tl.float32), axis=1) + tl.sum(a_odd.to(tl.float32), axis=1)
        acc += (part - a_sum[:, None] * (zero + 128.0)[None, :]) * scale[None, :]
    if MUL_WEIGHT:
        acc *= tl.load(tw_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(c_ptr + split * stride_cs + rows[:, None] * stride_cm + offs_n[None, :],
             acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


@triton.jit(do_not_specialize=["num_valid", "num_m_blocks"])
def moe_int4_slices(a_ptr, b_ptr, s_ptr, z_ptr, c_ptr, tw_ptr, sorted_ids_ptr, expert_ids_ptr, npp_ptr,
                    N, K, KT, num_valid, num_m_blocks,
                    stride_am, stride_bse, stride_bsn, stride_bsk, stride_cm, stride_cs,
                    TOP_K: tl.constexpr, MUL_WEIGHT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    SPLIT_K: tl.constexpr, SLICES: tl.constexpr, STAGES: tl.constexpr):
    """The codes path with each 128-k group's step split into SLICES dots of 128 / SLICES k (pointer
    loads of 64 / SLICES bytes per row each): the dequantized weights of one slice live at a time,
    and zero and scale still apply once per group."""
    BLOCK_K: tl.constexpr = 128
    W: tl.constexpr = 64 // SLICES
    pid = tl.program_id(0)
    split = pid % SPLIT_K
    pid = pid // SPLIT_K
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    if pid_m * BLOCK_M >= tl.load(npp_ptr):
        return
    rows = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_mask = rows < num_valid
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if expert < 0:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    a_rows = rows // TOP_K
    offs_w = tl.arange(0, W)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_steps = K // BLOCK_K
    k_per = tl.cdiv(k_steps, SPLIT_K)
    k_first = split * k_per
    k_last = tl.minimum(k_first + k_per, k_steps)
    b_base = b_ptr + expert * KT * N * 64 + offs_n[:, None] * 64
    for k0 in tl.range(k_first, k_last, num_stages=STAGES):
        kb = k0 * BLOCK_K
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        a_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for j in tl.static_range(SLICES):
            a_even = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + 2 * (j * W + offs_w))[None, :],
                             mask=row_mask[:, None], other=0.0)
            a_odd = tl.load(a_ptr + a_rows[:, None] * stride_am + (kb + 2 * (j * W + offs_w) + 1)[None, :],
                            mask=row_mask[:, None], other=0.0)
            cols = tl.max_contiguous(tl.multiple_of(k0 * N * 64 + j * W + offs_w, W), W)
            packed = tl.load(b_base + cols[None, :], mask=n_mask[:, None], other=0)
            lo, hi = _nibble_values(packed, tl.bfloat16, True)
            part = tl.dot(a_even, tl.trans(lo), part)
            part = tl.dot(a_odd, tl.trans(hi), part)
            a_sum += tl.sum(a_even.to(tl.float32), axis=1) + tl.sum(a_odd.to(tl.float32), axis=1)
        sz = expert * stride_bse + offs_n * stride_bsn + k0 * stride_bsk
        scale = tl.load(s_ptr + sz, mask=n_mask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + sz, mask=n_mask, other=0).to(tl.float32)
        acc += (part - a_sum[:, None] * (zero + 128.0)[None, :]) * scale[None, :]
    if MUL_WEIGHT:
        acc *= tl.load(tw_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    tl.store(c_ptr + split * stride_cs + rows[:, None] * stride_cm + offs_n[None, :],
             acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


def run_tma(plan, *, a, out, tw, al, bn, stages, warps, split):
    from triton.tools.tensor_descriptor import TensorDescriptor

    weight, s, z, _ = plan.weight_args
    _, kt, n, width = weight.shape
    desc = TensorDescriptor.from_tensor(weight.view(-1, width), block_shape=[bn, width])
    ws = plan.weight_strides
    nb = al.sorted_ids.shape[0] // 16
    moe_int4_tma[(nb * triton.cdiv(n, bn) * split,)](
        a, desc, s, z, out, tw if tw is not None else s, al.sorted_ids, al.expert_ids, al.num_post_padded,
        n, plan.k, kt, al.num_valid, nb, a.stride(0), ws[4], ws[5], ws[6], out.stride(-2),
        out.stride(0) if out.dim() == 3 else 0,
        TOP_K=plan.top_k, MUL_WEIGHT=tw is not None, BLOCK_M=16, BLOCK_N=bn, SPLIT_K=split,
        STAGES=stages, num_warps=warps, num_stages=stages)


def run_slices(plan, *, a, out, tw, al, bn, stages, warps, split, slices):
    weight, s, z, _ = plan.weight_args
    _, kt, n, _ = weight.shape
    ws = plan.weight_strides
    nb = al.sorted_ids.shape[0] // 16
    moe_int4_slices[(nb * triton.cdiv(n, bn) * split,)](
        a, weight, s, z, out, tw if tw is not None else s, al.sorted_ids, al.expert_ids, al.num_post_padded,
        n, plan.k, kt, al.num_valid, nb, a.stride(0), ws[4], ws[5], ws[6], out.stride(-2),
        out.stride(0) if out.dim() == 3 else 0,
        TOP_K=plan.top_k, MUL_WEIGHT=tw is not None, BLOCK_M=16, BLOCK_N=bn, SPLIT_K=split, SLICES=slices,
        STAGES=stages, num_warps=warps, num_stages=stages)


class _Capped:
    """A kernel whose launches carry ``maxnreg`` (the per-thread register cap ptxas must meet)."""

    def __init__(self, kernel, maxnreg: int | None) -> None:
        self.kernel, self.maxnreg = kernel, maxnreg

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return (lambda *a, **kw: launch(*a, maxnreg=self.maxnreg, **kw)) if self.maxnreg else launch


def _candidates(kind: str, shipped):
    """(BLOCK_N, stages, warps, SPLIT_K, SLICES or register cap or 0) per probe config of one mode."""
    if kind == "tma":
        return [(bn, st, wp, sp, 0) for bn, st, wp, sp in itertools.product((64, 128, 256), (2, 3, 4, 6), (4, 8), (1, 2, 4))
                if st * bn * 64 <= 160 * 1024 and (wp == 4 or bn >= 128)]
    if kind == "gluon":
        return [(bn, st, wp, sp, 0) for bn, st, wp, sp in itertools.product((64, 128, 256), (2, 3, 4), (4, 8), (1, 2, 4))
                if wp == 4 or bn >= 128]
    if kind == "slices":
        return [(bn, st, 4, sp, sl) for bn, st, sp, sl in itertools.product((128, 256), (3, 4, 6), (1, 2, 4), (4,))]
    return [(shipped.BLOCK_N, st, shipped.num_warps, sp, cap)
            for st, sp, cap in itertools.product((2, 3, 4), (1, 2, 4), (168, 128))]


def main() -> None:

    import triton.testing
    from run import MODELS, routing
    from tune import _setup

    from triton_experts.align import rows_for_experts
    from triton_experts.kernels._generated_moe import VARIANTS
    from triton_experts.kernels.launch import new_gemm_out, plan_gemm, run_gemm
    from triton_experts.tuning import Kernel, LaunchConfig, get_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="deepseek:1,deepseek:8,deepseek:32,mixtral:8,mixtral:32,qwen3:8,qwen3:32")
    ap.add_argument("--rep", type=int, default=15, help="do_bench repetition time per config, ms")
    ap.add_argument("--mode", choices=("tma", "slices", "maxnreg", "gluon"), required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print(f"# device {props.name}, torch {torch.__version__}, triton {triton.__version__}; mode {args.mode}")
    for case in args.cases.split(","):
        model, m = case.split(":")
        m = int(m)
        d = MODELS[model]
        e, k = d["e"], d["k"]
        ex, gemms = _setup(model, "int4_w4a16")
        _, ids = routing(m, e, k, seed=m)
        for name, (n, kk, w, group) in gemms.items():
            shipped, _ = get_config(m=m, n=n, k=kk, variant=ex.variant_name,
                                    k_granule=VARIANTS[ex.variant_name]["k_granule"], num_experts=e, top_k=k,
                                    device=props.name)
            if shipped.BLOCK_M != 16:  # the one-row path: compare against the 16-row config it beat
                shipped = LaunchConfig(16, 256, 128, 1, 4, 2, SPLIT_K=2)
            top_k = k if name == "w13" else 1
            rows = m * k
            a = torch.randn(m if name == "w13" else rows, kk, device="cuda", dtype=torch.bfloat16)
            tw = torch.rand(rows, device="cuda") if name == "w2" else None
            al = rows_for_experts(ids, num_local_experts=e, num_experts=e, block_m=16)

            def plan_of(cfg, variant=ex.variant_name, w=w, n=n, kk=kk, group=group, top_k=top_k):
                return plan_gemm(variant=variant, weight=w["weight"], scale=w.get("scale"),
                                 zero=w.get("zero"), bias=None, top_k=top_k, n=n, k=kk, group_k=group, config=cfg)
            p0 = plan_of(shipped)
            out0 = new_gemm_out(p0, rows=rows, dtype=torch.bfloat16, device=torch.device("cuda")).zero_()
            run_gemm(p0, a=a, a_scale=None, out=out0, topk_weights=tw, alignment=al)
            ref = (out0.sum(0) if out0.dim() == 3 else out0).float()
            t0 = triton.testing.do_bench(lambda: run_gemm(p0, a=a, a_scale=None, out=out0, topk_weights=tw,
                                                          alignment=al), warmup=5, rep=args.rep, return_mode="median")
            timed = {}
            for bn, stages, warps, split, extra in _candidates(args.mode, shipped):
                out = torch.zeros((split, rows, n) if split > 1 else (rows, n), device="cuda",
                                  dtype=torch.float32 if split > 1 else torch.bfloat16)
                if args.mode == "maxnreg":
                    capped = plan_of(dataclasses.replace(shipped, num_stages=stages, SPLIT_K=split))
                    capped = dataclasses.replace(capped, kernel=_Capped(capped.kernel, extra))
                elif args.mode == "gluon":
                    capped = plan_of(LaunchConfig(16, bn, 128, 1, warps, stages, SPLIT_K=split, KERNEL=Kernel.GLUON))

                def launch(out=out, bn=bn, stages=stages, warps=warps, split=split, extra=extra,
                           capped=capped if args.mode in ("maxnreg", "gluon") else None):
                    if args.mode == "tma":
                        run_tma(p0, a=a, out=out, tw=tw, al=al, bn=bn, stages=stages, warps=warps, split=split)
                    elif args.mode == "slices":
                        run_slices(p0, a=a, out=out, tw=tw, al=al, bn=bn, stages=stages, warps=warps, split=split,
                                   slices=extra)
                    else:
                        run_gemm(capped, a=a, a_scale=None, out=out, topk_weights=tw, alignment=al)
                label = f"bn{bn} s{stages} w{warps} split{split}" + (f" {args.mode} {extra}" if extra else "")
                try:
                    launch()
                except Exception as exc:  # a config the compiler refuses is reported, not fatal
                    print(f"  skip {label}: {type(exc).__name__} {str(exc)[:200]}")
                    continue
                got = out.sum(0) if split > 1 else out.float()
                err = ((got - ref).abs().max() / ref.abs().max()).item()
                if err > 2e-2:
                    print(f"  WRONG {label}: relative error {err:.3g} against the shipped kernel")
                    continue
                timed[label] = triton.testing.do_bench(launch, warmup=5, rep=args.rep, return_mode="median")
            best = sorted(timed, key=timed.get)[:3]
            tops = " | ".join(f"{b} {timed[b] * 1e3:.1f}" for b in best)
            print(f"{model:8s} {name:3s} M={m:3d} shipped {t0 * 1e3:7.1f} us (bn{shipped.BLOCK_N} s{shipped.num_stages} "
                  f"split{shipped.SPLIT_K}) | {args.mode} best {timed[best[0]] * 1e3:7.1f} us "
                  f"x{timed[best[0]] / t0:.3f} | {tops}", flush=True)
        del ex, gemms
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
