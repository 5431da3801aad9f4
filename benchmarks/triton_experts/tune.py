"""Tune the fused-MoE kernel launch configs on this GPU and write them where the kernels look.

For each model shape and scheme, time each candidate config of each GEMM (GEMM1: N = 2I, K = H;
GEMM2: N = H, K = I, with the top-k weight in its epilogue as the experts run it) at each token
count M on random routing, keep the fastest, and write
``configs/E<E>_N<N>_K<K>_<variant>_<device>.json`` into the triton_experts package (or --out).
Candidates depend on the rows each expert sees (M * top_k / E): one-row blocks on the CUDA cores
(or, for int4, in the Gluon kernels' 16-row mma tile) and small tiles with deep pipelines (and
split-K) for decode, large tiles for prefill. Both GEMMs of a call share one BLOCK_M (the row
grouping): the pair with the lowest summed time wins, the alignment launch of blocks of more than one
row included. ``--jobs`` compiles the candidates in parallel processes first (the kernels do not
specialize on the token count, so the compiled cache serves every M).

    python benchmarks/triton_experts/tune.py --models qwen3,deepseek --schemes fp8_block --m 1,32,2048
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import MODELS, make_weights, routing

from triton_experts.tuning import CONFIG_DIR, Kernel, LaunchConfig, file_name, nearest_tuned

# bytes per element of the (A, W) tiles in shared memory: int4 weights stay packed there (8 per int32)
BYTES = {"bf16": (2, 2), "fp8_block": (1, 1), "int4_w4a16": (2, 0.5)}
SMEM = 200 * 1024


def candidates(scheme: str, rows_per_expert: int, k_granule: int, group: int) -> list[LaunchConfig]:
    from triton_experts.kernels._generated_gluon import GLUON_KERNELS
    from triton_experts.kernels.launch import fits_group

    if rows_per_expert <= 16:  # decode: one BLOCK_M block per expert, memory bound: bytes in flight
        space = itertools.product((16,), (32, 64, 128, 256), (64, 128, 256), (4, 8), (2, 3, 4, 5, 6))
    elif rows_per_expert <= 96:
        space = itertools.product((32, 64), (64, 128, 256), (64, 128), (4, 8), (3, 4))
    else:
        space = itertools.product((64, 128), (128, 256), (64, 128), (4, 8), (3, 4))
    out = []
    for bm, bn, bk, warps, stages in space:
        if (k_granule and k_granule % bk) or not fits_group(bk, group):
            continue
        if warps == 8 and bm * bn < 64 * 128 and bn < 128:
            continue
        a_bytes, w_bytes = BYTES[scheme]
        if stages * (bm * bk * a_bytes + bk * bn * w_bytes) > SMEM:
            continue
        if bm == 128 and bn == 256 and warps == 4:
            continue
        out.append(LaunchConfig(bm, bn, bk, 1 if bm <= 16 else 8, warps, stages))
    if rows_per_expert <= 16:  # split-K for few experts or short N (more programs streaming weights)
        for bn, split, stages in itertools.product((32, 64, 128, 256), (2, 4), (2, 3, 4)):
            bk = 128 if not k_granule or k_granule % 128 == 0 else k_granule
            if fits_group(bk, group) and stages * (16 * bk * BYTES[scheme][0] + bk * bn * BYTES[scheme][1]) <= SMEM:
                out.append(LaunchConfig(16, bn, bk, 1, 4, stages, SPLIT_K=split))
    if rows_per_expert <= 2:  # one-row blocks on the CUDA cores, no alignment (an expert or two per token)
        for bn, bk, warps, split, stages in itertools.product((16, 32, 64, 128), (64, 128), (4, 8), (1, 2, 4), (3, 4)):
            if (k_granule and k_granule % bk) or not fits_group(bk, group) or (warps == 8 and bn < 64):
                continue
            out.append(LaunchConfig(1, bn, bk, 1, warps, stages, SPLIT_K=split))
    if scheme in GLUON_KERNELS and rows_per_expert <= 16 and group == 128:  # the Gluon decode kernels
        # (persistent: SPLIT_K must divide K / 128; BLOCK_M 1: direct rows, where experts see a row or two)
        forms = [(16, Kernel.GLUON), (16, Kernel.GLUON_PERSISTENT)]
        forms += [(1, Kernel.GLUON), (1, Kernel.GLUON_PERSISTENT)] if rows_per_expert <= 2 else []
        for bm, kernel in forms:
            for bn, stages, split in itertools.product((64, 128, 256), (2, 3, 4), (1, 2, 4)):
                out.append(LaunchConfig(bm, bn, 128, 1, 4, stages, SPLIT_K=split, KERNEL=kernel))
            for bn, stages, split in itertools.product((128, 256), (2, 3), (1, 2, 4)):  # 8 warps: 16-32 columns each
                out.append(LaunchConfig(bm, bn, 128, 1, 8, stages, SPLIT_K=split, KERNEL=kernel))
    if 4 <= rows_per_expert <= 16:  # some experts span two row blocks: run those blocks together (L2)
        for bn, split, stages in itertools.product((128, 256), (1, 2, 4), (2, 3)):
            out.append(LaunchConfig(16, bn, 128, 8, 4, stages, SPLIT_K=split))
    return out


def _setup(model: str, scheme: str, e: int | None = None):
    from moe_oracle import MoEConfig, Platform, make_kernel

    d = MODELS[model]
    e = e or d["e"]
    config = MoEConfig(num_experts=e, top_k=d["k"], hidden_size=d["h"], intermediate_size=d["i"],
                       in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=make_weights(scheme, e, d["h"], d["i"]), config=config,
                         platform=Platform.detect(), force="triton")
    ex = kernel.experts
    gemms = {"w13": (2 * d["i"], d["h"], ex.w13, ex.group13), "w2": (d["h"], d["i"], ex.w2, ex.group2)}
    return ex, gemms


def _operands(scheme: str, rows: int, kk: int):
    a = torch.randn(rows, kk, device="cuda", dtype=torch.bfloat16)
    if scheme == "fp8_block":
        return a.to(torch.float8_e4m3fn), torch.rand(rows, kk // 128, device="cuda") * 0.01 + 0.001
    return a, None


def _time(ex, name, gemm, scheme, ids, k, cfg, rep):
    import triton.testing

    from triton_experts.align import rows_for_experts
    from triton_experts.kernels.launch import new_gemm_out, plan_gemm, run_gemm

    n, kk, w, group = gemm
    m = ids.shape[0]
    a, a_scale = _operands(scheme, m if name == "w13" else m * k, kk)
    e = w["weight"].shape[0]
    al = rows_for_experts(ids, num_local_experts=e, num_experts=e, block_m=cfg.BLOCK_M)
    tw = torch.rand(m * k, device="cuda") if name == "w2" else None
    plan = plan_gemm(variant=ex.variant_name, weight=w["weight"], scale=w.get("scale"), zero=w.get("zero"),
                     bias=None, top_k=k if name == "w13" else 1, n=n, k=kk, group_k=group, config=cfg)
    # as the experts store GEMM outputs: bf16, or float32 split-K partials
    out = new_gemm_out(plan, rows=m * k, dtype=torch.bfloat16, device=torch.device("cuda"))

    def fn():
        run_gemm(plan, a=a, a_scale=a_scale, out=out, topk_weights=tw, alignment=al)
    fn()
    if rep == 0:
        torch.cuda.synchronize()
        return 0.0
    return triton.testing.do_bench(fn, warmup=5, rep=rep, return_mode="median")


def _align_time(ids: torch.Tensor, e: int, block_m: int, rep: int) -> float:
    """The alignment launch a call of BLOCK_M-row blocks runs before its GEMMs (none for one row)."""
    import triton.testing

    from triton_experts.align import rows_for_experts

    if block_m == 1 or rep == 0:
        return 0.0
    # replayed from a CUDA graph, back to back, as it runs inside the layer's graph: under do_bench
    # (an L2 flush before each call) this one-program launch timed 14-25 us on the H100, against
    # 2.6-5 us of kernel time in the layer's profile
    return triton.testing.do_bench_cudagraph(
        lambda: rows_for_experts(ids, num_local_experts=e, num_experts=e, block_m=block_m), rep=rep,
        return_mode="median")


def _choose(timed: dict[str, dict[LaunchConfig, float]], align: dict[int, float] | None = None
            ) -> dict[str, LaunchConfig]:
    """The fastest config per GEMM, under the experts' rule that both GEMMs of a call share one row
    grouping (BLOCK_M; one-row blocks need no alignment): with both GEMMs timed, the BLOCK_M with the
    lowest summed time, the alignment launch of that BLOCK_M (``align``, seconds) included."""
    if set(timed) != {"w13", "w2"}:
        return {name: min(t, key=t.get) for name, t in timed.items()}
    align = align or {}
    best: dict[str, LaunchConfig] = {}
    best_sum = float("inf")
    for bm in sorted({c.BLOCK_M for c in timed["w13"]} & {c.BLOCK_M for c in timed["w2"]}):
        pick = {name: min((c for c in t if bm == c.BLOCK_M), key=t.get) for name, t in timed.items()}
        total = sum(timed[name][c] for name, c in pick.items()) + align.get(bm, 0.0)
        if total < best_sum:
            best, best_sum = pick, total
    return best


def _compile_worker(model: str, scheme: str, work: list[tuple[str, LaunchConfig]]) -> int:
    """Compile (and run once on top_k experts) each (gemm, config): fills Triton's on-disk cache."""
    k = MODELS[model]["k"]
    ex, gemms = _setup(model, scheme, e=k)  # as few experts as the top-k allows: same compiled kernels
    ok = 0
    for name, cfg in work:
        ids = torch.stack([torch.randperm(k, device="cuda")[:k] for _ in range(16)]).to(torch.int32)
        try:
            _time(ex, name, gemms[name], scheme, ids, k, cfg, rep=0)
            ok += 1
        except Exception:
            pass
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--schemes", required=True)
    ap.add_argument("--m", default="1,8,32,128,512,2048,8192")
    ap.add_argument("--only", default="", help="comma list of gemm:M to tune (e.g. w13:2048), default all")
    ap.add_argument("--out", type=Path, default=CONFIG_DIR)
    ap.add_argument("--rep", type=int, default=25, help="do_bench repetition time per candidate, ms")
    ap.add_argument("--jobs", type=int, default=0, help="parallel compile processes (0: none)")
    ap.add_argument("--show", type=int, default=0, help="also print the N fastest candidates of each GEMM and M")
    ap.add_argument("--block-m", default="", help="comma list: only candidates of these BLOCK_M (the config "
                                                   "already in the output file always competes)")
    ap.add_argument("--kernels", default="", help="comma list: only candidates of these kernel families "
                                                  "(triton, gluon, gluon_persistent; the current config always competes)")
    args = ap.parse_args()
    from triton_experts.kernels._generated_moe import VARIANTS

    ms = [int(x) for x in args.m.split(",")]
    device = torch.cuda.get_device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    for model in args.models.split(","):
        d = MODELS[model]
        e, k = d["e"], d["k"]
        for scheme in args.schemes.split(","):
            ex, gemms = _setup(model, scheme)
            meta = VARIANTS[ex.variant_name]
            only = set(args.only.split(",")) - {""}
            block_ms = {int(x) for x in args.block_m.split(",") if x}
            kernels = {Kernel(x) for x in args.kernels.split(",") if x}
            plan = {}
            for m in ms:
                for name, (n, kk, _, group) in gemms.items():
                    if only and f"{name}:{m}" not in only:
                        continue
                    cands = [c for c in candidates(scheme, max(1, m * k // e), meta["k_granule"], group)
                             if (not block_ms or c.BLOCK_M in block_ms) and (not kernels or c.KERNEL in kernels)]
                    path = args.out / file_name(e=e, n=n, k=kk, variant=ex.variant_name, device=device)
                    # what M runs today (its own entry or the nearest tuned one) competes: a re-tune never loses it
                    table = {int(tm): cfg for tm, cfg in json.loads(path.read_text()).items()} if path.is_file() else {}
                    current = LaunchConfig.from_dict(table[nearest_tuned(table, m)]) if table else None
                    if current and current not in cands:
                        cands.append(current)
                    plan[(m, name)] = cands
            if args.jobs:
                todo = sorted({(name, c) for (_, name), cs in plan.items() for c in cs}, key=str)
                chunks = [todo[j::args.jobs] for j in range(args.jobs)]
                t0 = time.time()
                with ProcessPoolExecutor(args.jobs, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
                    done = sum(pool.map(_compile_worker, [model] * len(chunks), [scheme] * len(chunks), chunks))
                print(f"{model} {scheme}: compiled {done}/{len(todo)} in {time.time() - t0:.0f} s", flush=True)
            tables: dict[str, dict[str, dict]] = {"w13": {}, "w2": {}}
            for m in ms:
                _, ids = routing(m, e, k, seed=m)
                timed: dict[str, dict[LaunchConfig, float]] = {}
                for name, gemm in gemms.items():
                    if (m, name) not in plan:
                        continue
                    timed[name] = {}
                    for cfg in plan[(m, name)]:
                        try:
                            timed[name][cfg] = _time(ex, name, gemm, scheme, ids, k, cfg, args.rep)
                        except Exception as exc:
                            print(f"  skip {cfg}: {type(exc).__name__}", flush=True)
                    assert timed[name], f"no candidate of {name} at M={m} ran"
                for name, t in timed.items() if args.show else ():
                    for cfg in sorted(t, key=t.get)[:args.show]:
                        print(f"    {name} M={m} {t[cfg] * 1e3:8.1f} us  {cfg}")
                align = {bm: _align_time(ids, e, bm, args.rep) for bm in {c.BLOCK_M for t in timed.values() for c in t}}
                if len(align) > 1:
                    print("  alignment launch per BLOCK_M: " + ", ".join(f"{bm}: {t * 1e3:.1f} us"
                                                                         for bm, t in sorted(align.items())))
                for name, cfg in _choose(timed, align).items():
                    tables[name][str(m)] = cfg.as_dict()
                    t = timed[name][cfg] * 1e3
                    fastest = min(timed[name].values()) * 1e3
                    print(f"{model} {scheme} {name} M={m}: {t:.1f} us with {cfg} (fastest of any BLOCK_M {fastest:.1f} "
                          f"us; {len(plan[(m, name)])} candidates, {time.time() - t_start:.0f} s)", flush=True)
            for name, (n, kk, _, _) in gemms.items():
                path = args.out / file_name(e=e, n=n, k=kk, variant=ex.variant_name, device=device)
                old = json.loads(path.read_text()) if path.is_file() else {}
                path.write_text(json.dumps({**old, **tables[name]}, indent=1, sort_keys=True))
                print(f"wrote {path}", flush=True)
            del ex, gemms
            torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        print(f"tuning took {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
