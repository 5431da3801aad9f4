"""Which GPU kernels the automatic path launches beside the cuBLAS peer, for the rows where the
benchmark found it slower (torch.profiler, CUDA activity only). Diagnostic only.

    python benchmarks/fp8_linear/profile_auto.py [--rows dsv3.kv_b_proj:128,...]
"""

from __future__ import annotations

import argparse

import torch
from _common import SHAPES, cublas_peer, make_operands
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="dsv3.kv_b_proj:128,dsv3.shared_down:1,dsv3.shared_down:512,qwen3.qkv_proj:128")
    args = ap.parse_args()
    import fp8_linear
    from fp8_linear import GemmProblem, Granularity, select_kernel
    from fp8_linear.variant_types import ScaleDtype

    for spec in args.rows.split(","):
        name, m = spec.split(":")
        m = int(m)
        n, k = SHAPES[name]
        o = make_operands(m, n, k, seed=3)
        problem = GemmProblem(m=m, n=n, k=k, granularity=Granularity.BLOCK, block_size=(128, 128),
                              fp8_dtype=torch.float8_e4m3fn, scale_dtype=ScaleDtype.FLOAT32,
                              out_dtype=torch.bfloat16, has_bias=False)
        choice = select_kernel(problem)
        s = o.a_s_col if choice.implementation.column_major_scales else o.a_s_row
        calls = {"peer": lambda: cublas_peer(o, m),
                 "auto": lambda: fp8_linear.block_scaled_mm(o.a, s, o.w, o.w_s, check_values=False),
                 "forced cublas": lambda: fp8_linear.block_scaled_mm(o.a, o.a_s_col, o.w, o.w_s, kernel="cublas",
                                                                     check_values=False)}
        print(f"==== {name} M={m} N={n} K={k}: auto = {choice.kernel} ({choice.why}); a {tuple(o.a.shape)} "
              f"stride {o.a.stride()} storage rows {o.a.untyped_storage().nbytes() // max(1, o.a.stride(0))}; "
              f"a_s_col {tuple(o.a_s_col.shape)} stride {o.a_s_col.stride()}", flush=True)
        for label, fn in calls.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    fn()
                torch.cuda.synchronize()
            print(f"  -- {label}")
            for ev in prof.key_averages():
                if ev.device_time_total > 0:
                    print(f"     {ev.count:4d} x {ev.device_time_total / max(1, ev.count):8.2f} us  {ev.key[:110]}")


if __name__ == "__main__":
    main()
