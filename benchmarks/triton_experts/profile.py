"""Where the time of one fused-MoE call goes (torch.profiler), for a few shapes. Diagnostic only."""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from run import MODELS, make_weights, routing

from moe_oracle import MoEConfig, Platform, make_kernel


def main() -> None:
    for model, scheme, m in (("qwen3", "bf16", 1), ("qwen3", "fp8_block", 1), ("qwen3", "bf16", 2048)):
        d = MODELS[model]
        w = make_weights(scheme, d["e"], d["h"], d["i"])
        cfg = MoEConfig(num_experts=d["e"], top_k=d["k"], hidden_size=d["h"], intermediate_size=d["i"],
                        in_dtype=torch.bfloat16)
        kernel = make_kernel(weights=w, config=cfg, platform=Platform.detect(), force="triton")
        x = torch.randn(m, d["h"], device="cuda", dtype=torch.bfloat16)
        tw, ids = routing(m, d["e"], d["k"], seed=1)
        for _ in range(5):
            kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
            torch.cuda.synchronize()
        print(f"==== {model} {scheme} M={m}: configs {kernel.experts.last_configs}")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=48))
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=48))


if __name__ == "__main__":
    main()
