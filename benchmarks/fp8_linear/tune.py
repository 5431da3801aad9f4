"""Tune the Triton block-scaled GEMM per (N, K, device) and record it against cuBLAS.

For every shape and M it times a pruned set of configs (tile sizes, split-K, stages, warps;
the heuristic's own config included) with the benchmark's method (``_common.py``), keeps the
fastest config whose output matches torch's blockwise cuBLASLt, and times that peer too. One
JSON per shape goes to the package's configs folder (or ``--out``; and under $OUT when set):
``block-N{N}-K{K}-B128x128-{device}.json`` with ``configs`` and ``timings_us`` per M, which the
kernel reads for its config and the registry for choosing Triton or cuBLAS at each M.

    python benchmarks/fp8_linear/tune.py [--shapes all] [--ms 1,16,...] [--budget-s 420] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _common import MS, ROOT, SHAPES, bench_us, cublas_peer, make_operands, rel_err, rotation, versions, write_json

CONFIG_DIR = ROOT / "packages" / "fp8-linear" / "src" / "fp8_linear" / "configs"


def candidates(m: int, n: int, k: int, sms: int):
    """Configs worth timing at this M (the heuristic's first)."""
    from fp8_linear.tuned import GemmConfig, heuristic_config

    out = [heuristic_config(m, n, k, group_k=128, num_sms=sms)]
    k_iters = k // 128
    if m <= 64:
        bm = max(16, 1 << max(0, (m - 1).bit_length()))
        for bn in (32, 64, 128):
            tiles = -(-m // bm) * -(-n // bn)
            for split in (1, 2, 4, 8):
                if split > 1 and (k_iters // split < 2 or tiles >= 2 * sms):
                    continue
                out.append(GemmConfig(block_m=bm, block_n=bn, block_k=128, group_m=1, split_k=split, num_warps=4,
                                      num_stages=4))
    elif m <= 512:
        for bm in (32, 64):
            for bn in (64, 128):
                tiles = -(-m // bm) * -(-n // bn)
                for split in (1, 2) if tiles < sms else (1,):
                    for unroll in (1, 2) if (bm, bn) == (64, 128) else (1,):
                        out.append(GemmConfig(block_m=bm, block_n=bn, block_k=128, group_m=8, split_k=split,
                                              num_warps=4, num_stages=4, k_unroll=unroll))
    else:
        for bm, bn, warps in ((64, 128, 4), (64, 256, 8), (128, 128, 8), (128, 64, 4), (64, 64, 4), (128, 256, 8)):
            for stages in (3, 4):
                for unroll in (1, 2) if (bm, bn) in ((64, 128), (128, 128), (64, 256)) else (1,):
                    out.append(GemmConfig(block_m=bm, block_n=bn, block_k=128, group_m=8, num_warps=warps,
                                          num_stages=stages, k_unroll=unroll))
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def tune_shape(n: int, k: int, ms: tuple[int, ...], deadline: float, log) -> dict:
    import fp8_linear
    from fp8_linear.kernels.triton_gemm import triton_gemm
    from fp8_linear.validation import check_gemm

    platform = fp8_linear.registry.detected_platform()
    options = fp8_linear.triton_options(platform)
    sms = platform.num_sms or 132
    configs, timings = {}, {}
    for m in ms:
        set_bytes = m * k + n * k
        sets = [make_operands(m, n, k, seed=7 * i + m) for i in range(rotation(set_bytes))]
        checked = [check_gemm(o.a, o.a_s_row, o.w, o.w_s, block_size=(128, 128), out_dtype=torch.bfloat16, bias=None,
                              granularity="block", check_values=False) for o in sets]
        expected = cublas_peer(sets[0], m)
        t_cub = bench_us([lambda o=o: cublas_peer(o, m) for o in sets])
        best = None
        for i, cfg in enumerate(candidates(m, n, k, sms)):
            if i and time.time() > deadline:  # past the budget: the heuristic's config only
                break
            try:
                got = triton_gemm(*checked[0], config=cfg, options=options)
                if rel_err(got, expected) > 1e-2:
                    log(f"  M={m} {cfg}: wrong result, skipped")
                    continue
                us = bench_us([lambda c=c, cfg=cfg: triton_gemm(*c, config=cfg, options=options) for c in checked],
                              warmup_ms=5, rep_ms=20)
            except Exception as exc:  # out of shared memory / registers: not a candidate here
                log(f"  M={m} {cfg}: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            if best is None or us < best[0]:
                best = (us, cfg)
        if best is None:
            continue
        configs[str(m)] = best[1].to_json()
        timings[str(m)] = {"triton": round(best[0], 2), "cublas": round(t_cub, 2)}
        c = best[1]
        log(f"  N={n} K={k} M={m}: triton {best[0]:.1f} us ({c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} "
            f"w{c.num_warps} st{c.num_stages} u{c.k_unroll}) vs cublas {t_cub:.1f} us: x{t_cub / best[0]:.2f}")
        del sets, checked
        torch.cuda.empty_cache()
    return {"configs": configs, "timings_us": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="all")
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="after this many seconds only the heuristic config is timed")
    parser.add_argument("--out", default=str(CONFIG_DIR))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("tuning needs a CUDA GPU")
    from fp8_linear.tuned import config_filename

    shapes = SHAPES if args.shapes == "all" else {s: SHAPES[s] for s in args.shapes.split(",")}
    ms = tuple(int(v) for v in args.ms.split(","))
    info = versions()
    start = time.time()
    deadline = start + args.budget_s
    print(f"# tuning on {info['device']}, torch {info['torch']}, triton {info['triton']}", flush=True)
    # Past the budget every (shape, M) still gets the heuristic's config and the cuBLAS timing, so
    # the registry's Triton-or-cuBLAS table is always complete.
    for name, (n, k) in shapes.items():
        print(f"{name}: N={n} K={k}", flush=True)
        result = tune_shape(n, k, ms, deadline, lambda line: print(line, flush=True))
        if not result["configs"]:
            continue
        data = {"variant": "block", "n": n, "k": k, "block_size": [128, 128], "device": info["device"],
                "torch": info["torch"], "triton": info["triton"], **result}
        path = write_json(Path(args.out) / config_filename("block", n, k, (128, 128), info["device"]), data)
        print(f"  wrote {path}", flush=True)
    print(f"# tuned in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
