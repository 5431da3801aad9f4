"""What each decode fusion of the Triton direct-row path costs or saves, one at a time (issue #6).

For one model and scheme at M = 1 (tuned direct-row configs), times the call with every subset of
the fusions (GEMM1 quantizing its input, GEMM2 applying the activation and quantizing, GEMM2 summing
the top-k slots), each from a CUDA graph (one call, and per layer in a graph of 8 calls on disjoint
experts, as run.py) and by kernel (torch profiler, launches in order), and the slot sum compiled
with and without its id assertion.

    python3 benchmarks/triton_experts/fused_decode_probe.py --model qwen3 --scheme fp8_block
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).parent))
from run import MODELS, capture, layer_chain_ms, make_weights, routing  # noqa: E402


def kernels_in_order(fn, iters: int = 20) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    evs = [ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    per = len(evs) // iters
    out = []
    for j in range(per):
        same = evs[j::per]
        out.append((same[0].name[:40], sum(ev.device_time for ev in same) / len(same)))
    return out


def main() -> None:
    from moe_oracle import MoEConfig, Platform, make_kernel
    from triton_experts.experts import TritonExperts
    from triton_experts.kernels import launch
    from triton_experts.kernels.launch import APrologue

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3")
    ap.add_argument("--scheme", default="fp8_block")
    args = ap.parse_args()
    d = MODELS[args.model]
    e, k, h, i = d["e"], d["k"], d["h"], d["i"]
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    config = MoEConfig(num_experts=e, top_k=k, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=make_weights(args.scheme, e, h, i), config=config, platform=Platform.detect(),
                         force="triton")
    x = torch.randn(1, h, device="cuda", dtype=torch.bfloat16)
    tw, ids = routing(1, e, k, seed=1)
    full = TritonExperts._fusions
    variants = {
        "none": lambda *a: (APrologue.NONE, APrologue.NONE, 0),
        "quant": lambda s, c1, c2, meta, top_k: (full(s, c1, c2, meta, top_k)[0], APrologue.NONE, 0),
        "act": lambda s, c1, c2, meta, top_k: (APrologue.NONE, full(s, c1, c2, meta, top_k)[1], 0),
        "sum": lambda s, c1, c2, meta, top_k: (APrologue.NONE, APrologue.NONE, top_k),
        "all": full,
    }
    ref = None
    for name, fusions in variants.items():
        for assertion in (True, False) if name in ("sum", "all") else (True,):
            launch.SUM_SLOTS_COMPILE = {"debug": True, "sanitize_overflow": False} if assertion else {}
            TritonExperts._fusions = fusions
            kernel.experts._plans.clear()
            fn = lambda: kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)  # noqa: E731
            out = fn().float()
            ref = out if ref is None else ref
            err = float((out - ref).norm() / ref.norm())
            graph = capture(fn)
            one = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median") * 1e3
            chain = layer_chain_ms(fn_for=lambda ids_j: kernel(hidden_states=x, topk_weights=tw, topk_ids=ids_j),
                                   e=e, k=k)
            per_layer = chain[0] * 1e3 if chain else float("nan")
            ks = kernels_in_order(fn)
            label = f"{name}{'' if assertion else ' (no assert)'}"
            print(f"{label:18s} fusions {kernel.experts.last_fusions[0].name}/{kernel.experts.last_fusions[1].name}/"
                  f"{kernel.experts.last_fusions[2]}  graph {one:6.1f} us  per layer {per_layer:6.1f} us  "
                  f"kernels {sum(t for _, t in ks):5.1f} us: " + ", ".join(f"{n.split('_')[-1] if 'moe_gemm' in n else n[:14]} {t:.1f}" for n, t in ks)
                  + f"  rel vs none {err:.1e}", flush=True)
    TritonExperts._fusions = full


if __name__ == "__main__":
    main()
