"""Per-kernel device time of one MoE layer call (ours, through moe-oracle) and of the grouped-GEMM
peer that benchmarks/triton_experts/run.py compares it with, from torch.profiler.

For each (model, scheme, M): the kernels our call launches with their mean device time per call,
the same for the peer, and each side's sum. It shows where a gap to the peer or to the weight floor
comes from (a GEMM, the alignment, the activation, the top-k reduce, the validation).

    python benchmarks/triton_experts/profile_layer.py --cases qwen3:bf16:8192,qwen3:fp8_block:8
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import MODELS, make_weights, peer_inputs, routing

ITERS = 20


def kernel_times(fn, iters: int = ITERS) -> dict[str, float]:
    """Mean device microseconds per call of every kernel ``fn`` launches (name -> us)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            out[ev.name[:90]] += ev.device_time / iters
    return dict(out)


def show(title: str, times: dict[str, float]) -> None:
    print(f"  {title}: {sum(times.values()):8.1f} us of kernels per call", flush=True)
    for name, us in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"    {us:8.1f} us  {name}", flush=True)


def main() -> None:
    from moe_oracle import MoEConfig, Platform, make_kernel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="qwen3:bf16:8192,qwen3:fp8_block:8")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for case in args.cases.split(","):
        model, scheme, m = case.split(":")
        m = int(m)
        d = MODELS[model]
        e, k, h, i = d["e"], d["k"], d["h"], d["i"]
        config = MoEConfig(num_experts=e, top_k=k, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
        weights = make_weights(scheme, e, h, i)
        kernel = make_kernel(weights=weights, config=config, platform=Platform.detect(), force="triton")
        x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
        tw, ids = routing(m, e, k, seed=m)
        print(f"{model} {scheme} M={m}", flush=True)
        show("ours", kernel_times(lambda kernel=kernel: kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)))
        print(f"  configs used: {kernel.experts.last_configs}", flush=True)
        if scheme == "bf16":
            w13 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) * 0.02
            w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) * 0.02
            a, offs = peer_inputs(x, ids, e)

            def peer():
                g1 = torch._grouped_mm(a, w13.transpose(-2, -1), offs=offs)
                act = torch.nn.functional.silu(g1[:, :i]) * g1[:, i:]
                return torch._grouped_mm(act, w2.transpose(-2, -1), offs=offs)
            show("peer torch._grouped_mm", kernel_times(peer))
        del kernel, weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
