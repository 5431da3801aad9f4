"""Diagnostic: one DeepSeek-V3 int4 GEMM config each for decode (M=8) and prefill (M=2048), with the
packed weights as K tiles (what the triton layout stores) and as the same bytes in rows; prints time,
the cp.async copy sizes and global load widths of the compiled PTX, registers and spills.

    python benchmarks/triton_experts/tiles_diag.py   (on a GPU)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).parent))
from run import routing
from tune import _setup

from triton_experts.align import align_by_expert_triton
from triton_experts.kernels.launch import plan_gemm, run_gemm
from triton_experts.layout import k_rows
from triton_experts.tuning import LaunchConfig

CP_ASYNC = re.compile(r"cp\.async\.c[ag]\.shared\.global(?:\.L2::\d+B)? \[[^\]]+\], \[[^\]]+\], (0x[0-9a-f]+|\d+)")


def main() -> None:
    ex, gemms = _setup("deepseek", "int4_w4a16")
    e, k = 256, 8
    for m in (8, 2048):
        _, ids = routing(m, e, k, seed=m)
        cfg = LaunchConfig(16, 256, 128, 1, 4, 3) if m == 8 else LaunchConfig(64, 128, 64, 8, 4, 3)
        al = align_by_expert_triton(ids, num_local_experts=e, num_experts=e, block_m=cfg.BLOCK_M)
        for name, (n, kk, w, group) in gemms.items():
            a = torch.randn(m if name == "w13" else m * k, kk, device="cuda", dtype=torch.bfloat16)
            for layout, weight in (("tiles", w["weight"]), ("rows", k_rows(w["weight"]).contiguous())):
                plan = plan_gemm(variant=ex.variant_name, weight=weight, scale=w.get("scale"), zero=w.get("zero"),
                                 bias=None, top_k=k if name == "w13" else 1, n=n, k=kk, group_k=group, config=cfg)
                out = torch.zeros(m * k, n, device="cuda", dtype=torch.bfloat16)

                def fn(plan=plan, a=a, out=out):
                    return run_gemm(plan, a=a, a_scale=None, out=out, topk_weights=None, alignment=al)
                handle = fn()
                torch.cuda.synchronize()
                t = triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e3
                ptx = handle.asm["ptx"]
                sizes = CP_ASYNC.findall(ptx)
                loads = sorted(set(re.findall(r"ld\.global[\.\w]*", ptx)))
                print(f"M={m} {name} {layout}: {t:8.1f} us  weight {tuple(weight.shape)} cp.async sizes "
                      f"{sorted(set(sizes))} n={len(sizes)} {loads} regs {handle.n_regs} spills {handle.n_spills}",
                      flush=True)


if __name__ == "__main__":
    main()
