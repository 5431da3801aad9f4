"""``fp8-linear explain``: which GEMM kernel runs a shape on a platform, and why not the others.

    fp8-linear explain --platform cuda:9.0 --n 7168 --k 2048 --m 1,64,4096
    fp8-linear explain --platform all --n 576 --k 7168 --granularity block
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from ._generated_variants import VARIANTS, Granularity
from .errors import KernelSelectionError
from .platform import LinearPlatform
from .problem import GemmProblem
from .quant import describe_backend
from .registry import detected_platform, select_kernel
from .variant_types import ScaleDtype

PLATFORMS = ("cuda:9.0", "cuda:8.9", "cuda:10.0", "cuda:8.0", "rocm:gfx942", "rocm:gfx950", "xpu", "cpu")
_OUT = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="fp8-linear", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="kernel choice and rejections for a GEMM shape")
    ex.add_argument("--platform", default="detected", help="e.g. cuda:9.0, rocm:gfx942, xpu, cpu, 'all', 'detected'")
    ex.add_argument("--n", type=int, required=True, help="output features")
    ex.add_argument("--k", type=int, required=True, help="input features")
    ex.add_argument("--m", default="1,64,4096", help="comma-separated token counts")
    ex.add_argument("--granularity", default="block", choices=[g.value for g in Granularity])
    ex.add_argument("--block", default=None, help="bn,bk (default: the granularity's)")
    ex.add_argument("--out-dtype", default="bf16", choices=sorted(_OUT))
    ex.add_argument("--kernel", default=None, help="force a kernel by name")
    args = parser.parse_args(argv)

    granularity = Granularity(args.granularity)
    variant = VARIANTS[granularity]
    block = tuple(int(v) for v in args.block.split(",")) if args.block else variant.block_size
    if args.platform == "all":
        platforms = [LinearPlatform.parse(p) for p in PLATFORMS]
    elif args.platform == "detected":
        platforms = [detected_platform()]
    else:
        platforms = [LinearPlatform.parse(args.platform)]
    status = 0
    for platform in platforms:
        out(describe_backend(platform))
        for m in (int(v) for v in args.m.split(",")):
            problem = GemmProblem(
                m=m, n=args.n, k=args.k, granularity=granularity, block_size=block,  # type: ignore[arg-type]
                fp8_dtype=platform.fp8_dtype,
                scale_dtype=ScaleDtype.E8M0 if variant.scale_dtype is ScaleDtype.E8M0 else ScaleDtype.FLOAT32,
                out_dtype=_OUT[args.out_dtype], has_bias=False,
            )
            try:
                out(select_kernel(problem, platform=platform, force=args.kernel).explain())
            except KernelSelectionError as exc:
                out(f"{platform}: {problem}: {exc}")
                status = 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
