"""Run one int4 GEMM of a benchmark model (shipped config, or overrides) three times, for Nsight Compute.

    ncu --clock-control none -k regex:moe_gemm --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats \\
        python3 benchmarks/triton_experts/ncu_gemm.py deepseek 8 w13 ['{"BLOCK_N": 64}']

(the first two launches compile and warm up). Diagnostic for issue #6; see int4_decode_limits.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import MODELS, routing
from tune import _setup, _time

from triton_experts.kernels._generated_moe import VARIANTS
from triton_experts.tuning import LaunchConfig, get_config


def main() -> None:
    model, m, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    d = MODELS[model]
    e, k = d["e"], d["k"]
    ex, gemms = _setup(model, "int4_w4a16")
    _, ids = routing(m, e, k, seed=m)
    n, kk, _, _ = gemms[name]
    shipped, _ = get_config(m=m, n=n, k=kk, variant=ex.variant_name, k_granule=VARIANTS[ex.variant_name]["k_granule"],
                            num_experts=e, top_k=k, device=torch.cuda.get_device_name())
    cfg = LaunchConfig.from_dict({**shipped.as_dict(), **(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})})
    print(model, m, name, cfg, flush=True)
    for _ in range(3):
        _time(ex, name, gemms[name], "int4_w4a16", ids, k, cfg, rep=0)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
