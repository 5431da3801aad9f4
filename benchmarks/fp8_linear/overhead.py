"""Host-side cost of ``block_scaled_mm`` beyond the kernel, on the CPU (no GPU needed).

The kernels' ``run`` is replaced by a stub that returns a preallocated output, so what is timed
is validation, kernel selection, config lookup and operand flattening: the first call of a
signature (full validation and selection) against repeated calls (the plan cache), for the
platforms the registry would pick cuBLAS and Triton on (an H100 by name, so the shipped dispatch
table and tuned configs are read). Scale-value checks (``check_values``, a device sync on GPUs)
are timed separately.

    python benchmarks/fp8_linear/overhead.py
"""

from __future__ import annotations

import time

import _common  # noqa: F401  (puts the packages on sys.path when they are not installed)
import torch

import fp8_linear
from fp8_linear import LinearPlatform, gemm, registry


def per_call_us(fn, iters: int = 3000) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters * 1e6


def main() -> None:
    h100 = LinearPlatform.parse("cuda:9.0", triton=True, interpret=False, device_name="NVIDIA H100 80GB HBM3")
    outs: dict[tuple[int, int], torch.Tensor] = {}

    def stub(self, ops, problem, choice, *, w_s_padded=None):
        return outs[(problem.m, problem.n)]

    for cls in (registry.CublasKernel, registry.TritonKernel):
        cls.run = stub  # type: ignore[method-assign]
    print(f"{'M':>5} {'N':>6} {'K':>6} {'kernel':>7} | {'first call us':>13} {'cached us':>9} "
          f"{'+check_values us':>16}")
    for m, n, k in ((1, 7168, 2048), (16, 2112, 7168), (4096, 7168, 2048), (4096, 576, 7168)):
        a = torch.randn(m, k).to(torch.float8_e4m3fn)
        w = torch.randn(n, k).to(torch.float8_e4m3fn)
        a_s = torch.rand(m, k // 128) + 1
        w_s = torch.rand(n // 128 + (n % 128 > 0), k // 128) + 1
        outs[(m, n)] = torch.empty(m, n, dtype=torch.bfloat16)

        def call(check: bool = False) -> torch.Tensor:
            return fp8_linear.block_scaled_mm(a, a_s, w, w_s, platform=h100, check_values=check)

        def first() -> torch.Tensor:
            gemm.clear_caches()
            return call()

        kernel = fp8_linear.select_kernel(fp8_linear.validation.check_gemm(
            a, a_s, w, w_s, block_size=(128, 128), out_dtype=torch.bfloat16, bias=None, granularity=None,
            check_values=False)[1], platform=h100).kernel
        t_first = per_call_us(first, 300)
        gemm.clear_caches()
        t_hit = per_call_us(call)
        t_check = per_call_us(lambda: call(True), 1000)
        print(f"{m:>5} {n:>6} {k:>6} {kernel:>7} | {t_first:13.1f} {t_hit:9.1f} {t_check:16.1f}")
    print(gemm.plan_cache_stats())


if __name__ == "__main__":
    main()
