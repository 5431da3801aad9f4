"""cuBLAS blockwise FP8 GEMM (1x128 activations x 128x128 weights) through torch, SM90 only.

torch 2.11 facts this path is built on (see the package README):

* cuBLASLt wants M a multiple of 4: A and its scales are read as ``round_up(M, 4)`` rows and the
  result sliced back. When their storage already holds those rows (what
  :func:`fp8_linear.per_token_group_quant` allocates: FP8 rows always, scales with
  ``tma_aligned=True``, which :class:`fp8_linear.Fp8BlockLinear` asks for) that is a strided view
  of the same storage, no copy; otherwise one ``torch.cat`` each, from cached zero / one blocks.
* activation scales must be column-major ``[M, K/128]`` with strides ``(1, M)``.
* the v1 ``torch._scaled_mm`` silently returns wrong results when ``ceil(K/128) % 4 != 0``; the v2
  ``torch.nn.functional.scaled_mm`` validates the layout and takes the weight scales padded to
  ``[round_up(K/128, 4), ceil(N/128)]`` with strides ``(1, round_up(K/128, 4))``. This module
  calls v1 where it is exact (``K/128 % 4 == 0``: the call vLLM makes, and the benchmark's peer)
  and v2 elsewhere, with the padded weight scales cached per weight-scale tensor; the registry
  refuses the rest (v1-only torch) with the reason.
* the bias is added afterwards in float32 (blockwise cuBLAS bias support is not relied on).
"""

from __future__ import annotations

import weakref

import torch

from ..fp8 import e8m0_to_float32, is_e8m0
from ..platform import ScaledMMApi
from ..problem import GemmProblem
from ..validation import GemmOperands

BLOCK = 128


def padded_weight_scale(w_s: torch.Tensor) -> torch.Tensor:
    """Weight scales [N/128, K/128] -> the v2 layout: [round_up(K/128, 4), N/128], strides (1, padded).

    Padding columns hold 1.0 (never read for real K groups)."""
    w_s = e8m0_to_float32(w_s) if is_e8m0(w_s.dtype) else w_s.to(torch.float32)
    nb, kb = w_s.shape
    kb4 = -(-kb // 4) * 4
    if kb4 == kb and w_s.is_contiguous():
        return w_s.t()
    buf = torch.ones((nb, kb4), dtype=torch.float32, device=w_s.device)
    buf[:, :kb] = w_s
    return buf.t()


_PADDED: dict[int, tuple[weakref.ref, int, int, torch.Tensor]] = {}


def cached_padded_weight_scale(w_s: torch.Tensor) -> torch.Tensor:
    """:func:`padded_weight_scale`, computed once per weight-scale tensor (recomputed when the
    tensor is modified in place or its storage changes; forgotten when it is freed)."""
    key = id(w_s)
    hit = _PADDED.get(key)
    if hit is not None and hit[0]() is w_s and hit[1] == w_s._version and hit[2] == w_s.data_ptr():
        return hit[3]
    padded = padded_weight_scale(w_s)
    try:
        ref = weakref.ref(w_s, lambda _ref, key=key: _PADDED.pop(key, None))
    except TypeError:  # pragma: no cover - tensors support weak references
        return padded
    _PADDED[key] = (ref, w_s._version, w_s.data_ptr(), padded)
    return padded


_FILL: dict[tuple[torch.device, torch.dtype, int, int, float], torch.Tensor] = {}


def _fill_block(device: torch.device, dtype: torch.dtype, rows: int, width: int, value: float) -> torch.Tensor:
    """A cached [rows, width] block of ``value`` (the padding the cuBLAS path concatenates)."""
    key = (device, dtype, rows, width, value)
    block = _FILL.get(key)
    if block is None:
        block = _FILL[key] = torch.full((rows, width), value, dtype=dtype, device=device)
    return block


def _storage_view(t: torch.Tensor, shape: tuple[int, int], strides: tuple[int, int]) -> torch.Tensor | None:
    """``t.as_strided(shape, strides)`` at ``t``'s storage offset when every element it spans lies in
    ``t``'s storage, else None."""
    try:
        last = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(shape, strides, strict=True)) + 1
        if last > t.untyped_storage().nbytes() // t.element_size():
            return None
        return t.as_strided(shape, strides)
    except (RuntimeError, NotImplementedError):
        return None


