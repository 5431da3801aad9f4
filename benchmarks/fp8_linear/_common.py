"""Shared pieces of the fp8-linear benchmark and tuner: imports, shapes, operands, timing.

Timing: every measured call is captured in one CUDA graph about 1 ms long (at least once per
operand copy, at most 64 times), cycling through copies of the operands (enough copies that they
do not fit in L2 together); the graph replay is timed with ``triton.testing.do_bench`` (median);
time per call = replay / calls.
So each number is kernel time without Python or launch overhead, with cold-ish caches, and every
peer in a row is measured the same way in the same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
L2_BYTES = 50 << 20
DEVICE = "cuda"  # a dry run of the scripts' logic may set "cpu" (with TRITON_INTERPRET=1 and bench_us replaced)

try:  # the packages, installed or from the checkout
    import fp8_linear  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    for src in sorted((ROOT / "packages").glob("*/src")):
        sys.path.insert(0, str(src))

import torch  # noqa: E402

# (N, K): DeepSeek-V3's dense linears and Qwen3-30B-A3B's attention projections (qkv fused, o).
SHAPES: dict[str, tuple[int, int]] = {
    "dsv3.q_b_proj": (24576, 1536),
    "dsv3.kv_b_proj": (32768, 512),
    "dsv3.o_proj": (7168, 16384),
    "dsv3.q_a+kv_a": (2112, 7168),
    "dsv3.shared_down": (7168, 2048),
    "dsv3.dense_up": (4096, 7168),
    "dsv3.kv_a_proj": (576, 7168),
    "qwen3.qkv_proj": (5120, 2048),
    "qwen3.o_proj": (2048, 4096),
}
MS: tuple[int, ...] = (1, 16, 64, 128, 512, 1024, 2048, 4096, 8192)


def versions() -> dict[str, str]:
    import triton

    return {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "sms": str(torch.cuda.get_device_properties(0).multi_processor_count),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
    }


def rand_fp8(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random float8_e4m3fn on the GPU (normal * 40, no NaN): never zeros."""
    return (torch.randn(shape, device=DEVICE, generator=gen) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)


@dataclass
class Operands:
    """One operand set, laid out as the library produces it: ``a`` and ``a_s_col`` are what
    ``Fp8BlockLinear``'s quantization returns (views of buffers with ``round_up(M, 4)`` rows, so
    the library's cuBLAS path reads them without a padding copy, as it does in a model)."""

    a: torch.Tensor  # [M, K] fp8: the first M rows of cublas[0]
    a_s_row: torch.Tensor  # [M, K/128] float32, row-major
    a_s_col: torch.Tensor  # [M, K/128] float32, TMA-aligned column-major (strides (1, round_up(M, 4)))
    w: torch.Tensor  # [N, K] fp8
    w_s: torch.Tensor  # [N/128, K/128] float32
    cublas: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # padded a, scale_a, scale_b for the peer


def make_operands(m: int, n: int, k: int, seed: int) -> Operands:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    a = rand_fp8((m, k), gen)
    w = rand_fp8((n, k), gen)
    kb, nb = k // 128, -(-n // 128)
    a_s = (torch.rand((m, kb), device=DEVICE, generator=gen) + 1) * 2.0**-10
    w_s = (torch.rand((nb, kb), device=DEVICE, generator=gen) + 1) * 2.0**-10
    rows = -(-m // 4) * 4
    # padding as per_token_group_quant writes it: zero rows, the zero group's scale eps / 448
    a_pad = torch.zeros((rows, k), dtype=a.dtype, device=DEVICE)
    a_pad[:m] = a
    sa = torch.full((kb, rows), float(torch.tensor(1e-10) / 448.0), device=DEVICE)
    sa[:, :m] = a_s.t()
    kb4 = -(-kb // 4) * 4
    sb = torch.ones((nb, kb4), device=DEVICE)
    sb[:, :kb] = w_s
    return Operands(a_pad[:m], a_s, sa[:, :m].t(), w, w_s, (a_pad, sa.t(), sb.t()))


def cublas_peer(ops: Operands, m: int) -> torch.Tensor:
    """torch's blockwise cuBLASLt on operands prepared in its layout (M padded to 4 beforehand):
    the v1 torch._scaled_mm where it is exact (K/128 % 4 == 0), else the v2 F.scaled_mm."""
    a_pad, sa, sb = ops.cublas
    kb = ops.w_s.shape[1]
    if kb % 4 == 0:
        out = torch._scaled_mm(a_pad, ops.w.t(), scale_a=sa, scale_b=ops.w_s.t(), out_dtype=torch.bfloat16)
    else:
        f = torch.nn.functional
        out = f.scaled_mm(a_pad, ops.w.t(), sa, f.ScalingType.BlockWise1x128, sb, f.ScalingType.BlockWise128x128,
                          output_dtype=torch.bfloat16)
    return out[:m]


def rotation(set_bytes: int, cap: int = 32) -> int:
    """Copies of the operands so that all of them together exceed twice the L2."""
    return max(1, min(cap, math.ceil(2 * L2_BYTES / max(set_bytes, 1))))


def bench_us(calls: list[Callable[[], object]], *, replay_us: float = 1000.0, warmup_ms: int = 10,
             rep_ms: int = 40) -> float:
    """Median microseconds per call of ``calls`` (one per operand copy), replayed from a CUDA graph
    holding about ``replay_us`` of work (at least one call per copy, at most 64 calls)."""
    import triton

    for fn in calls:  # compile, warm up, and estimate
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for fn in calls:
        fn()
    end.record()
    torch.cuda.synchronize()
    per_call = max(start.elapsed_time(end) * 1000.0 / len(calls), 1.0)
    n = max(len(calls), min(64, round(replay_us / per_call)))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in calls:
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n):
            calls[i % len(calls)]()
    ms = triton.testing.do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    del graph
    return ms * 1000.0 / n


def interleaved_rounds(columns: dict[str, list[Callable[[], object]]], rounds: int, *, rep_ms: int = 40
                       ) -> dict[str, list[float]]:
    """:func:`bench_us` of every column, ``rounds`` times in turn (a, b, c, a, b, c, ...), so that slow
    drifts of the clock hit all columns alike; the caller takes the medians."""
    times: dict[str, list[float]] = {name: [] for name in columns}
    for _ in range(rounds):
        for name, calls in columns.items():
            times[name].append(bench_us(calls, rep_ms=rep_ms))
    return times


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.float() - y.float()).norm() / y.float().norm().clamp(min=1e-30))


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    copy_to_out(path)
    return path


def copy_to_out(path: Path) -> None:
    """Copy a written file under $OUT (the device tool brings that folder back), same relative path."""
    out = os.environ.get("OUT")
    if out:
        path = path.resolve()
        target = Path(out) / path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(out) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())


def device_slug() -> str:
    return torch.cuda.get_device_name(0).replace(" ", "_").replace("/", "_")
