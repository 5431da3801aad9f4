"""Tune the fused-MoE kernel launch configs on this GPU and write them where the kernels look.

For one model shape and scheme, time each candidate config of each GEMM (GEMM1: N = 2I, K = H;
GEMM2: N = H, K = I) at each token count M on random routing, keep the fastest, and write
``configs/E<E>_N<N>_K<K>_<variant>_<device>.json`` into the triton_experts package (or --out).

    python benchmarks/triton_experts/tune.py --model qwen3 --scheme fp8_block --m 1,32,512,2048
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import MODELS, make_weights, routing

from moe_oracle import MoEConfig, Platform, make_kernel
from triton_experts.align import align_by_expert
from triton_experts.kernels._generated_moe import VARIANTS
from triton_experts.kernels.launch import grouped_gemm
from triton_experts.tuning import CONFIG_DIR, LaunchConfig, file_name


def candidates(k_granule: int, group: int) -> list[LaunchConfig]:
    out = []
    for bm, bn, bk, warps, stages in itertools.product((16, 32, 64, 128), (64, 128), (32, 64, 128), (4, 8), (3, 4)):
        if (k_granule and k_granule % bk) or group % bk or (bm == 128 and warps == 4) or (bm <= 32 and warps == 8):
            continue
        out.append(LaunchConfig(bm, bn, bk, 1 if bm <= 16 else 8, warps, stages))
    return out


def main() -> None:
    import triton.testing

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--scheme", required=True, choices=["bf16", "fp8_block", "int4_w4a16"])
    ap.add_argument("--m", default="1,8,32,128,512,2048,8192")
    ap.add_argument("--out", type=Path, default=CONFIG_DIR)
    args = ap.parse_args()
    d = MODELS[args.model]
    e, k, h, i = d["e"], d["k"], d["h"], d["i"]
    config = MoEConfig(num_experts=e, top_k=k, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=make_weights(args.scheme, e, h, i), config=config, platform=Platform.detect(),
                         force="triton")
    ex = kernel.experts
    variant = ex.variant_name
    meta = VARIANTS[variant]
    device = torch.cuda.get_device_name()
    gemms = {"w13": (2 * i, h, ex.w13, ex.group13), "w2": (h, i, ex.w2, ex.group2)}
    tables: dict[str, dict[str, dict]] = {"w13": {}, "w2": {}}
    for m in (int(x) for x in args.m.split(",")):
        _, ids = routing(m, e, k, seed=m)
        for name, (n, kk, w, group) in gemms.items():
            a_rows = m if name == "w13" else m * k
            a_dim = kk
            a = torch.randn(a_rows, a_dim, device="cuda", dtype=torch.bfloat16)
            a_scale = None
            if meta["a"] == "fp8_group":
                a_scale = torch.rand(a_rows, a_dim // 128, device="cuda") * 0.01 + 0.001
                a = a.to(torch.float8_e4m3fn)
            best = None
            for cfg in candidates(meta["k_granule"], group):
                al = align_by_expert(ids, num_local_experts=e, block_m=cfg.BLOCK_M)
                out = torch.zeros(m * k, n, device="cuda", dtype=torch.float32)
                top_k = k if name == "w13" else 1

                def fn():
                    grouped_gemm(variant=variant, a=a, a_scale=a_scale, weight=w["weight"], scale=w.get("scale"),
                                 zero=w.get("zero"), bias=None, out=out, topk_weights=None, alignment=al,
                                 top_k=top_k, n=n, k=kk, group_k=group, config=cfg)
                try:
                    fn()
                    ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
                except Exception as exc:  # a config the compiler rejects (shared memory) is skipped
                    print(f"  skip {cfg}: {type(exc).__name__}", flush=True)
                    continue
                if best is None or ms < best[0]:
                    best = (ms, cfg)
            assert best is not None
            tables[name][str(m)] = best[1].as_dict()
            print(f"{args.model} {args.scheme} {name} M={m}: {best[0] * 1e3:.1f} us with {best[1]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (n, kk, _, _) in gemms.items():
        path = args.out / file_name(e=e, n=n, k=kk, variant=variant, device=device)
        path.write_text(json.dumps(tables[name], indent=1, sort_keys=True))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