# Reading rows past M (the padding rows of the quantizer's storage, whatever they hold) is safe:
# GEMM output rows depend only on their own A row and scale, and the result is sliced to out[:m].


def pad_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    """FP8 ``a`` [M, K] -> [rows, K] row-major: a view of ``a``'s storage when it holds the rows
    (the quantizer's padded buffer), else zero rows appended (one concatenation)."""
    m, k = a.shape
    if rows == m:
        return a
    if a.stride(1) == 1 and (a.stride(0) == k or m == 1):
        view = _storage_view(a, (rows, k), (k, 1))
        if view is not None:
            return view
    raw = a.view(torch.uint8)
    pad = _fill_block(a.device, torch.uint8, 3, k, 0.0)[: rows - m]
    return torch.cat((raw, pad)).view(a.dtype)


def column_major_scales(a_s: torch.Tensor, rows: int) -> torch.Tensor:
    """[M, K/128] activation scales -> [rows, K/128] with strides (1, rows): as is when already so;
    a view of the storage when it is column-major with column stride ``rows`` (the TMA-aligned
    layout); else one copy (pad rows hold 1.0)."""
    m, kb = a_s.shape
    if rows == m:
        if a_s.stride(0) == 1 and (a_s.stride(1) == m or kb == 1):
            return a_s
        return a_s.t().contiguous().t()
    if (a_s.stride(0) == 1 or m == 1) and (a_s.stride(1) == rows or kb == 1):  # size-1 dims: any stride
        view = _storage_view(a_s, (rows, kb), (1, rows))
        if view is not None:
            return view
    ones = _fill_block(a_s.device, torch.float32, kb, 3, 1.0)[:, : rows - m]
    return torch.cat((a_s.t(), ones), dim=1).t()


def cublas_gemm(ops: GemmOperands, problem: GemmProblem, *, api: ScaledMMApi,
                w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
    """[M, N] of ``problem.out_dtype``; ``w_s_padded`` is :func:`padded_weight_scale` precomputed."""
    m, n, k = problem.m, problem.n, problem.k
    if m == 0:
        return torch.empty((0, n), dtype=problem.out_dtype, device=ops.a.device)
    rows = -(-m // 4) * 4
    a = pad_rows(ops.a, rows)
    a_s = ops.a_s
    if is_e8m0(a_s.dtype):  # upcast: a fresh [M, K/128] tensor, padded by the concatenation
        a_s = e8m0_to_float32(a_s)
    a_s = column_major_scales(a_s, rows)
    kb = -(-k // BLOCK)
    if api is ScaledMMApi.V2 and kb % 4:
        functional = torch.nn.functional
        scale_b = w_s_padded if w_s_padded is not None else cached_padded_weight_scale(ops.w_s)
        out = functional.scaled_mm(
            a, ops.w.t(), a_s, functional.ScalingType.BlockWise1x128, scale_b,
            functional.ScalingType.BlockWise128x128, output_dtype=problem.out_dtype,
        )
    else:  # v1: exact here (K/128 % 4 == 0; the registry refuses the rest on v1-only torch)
        w_s = e8m0_to_float32(ops.w_s) if is_e8m0(ops.w_s.dtype) else ops.w_s
        if not w_s.is_contiguous():
            w_s = w_s.contiguous()
        out = torch._scaled_mm(a, ops.w.t(), scale_a=a_s, scale_b=w_s.t(), out_dtype=problem.out_dtype)
    if rows != m:
        out = out[:m]
    if ops.bias is not None:
        out = (out.to(torch.float32) + ops.bias.to(torch.float32)).to(problem.out_dtype)
    return out
