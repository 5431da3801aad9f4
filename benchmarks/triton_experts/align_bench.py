"""Row alignment by expert on the GPU: the one-program Triton launch against the torch sort, by row count.

Rows = M * top_k (token, slot) pairs routed uniformly over E experts, BLOCK_M as the experts would
pick it; each form replayed from a CUDA graph (device time plus launch gaps, as a graphed layer
sees it). Prints both times, their ratio and, per E, the largest row count where the Triton launch
is still faster: what triton_experts.align.ONE_LAUNCH_MAX_ROWS should be on this device.

    python benchmarks/triton_experts/align_bench.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

ROWS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536)
EXPERTS = (8, 128, 256)


def graph_us(fn) -> float:
    import triton.testing

    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3


def main() -> None:
    from triton_experts.align import align_by_expert, align_by_expert_triton
    from triton_experts.tuning import heuristic

    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows_out = []
    for e in EXPERTS:
        last_faster = 0
        for rows in ROWS:
            top_k = 8 if e > 8 else 2
            m = max(1, rows // top_k)
            ids = torch.stack([torch.randperm(e, device="cuda")[:top_k] for _ in range(m)]).to(torch.int32)
            block_m = heuristic(m=m, n=4096, k=4096, k_granule=0, num_experts=e, top_k=top_k).BLOCK_M
            t_triton = graph_us(lambda: align_by_expert_triton(ids, num_local_experts=e, num_experts=e,
                                                               block_m=block_m))
            t_torch = graph_us(lambda: align_by_expert(ids, num_local_experts=e, block_m=block_m, num_experts=e))
            if t_triton <= t_torch:
                last_faster = ids.numel()
            rows_out.append(dict(e=e, rows=ids.numel(), block_m=block_m, triton_us=t_triton, torch_us=t_torch))
            print(f"E={e:4d} rows={ids.numel():6d} block_m={block_m:4d} | one-launch triton {t_triton:8.1f} us | "
                  f"torch sort {t_torch:8.1f} us | triton / torch {t_triton / t_torch:5.2f}", flush=True)
        print(f"E={e}: the Triton launch is faster up to {last_faster} rows", flush=True)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "align_bench.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
