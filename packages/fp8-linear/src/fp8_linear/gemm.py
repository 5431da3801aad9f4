"""``block_scaled_mm``: the public block-scaled FP8 GEMM.

A call is validated and its kernel selected once per *signature*: the shapes, strides, dtypes and
devices of every operand, the block size, output dtype, granularity, the forced kernel (argument
or ``FP8_LINEAR_KERNEL``) and the platform. The result (the :class:`GemmProblem`, the
:class:`KernelChoice` with its launch config, and how to flatten the operands) is kept in a plan
cache, so a repeated call with the same signature does only the scale-value scan (when
``check_values``) and the kernel launch. Any change of shape, stride, dtype or device is a new
signature and is validated in full. :func:`clear_caches` forgets every plan and selection (after
changing tuned-config or dispatch files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ._generated_variants import Granularity
from .platform import LinearPlatform
from .registry import ENV_KERNEL, KernelChoice, detected_platform, select_kernel
from .validation import GemmOperands, check_gemm, check_scale_values

PLAN_CACHE_SIZE = 4096


@dataclass(frozen=True)
class _Plan:
    choice: KernelChoice
    a_shape: tuple[int, ...] | None  # None where the operand is passed on as it is (already 2-D)
    a_s_shape: tuple[int, ...] | None
    w_s_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None  # None: the kernel's [M, N] is the result


_PLANS: dict[tuple[object, ...], _Plan] = {}
_STATS = {"hits": 0, "misses": 0}


def _meta(t: object) -> tuple[object, ...] | None:
    if not isinstance(t, torch.Tensor):
        raise TypeError
    return (t.shape, t.stride(), t.dtype, t.device)


def _signature(a_q: object, a_s: object, w_q: object, w_s: object, bias: object, block_size: object,
               out_dtype: object, granularity: object, kernel: object, platform: LinearPlatform) -> tuple[object, ...]:
    """The hashable key of a call (TypeError when an argument is not of a cacheable kind)."""
    return (_meta(a_q), _meta(a_s), _meta(w_q), _meta(w_s), None if bias is None else _meta(bias),
            tuple(block_size), out_dtype, granularity, kernel, os.environ.get(ENV_KERNEL), platform)  # type: ignore[arg-type]


def clear_caches() -> None:
    """Forget every cached plan, kernel selection, tuned table and dispatch table."""
    from . import dispatch, registry, tuned

    _PLANS.clear()
    registry._select.cache_clear()
    registry.detected_platform.cache_clear()
    tuned.load_table.cache_clear()
    dispatch.load_dispatch.cache_clear()


def plan_cache_stats() -> dict[str, int]:
    """Plan-cache hits and misses since import (for tests and overhead measurements)."""
    return {**_STATS, "size": len(_PLANS)}


def block_scaled_mm(
    a_q: torch.Tensor,
    a_s: torch.Tensor,
    w_q: torch.Tensor,
    w_s: torch.Tensor,
    *,
    block_size: tuple[int, int] = (128, 128),
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    kernel: str | None = None,
    granularity: Granularity | str | None = None,
    platform: LinearPlatform | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """``out = dequant(a_q, a_s) @ dequant(w_q, w_s)^T (+ bias)``, accumulated in float32.

    Args:
        a_q: FP8 activations [..., K], contiguous (``float8_e4m3fn``, or ``float8_e4m3fnuz`` on ROCm).
        a_s: activation scales: [..., K/bk] for ``block`` and ``mx`` (any strides: row- or
            column-major), [..., 1] per token, or one value per tensor.
        w_q: FP8 weight [N, K] (nn.Linear orientation, contiguous), same dtype as ``a_q``.
        w_s: weight scales: [ceil(N/bn), K/bk] for ``block``, [N, K/32] for ``mx``, [N, 1] per
            channel, one value per tensor.
        block_size: ``(bn, bk)`` of the weight block; activation groups are 1 x bk and K must be a
            multiple of bk. Ignored by the per-token and per-tensor granularities.
        out_dtype: bfloat16 (default), float16 or float32.
        bias: optional [N] (bf16 / fp16 / fp32), added in float32 before the output cast.
        kernel: a registry name to force (``"cublas"``, ``"triton"``, ``"reference"``), None for auto.
        granularity: ``"block"``, ``"token_channel"``, ``"tensor"`` or ``"mx"``; None infers it from
            the scales (E8M0 scales [.., K/32] are MX; see :func:`fp8_linear.validation.infer_granularity`).
        platform: what to select for (default: detected).
        check_values: scan the scales for NaN / inf / negatives (E8M0: 0xFF) first. This costs a
            device sync; pass False in CUDA graphs and hot loops.

    Scale dtypes: float32, or E8M0 (uint8 / float8_e8m0fnu) for ``block`` and ``mx``; E8M0 is
    upcast to float32 where a kernel or platform needs it.

    Returns:
        ``a_q.shape[:-1] + (N,)`` of ``out_dtype``.

    Raises:
        InvalidInputError: bad operands (before any launch).
        KernelSelectionError: no kernel (or not the forced one) serves the problem here.
    """
    plat = platform or detected_platform()
    try:
        key: tuple[object, ...] | None = _signature(a_q, a_s, w_q, w_s, bias, block_size, out_dtype, granularity,
                                                    kernel, plat)
        plan = _PLANS.get(key)  # type: ignore[arg-type]
    except TypeError:  # not tensors, or an unhashable argument: the full path raises the right error
        key, plan = None, None
    if plan is not None:
        _STATS["hits"] += 1
        if check_values:
            check_scale_values("a_s", a_s)
            check_scale_values("w_s", w_s)
        ops = GemmOperands(a=a_q if plan.a_shape is None else a_q.reshape(plan.a_shape),
                           a_s=a_s if plan.a_s_shape is None else a_s.reshape(plan.a_s_shape), w=w_q,
                           w_s=w_s if plan.w_s_shape is None else w_s.reshape(plan.w_s_shape), bias=bias,
                           out_shape=plan.out_shape or (plan.choice.problem.m, plan.choice.problem.n))
        out = run_choice(plan.choice, ops)
        return out if plan.out_shape is None else out.reshape(plan.out_shape)
    _STATS["misses"] += 1
    ops, problem = check_gemm(a_q, a_s, w_q, w_s, block_size=block_size, out_dtype=out_dtype, bias=bias,
                              granularity=granularity, check_values=check_values)
    choice = select_kernel(problem, platform=plat, force=kernel)
    if key is not None:
        if len(_PLANS) >= PLAN_CACHE_SIZE:
            _PLANS.clear()
        _PLANS[key] = _Plan(
            choice=choice,
            a_shape=None if ops.a.shape == a_q.shape else tuple(ops.a.shape),
            a_s_shape=None if ops.a_s.shape == a_s.shape else tuple(ops.a_s.shape),
            w_s_shape=None if ops.w_s is w_s else tuple(ops.w_s.shape),
            out_shape=None if ops.out_shape == (problem.m, problem.n) else ops.out_shape,
        )
    return run_choice(choice, ops).reshape(ops.out_shape)


def run_choice(choice: KernelChoice, ops: GemmOperands, *, w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
    """Run a selected kernel on validated operands; [M, N]."""
    return choice.implementation.run(ops, choice.problem, choice, w_s_padded=w_s_padded)
