"""Tune the Triton block-scaled GEMM per (N, K, device) and record it against cuBLAS.

For every shape and M it times a pruned set of configs (the previously tuned config first, the
heuristic's, then tile sizes, split-K, stages, warps, and from M = 128 the warp-specialized Gluon
kernel (``engine = "wgmma"``, sm90) with several stage counts and tile orders) with the benchmark's method (``_common.py``), keeps the
fastest config whose output matches torch's blockwise cuBLASLt, and times cuBLAS the way the
library runs it (``fp8_linear.kernels.cublas.cublas_gemm`` on operands laid out as
``Fp8BlockLinear``'s quantization produces them: storage of ``round_up(M, 4)`` rows, TMA-aligned
column-major scales, read without a padding copy) and the pre-padded peer. Output (the package's configs
folder, or ``--out``; everything also into ``$OUT/tuned.tar`` when set):

* per shape ``block-N{N}-K{K}-B128x128-{device}.json``: ``configs`` and ``timings_us`` per M
  (merged into an existing file: M values not tuned in this run keep their entries);
* ``dispatch-block-B128x128-{device}.json``: per ``"N,K"`` the Triton and cuBLAS times per M and
  the M ranges where each wins (:mod:`fp8_linear.dispatch`), which the registry's automatic
  choice reads.

    python benchmarks/fp8_linear/tune.py [--shapes all] [--ms 1,16,...] [--budget-s 420] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tarfile
import time
from pathlib import Path

import torch
from _common import (
    MS,
    ROOT,
    SHAPES,
    bench_us,
    cublas_peer,
    interleaved_rounds,
    make_operands,
    rel_err,
    rotation,
    versions,
)

CONFIG_DIR = ROOT / "packages" / "fp8-linear" / "src" / "fp8_linear" / "configs"
ROUNDS = 3


WGMMA_MIN_M = 128  # below this one 128-row tile is mostly padding


def wgmma_candidates(m: int) -> list:
    from fp8_linear.tuned import Engine, GemmConfig

    if m < WGMMA_MIN_M:
        return []
    return [GemmConfig(block_m=128, block_n=128, block_k=128, group_m=group_m, num_stages=stages, engine=Engine.WGMMA)
            for stages, group_m in ((4, 8), (5, 8), (3, 8), (4, 16))]


def candidates(m: int, n: int, k: int, sms: int, previous=None, search: str = "all"):
    """Configs worth timing at this M (the previously tuned one and the heuristic's first).

    ``search``: "all" every M; "large" the search only at M >= 1024 (elsewhere the previous
    config, else the heuristic's); "wgmma" the previous config and the Gluon kernel's candidates;
    "none" no search."""
    from fp8_linear.tuned import GemmConfig, heuristic_config

    out = ([previous] if previous is not None else []) + [heuristic_config(m, n, k, group_k=128, num_sms=sms)]
    if search == "none" or (search == "large" and m < 1024):
        return out[:1]
    if search == "wgmma":
        return _unique(out[:1] + wgmma_candidates(m))
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
    elif search == "all":
        for bm, bn, warps, stages in ((64, 128, 4, 3), (64, 128, 4, 4), (128, 128, 8, 3), (128, 128, 8, 4),
                                      (128, 64, 4, 3), (128, 256, 8, 3), (256, 128, 8, 3)):
            out.append(GemmConfig(block_m=bm, block_n=bn, block_k=128, group_m=8, num_warps=warps,
                                  num_stages=stages))
        out.append(GemmConfig(block_m=128, block_n=128, block_k=128, group_m=8, num_warps=8, num_stages=3,
                              k_unroll=2))
    return _unique(out + wgmma_candidates(m))


def _unique(configs: list) -> list:
    seen, unique = set(), []
    for c in configs:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def tune_shape(n: int, k: int, ms: tuple[int, ...], deadline: float, log, previous: dict | None = None,
               search: str = "all") -> dict:
    import fp8_linear
    from fp8_linear.kernels.cublas import cublas_gemm
    from fp8_linear.kernels.triton_gemm import triton_gemm
    from fp8_linear.tuned import GemmConfig
    from fp8_linear.validation import check_gemm

    platform = fp8_linear.registry.detected_platform()
    options = fp8_linear.triton_options(platform)
    sms = platform.num_sms or 132
    configs, timings = {}, {}
    old = (previous or {}).get("configs", {})
    for m in ms:
        set_bytes = m * k + n * k
        sets = [make_operands(m, n, k, seed=7 * i + m) for i in range(rotation(set_bytes))]
        checked = [check_gemm(o.a, o.a_s_row, o.w, o.w_s, block_size=(128, 128), out_dtype=torch.bfloat16, bias=None,
                              granularity="block", check_values=False) for o in sets]
        as_col = [check_gemm(o.a, o.a_s_col, o.w, o.w_s, block_size=(128, 128), out_dtype=torch.bfloat16, bias=None,
                             granularity="block", check_values=False) for o in sets]
        expected = cublas_peer(sets[0], m)
        t_peer = bench_us([lambda o=o: cublas_peer(o, m) for o in sets])
        api = platform.scaled_mm
        t_cub = bench_us([lambda c=c: cublas_gemm(*c, api=api) for c in as_col])
        prior = GemmConfig.from_json(old[str(m)]) if str(m) in old else None
        best = None
        for i, cfg in enumerate(candidates(m, n, k, sms, prior, search)):
            if i > 1 and time.time() > deadline:  # past the budget: the previous and the heuristic's config only
                break
            log(f"    M={m} trying {cfg} ({time.time() - deadline:+.0f} s from the deadline)")
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
        # the dispatch table's two times: interleaved rounds of the chosen config and cuBLAS, medians
        # (one timing each scatters 2-9% at these sizes, enough to flip a close call)
        rounds = interleaved_rounds(
            {"cublas": [lambda c=c: cublas_gemm(*c, api=api) for c in as_col],
             "triton": [lambda c=c, cfg=best[1]: triton_gemm(*c, config=cfg, options=options) for c in checked]},
            ROUNDS)
        t_cub = statistics.median(rounds["cublas"])
        best = (statistics.median(rounds["triton"]), best[1])
        configs[str(m)] = best[1].to_json()
        timings[str(m)] = {"triton": round(best[0], 2), "cublas": round(t_cub, 2), "cublas_peer": round(t_peer, 2)}
        c = best[1]
        log(f"  N={n} K={k} M={m}: triton {best[0]:.1f} us ({c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} "
            f"w{c.num_warps} st{c.num_stages} u{c.k_unroll} {c.engine.value}) vs cublas {t_cub:.1f} "
            f"us (peer {t_peer:.1f}): x{t_peer / best[0]:.2f}")
        del sets, checked
        torch.cuda.empty_cache()
    return {"configs": configs, "timings_us": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="all")
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="after this many seconds only the previous and the heuristic config are timed")
    parser.add_argument("--out", default=str(CONFIG_DIR))
    parser.add_argument("--search", choices=("all", "large", "wgmma", "none"), default="all",
                        help="'large': search configs only at M >= 1024 (the previous config elsewhere); 'wgmma': the "
                             "previous config against the Gluon kernel's candidates; 'none': time the previous configs "
                             "only (refreshes the dispatch table)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("tuning needs a CUDA GPU")
    from fp8_linear.dispatch import dispatch_filename, table_json
    from fp8_linear.tuned import config_filename

    shapes = SHAPES if args.shapes == "all" else {s: SHAPES[s] for s in args.shapes.split(",")}
    ms = tuple(int(v) for v in args.ms.split(","))
    info = versions()
    start = time.time()
    deadline = start + args.budget_s
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    print(f"# tuning on {info['device']}, torch {info['torch']}, triton {info['triton']}", flush=True)
    dispatch_path = out_dir / dispatch_filename("block", (128, 128), info["device"])
    dispatch = json.loads(dispatch_path.read_text()) if dispatch_path.is_file() else {"shapes": {}}
    # Past the budget every (shape, M) still gets its previous (or the heuristic's) config and both
    # kernels' timings, so the dispatch table is always complete.
    for name, (n, k) in shapes.items():
        print(f"{name}: N={n} K={k}", flush=True)
        path = out_dir / config_filename("block", n, k, (128, 128), info["device"])
        previous = json.loads(path.read_text()) if path.is_file() else None
        if previous is None:  # the package's shipped file as the starting point
            shipped = CONFIG_DIR / path.name
            previous = json.loads(shipped.read_text()) if shipped.is_file() else None
        result = tune_shape(n, k, ms, deadline, lambda line: print(line, flush=True), previous, args.search)
        if not result["configs"]:
            continue
        configs = {**(previous or {}).get("configs", {}), **result["configs"]}
        timings = {**(previous or {}).get("timings_us", {}), **result["timings_us"]}
        order = sorted(configs, key=int)
        data = {"variant": "block", "n": n, "k": k, "block_size": [128, 128], "device": info["device"],
                "torch": info["torch"], "triton": info["triton"], "configs": {m: configs[m] for m in order},
                "timings_us": {m: timings[m] for m in sorted(timings, key=int)}}
        path.write_text(json.dumps(data, indent=1) + "\n")
        written.append(path)
        fresh = {int(m): {"triton": t["triton"], "cublas": t["cublas"]} for m, t in result["timings_us"].items()}
        kept = {int(m): t for m, t in dispatch["shapes"].get(f"{n},{k}", {}).get("timings_us", {}).items()}
        dispatch["shapes"][f"{n},{k}"] = table_json({**kept, **fresh})  # M values not tuned now keep their times
        print(f"  wrote {path}; dispatch {dispatch['shapes'][f'{n},{k}']['ranges']}", flush=True)
    dispatch.update({"variant": "block", "block_size": [128, 128], "device": info["device"], "torch": info["torch"],
                     "triton": info["triton"], "written_by": "benchmarks/fp8_linear/tune.py",
                     "timing": "CUDA-graph replay over operand copies > 2x L2 (benchmarks/fp8_linear/_common.py), "
                               f"medians of {ROUNDS} interleaved rounds; cublas = the library's cuBLAS path (M padded "
                               "inside when M % 4 != 0), triton = the tuned config; Triton wins a row only when faster "
                               "by more than fp8_linear.dispatch.TIE_MARGIN"})
    dispatch["shapes"] = dict(sorted(dispatch["shapes"].items()))
    dispatch_path.write_text(json.dumps({k: dispatch[k] for k in sorted(dispatch, key=lambda x: x == "shapes")},
                                        indent=1) + "\n")
    written.append(dispatch_path)
    if os.environ.get("OUT"):
        with tarfile.open(Path(os.environ["OUT"]) / "tuned.tar", "w") as tar:
            for p in written:
                tar.add(p, arcname=p.name)
    print(f"# tuned in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
