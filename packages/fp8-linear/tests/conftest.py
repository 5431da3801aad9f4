"""Fixtures of fp8-linear's tests.

* ``triton``-marked tests need triton, and on a machine without CUDA the interpreter
  (TRITON_INTERPRET=1, the ``triton-interpret`` configuration); otherwise they skip.
* ``cuda``-marked tests need a CUDA GPU.
* ``ref``: the independent float64 reference. It expands every scale to its operand with explicit
  index arithmetic (``n // bn``, ``k // bk``), decodes E8M0 as ``2.0 ** (byte - 127)`` in float64
  and multiplies in float64; it shares no code with the package.
"""

from __future__ import annotations

import os
import types

import pytest
import torch

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if item.get_closest_marker("triton") is not None:
        pytest.importorskip("triton")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1 (the triton-interpret configuration)")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def rand_fp8(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Random FP8 values (normal * 40, no NaN), fresh each call."""
    x = torch.randn(shape, generator=gen) * 40
    top = 224.0 if dtype == torch.float8_e4m3fnuz else 448.0
    return x.clamp(-top, top).to(dtype)


def rand_scales(shape: tuple[int, ...], gen: torch.Generator, *, e8m0: bool = False) -> torch.Tensor:
    """Positive scales: float32 in [2**-12, 2**-9) or E8M0 bytes 113..120 (2**-14 .. 2**-7)."""
    if e8m0:
        return torch.randint(113, 121, shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    return (torch.rand(shape, generator=gen) + 1) * 2.0**-12 * torch.randint(1, 5, shape, generator=gen)


def scale64(s: torch.Tensor) -> torch.Tensor:
    if s.dtype == torch.uint8 or s.dtype == getattr(torch, "float8_e8m0fnu", None):
        b = s.view(torch.uint8).to(torch.float64)
        return torch.pow(torch.full_like(b, 2.0), b - 127)
    return s.to(torch.float64)


def expand(s: torch.Tensor, rows: int, cols: int, row_group: int, col_group: int) -> torch.Tensor:
    """s[r // row_group, c // col_group] as a float64 [rows, cols] (tensor scales: broadcast)."""
    s64 = scale64(s).reshape(-1) if s.numel() == 1 else scale64(s)
    if s.numel() == 1:
        return s64.expand(rows, cols)
    r = torch.arange(rows) // row_group
    c = torch.arange(cols) // col_group
    return s64[r][:, c]


def ref(a, a_s, w, w_s, *, granularity: str, block=(128, 128), bias=None):
    """float64 (out, |A| @ |W|^T) of the dequantized operands; ``a`` [M, K], 2-D scales."""
    a, a_s, w, w_s = (t.cpu() for t in (a, a_s, w, w_s))
    m, k = a.shape
    n = w.shape[0]
    bn, bk = block
    if granularity in ("block", "mx"):
        sa = expand(a_s.reshape(m, -1), m, k, 1, bk)
        sw = expand(w_s, n, k, bn if granularity == "block" else 1, bk)
    elif granularity == "token_channel":
        sa = expand(a_s.reshape(m, 1), m, k, 1, k)
        sw = expand(w_s.reshape(n, 1), n, k, 1, k)
    else:
        sa, sw = expand(a_s, m, k, 1, 1), expand(w_s, n, k, 1, 1)
    a64 = a.to(torch.float64) * sa
    w64 = w.to(torch.float64) * sw
    out = a64 @ w64.t()
    if bias is not None:
        out = out + bias.cpu().to(torch.float64)
    return out, a64.abs() @ w64.abs().t()


def assert_close(out: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, *, bias=None) -> None:
    """Elementwise bound: ``2u |ref|`` (output rounding, u the out dtype's unit roundoff; 2u also
    covers a bias added after a rounded GEMM) ``+ 2**-10 (|A| @ |W|^T)`` (float32 accumulation
    over K <= 16k, and Hopper's FP8 tensor-core accumulation inside each K group)."""
    u = UNIT_ROUNDOFF[out.dtype]
    mag = magnitude + (bias.cpu().abs().to(torch.float64) if bias is not None else 0)
    bound = 2 * u * expected.abs() + 2.0**-10 * mag + 1e-30
    err = (out.cpu().to(torch.float64) - expected).abs()
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (
        f"{int((err > bound).sum())} of {err.numel()} elements out of bound; worst flat index {worst}: "
        f"got {out.reshape(-1)[worst].item()}, expected {expected.reshape(-1)[worst].item()}, "
        f"bound {bound.reshape(-1)[worst].item()}")


@pytest.fixture
def h() -> types.SimpleNamespace:
    """The helpers above, for test modules (conftest is not importable under importlib mode)."""
    return types.SimpleNamespace(rand_fp8=rand_fp8, rand_scales=rand_scales, ref=ref, assert_close=assert_close,
                                 expand=expand, scale64=scale64)
