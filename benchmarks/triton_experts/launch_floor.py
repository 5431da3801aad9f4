"""What a chain of dependent kernels costs in a CUDA graph replay, before any of them does work.

Replays graphs of 1..8 back-to-back launches of a one-element Triton kernel (each reads what the
previous one wrote, like the layer's steps), and graphs of one read of the Qwen3-30B-A3B M=1 expert
bytes followed by such kernels; L2 flushed before each replay, as run.py times the layer. The read
is a plain strided loop, not a bandwidth-optimal copy: it is there for the increments the tiny
kernels add after real work. Diagnostic for issue #6: the decode layer runs 4-6 kernels, and this
is the part of its time no kernel can win back.

    python3 benchmarks/triton_experts/launch_floor.py
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing


@triton.jit
def _step(src, dst):
    tl.store(dst, tl.load(src) + 1.0)


@triton.jit
def _stream(src, dst, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.int32)
    for i in range(pid * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = i + tl.arange(0, BLOCK)
        acc ^= tl.load(src + offs, mask=offs < n, other=0)
    tl.store(dst + pid * BLOCK + tl.arange(0, BLOCK), acc)


def _replay_us(fn) -> float:
    """Median graph replay of ``fn``, L2 flushed before each replay (as run.py times the layer)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median") * 1e3


def main() -> None:
    buf = torch.zeros(16, device="cuda")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    base = None
    for count in range(1, 9):
        def chain(count=count):
            for i in range(count):
                _step[(1,)](buf[i:], buf[i + 1:])
        t = _replay_us(chain)
        base = base or t
        print(f"graph of {count} dependent tiny kernels: {t:6.2f} us  ({t / count:5.2f} us per kernel; "
              f"{t / base:4.2f}x one kernel)")
    nbytes = 19_000_000  # Qwen3-30B-A3B int4 experts hit at M=1: 8 x (w13 + w2), scales included
    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.int32)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dst = torch.empty(sms * 4 * 1024, device="cuda", dtype=torch.int32)
    for ctas in (1, 2, 4):
        t = _replay_us(lambda: _stream[(sms * ctas,)](src, dst, src.numel(), BLOCK=1024))
        print(f"graph of one {nbytes / 1e6:.0f} MB read ({ctas} CTA/SM, L2 flushed): "
              f"{t:6.2f} us = {nbytes / t / 1e6:5.2f} TB/s")
    for count in (2, 3, 5):
        def chain_read(count=count):
            _stream[(sms * 2,)](src, dst, src.numel(), BLOCK=1024)
            for i in range(count - 1):
                _step[(1,)](buf[i:], buf[i + 1:])
        t = _replay_us(chain_read)
        print(f"graph of the read + {count - 1} tiny kernels: {t:6.2f} us")


if __name__ == "__main__":
    main()
