"""Input checks of the public functions: every bad operand raises :class:`InvalidInputError`
naming the operand, before anything is launched.

Shapes: ``a_q`` [..., K] (M = product of the leading dims), ``w_q`` [N, K], scales per the
granularity (see :mod:`fp8_linear.variant_types`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ._generated_variants import VARIANTS, Granularity
from .errors import InvalidInputError
from .fp8 import E8M0_NAN, FP8_DTYPES, is_e8m0, is_fp8
from .problem import OUT_DTYPES, GemmProblem
from .variant_types import ActivationScale, ScaleApply, ScaleDtype, WeightScale

FLOAT_INPUTS: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class GemmOperands:
    """Validated operands, flattened: ``a`` [M, K], ``a_s`` / ``w_s`` 2-D (tensor scales [1]),
    ``w`` [N, K], ``bias`` [N] or None; ``out_shape`` is ``a_q.shape[:-1] + (N,)``."""

    a: torch.Tensor
    a_s: torch.Tensor
    w: torch.Tensor
    w_s: torch.Tensor
    bias: torch.Tensor | None
    out_shape: tuple[int, ...]


def _tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_block_size(block_size: Any) -> tuple[int, int]:
    if not isinstance(block_size, (tuple, list)) or len(block_size) != 2:
        raise InvalidInputError(f"block_size must be a pair (bn, bk), got {block_size!r}")
    bn, bk = block_size
    for v in (bn, bk):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(f"block_size must hold two positive ints (bn, bk), got {tuple(block_size)!r}")
    return int(bn), int(bk)


def _shape_matches(t: torch.Tensor, expected: tuple[int, ...], lead: tuple[int, ...] | None) -> bool:
    """Does scale ``t`` have the 2-D ``expected`` shape (or lead + last dim for activation scales)?"""
    if expected == (1,):
        return t.numel() == 1 and t.ndim <= 2
    if lead is not None:
        return tuple(t.shape) == (*lead, expected[-1])
    return tuple(t.shape) == expected


def infer_granularity(
    a_s: torch.Tensor, w_s: torch.Tensor, *, m: int, n: int, k: int, lead: tuple[int, ...],
    block_size: tuple[int, int],
) -> Granularity:
    """The granularity the scale shapes and dtypes describe.

    E8M0 scales are MX when ``block_size`` is (1, 32), or is the default and their shapes are MX's
    ([M, K/32], [N, K/32]); otherwise the first of block, per-token x
    per-channel, per-tensor whose shapes match. Where two match (tiny shapes), both describe
    the same arithmetic. Falls back to ``block`` so the error message names its shapes.
    """
    mx = VARIANTS[Granularity.MX]
    if is_e8m0(a_s.dtype) and is_e8m0(w_s.dtype) and block_size in (mx.block_size, VARIANTS[Granularity.BLOCK].block_size):
        assert mx.block_size is not None
        exp_a, exp_w = mx.scale_shapes(m, n, k, mx.block_size)
        if block_size == mx.block_size or (_shape_matches(a_s, exp_a, lead) and _shape_matches(w_s, exp_w, None)):
            return Granularity.MX
    for granularity in (Granularity.BLOCK, Granularity.TOKEN_CHANNEL, Granularity.TENSOR):
        variant = VARIANTS[granularity]
        exp_a, exp_w = variant.scale_shapes(m, n, k, block_size)
        act_lead = lead if variant.activation_scale is not ActivationScale.TENSOR else None
        if _shape_matches(a_s, exp_a, act_lead) and _shape_matches(w_s, exp_w, None):
            return granularity
    return Granularity.BLOCK


def _check_scale(name: str, s: torch.Tensor, *, allow_e8m0: bool) -> None:
    if s.dtype == torch.float32:
        return
    if is_e8m0(s.dtype):
        if allow_e8m0:
            return
        raise InvalidInputError(f"{name} is E8M0 ({s.dtype}); this granularity takes float32 scales")
    allowed = "float32 or E8M0 (uint8 / float8_e8m0fnu)" if allow_e8m0 else "float32"
    raise InvalidInputError(f"{name} must be {allowed}, got {s.dtype}")


def check_scale_values(name: str, s: torch.Tensor) -> None:
    """No NaN / inf / negative float scales, no 0xFF E8M0 bytes (a device sync on GPUs)."""
    if s.numel() == 0:
        return
    if is_e8m0(s.dtype):
        bad = s.view(torch.uint8) == E8M0_NAN
        if bool(bad.any()):
            idx = torch.nonzero(bad)[0].tolist()
            raise InvalidInputError(f"{name} holds the E8M0 NaN byte 0xFF at index {idx} ({int(bad.sum())} such)")
        return
    bad = ~(torch.isfinite(s) & (s >= 0))
    if bool(bad.any()):
        idx = torch.nonzero(bad)[0].tolist()
        value = float(s[tuple(idx)].item())
        kind = "NaN" if math.isnan(value) else "inf" if math.isinf(value) else "negative"
        raise InvalidInputError(f"{name} must hold finite non-negative scales; found {kind} ({value}) at index "
                                f"{idx} ({int(bad.sum())} bad value(s))")


def check_gemm(
    a_q: Any, a_s: Any, w_q: Any, w_s: Any, *, block_size: Any, out_dtype: Any, bias: Any,
    granularity: Granularity | str | None, check_values: bool,
) -> tuple[GemmOperands, GemmProblem]:
    """Validate the operands of :func:`fp8_linear.block_scaled_mm`; see its docstring."""
    a_q, a_s, w_q, w_s = (_tensor(n, v) for n, v in (("a_q", a_q), ("a_s", a_s), ("w_q", w_q), ("w_s", w_s)))
    bn, bk = check_block_size(block_size)
    if not is_fp8(w_q.dtype):
        raise InvalidInputError(f"w_q must be an FP8 weight ({', '.join(map(str, FP8_DTYPES))}), got {w_q.dtype}; "
                                "quantize it first (weight_layouts.encode('fp8-block', w))")
    if not is_fp8(a_q.dtype):
        raise InvalidInputError(f"a_q must be FP8 ({', '.join(map(str, FP8_DTYPES))}), got {a_q.dtype}; "
                                "quantize activations with fp8_linear.per_token_group_quant")
    if a_q.dtype != w_q.dtype:
        raise InvalidInputError(f"a_q ({a_q.dtype}) and w_q ({w_q.dtype}) must share one FP8 dtype")
    if w_q.ndim != 2:
        raise InvalidInputError(f"w_q must be 2-D [N, K], got shape {list(w_q.shape)}")
    if a_q.ndim < 2:
        raise InvalidInputError(f"a_q must be [..., K] with at least 2 dims, got shape {list(a_q.shape)}")
    n, k = (int(d) for d in w_q.shape)
    if int(a_q.shape[-1]) != k:
        raise InvalidInputError(f"a_q's last dim K={a_q.shape[-1]} does not match w_q [N={n}, K={k}]")
    if n == 0 or k == 0:
        raise InvalidInputError(f"w_q must have N >= 1 and K >= 1, got shape {list(w_q.shape)}")
    if not a_q.is_contiguous():
        raise InvalidInputError(f"a_q must be contiguous (row-major [..., K]), got shape {list(a_q.shape)} strides "
                                f"{list(a_q.stride())}; call .contiguous()")
    if not w_q.is_contiguous():
        raise InvalidInputError(f"w_q must be contiguous [N, K] (K contiguous), got strides {list(w_q.stride())}; "
                                "a transposed [K, N] weight needs .t().contiguous()")
    devices = {t.device for t in (a_q, a_s, w_q, w_s)}
    if bias is not None:
        bias = _tensor("bias", bias)
        devices.add(bias.device)
    if len(devices) != 1:
        raise InvalidInputError(f"all operands must be on one device, got {sorted(map(str, devices))}")
    if out_dtype not in OUT_DTYPES:
        raise InvalidInputError(f"out_dtype must be one of {list(OUT_DTYPES)}, got {out_dtype!r}")
    lead = tuple(int(d) for d in a_q.shape[:-1])
    m = math.prod(lead)

    if granularity is None:
        granularity = infer_granularity(a_s, w_s, m=m, n=n, k=k, lead=lead, block_size=(bn, bk))
    elif not isinstance(granularity, Granularity):
        try:
            granularity = Granularity(granularity)
        except ValueError:
            raise InvalidInputError(f"unknown granularity {granularity!r}; expected one of "
                                    f"{[g.value for g in Granularity]}") from None
    variant = VARIANTS[granularity]
    if variant.block_size is None:
        block: tuple[int, int] | None = None
    else:
        if granularity is Granularity.MX and (bn, bk) != variant.block_size:
            if (bn, bk) != VARIANTS[Granularity.BLOCK].block_size:  # the signature's default
                raise InvalidInputError(f"MX scales come in blocks {variant.block_size}, got block_size {(bn, bk)}")
            bn, bk = variant.block_size
        if bk not in variant.block_k:
            raise InvalidInputError(f"block_size {(bn, bk)}: the {variant.name} kernels serve bk in {list(variant.block_k)}")
        if k % bk:
            raise InvalidInputError(f"K={k} is not a multiple of the block's bk={bk}: every activation group "
                                    f"must be whole (pad K or use a block that divides it)")
        block = (bn, bk)
    exp_a, exp_w = variant.scale_shapes(m, n, k, block or (1, 1))
    k_group = variant.apply is ScaleApply.K_GROUP
    _check_scale("a_s", a_s, allow_e8m0=k_group)
    _check_scale("w_s", w_s, allow_e8m0=k_group)
    act_lead = lead if variant.activation_scale is not ActivationScale.TENSOR else None
    if not _shape_matches(a_s, exp_a, act_lead):
        want = "[1]" if exp_a == (1,) else str([*lead, exp_a[-1]])
        raise InvalidInputError(
            f"a_s has shape {list(a_s.shape)}; the {variant.name} granularity ({variant.describe_scales()}) with "
            f"a_q {list(a_q.shape)}{'' if block is None else f', block_size {block}'} needs {want}"
        )
    if not _shape_matches(w_s, exp_w, None):
        raise InvalidInputError(
            f"w_s has shape {list(w_s.shape)}; the {variant.name} granularity ({variant.describe_scales()}) with "
            f"w_q [N={n}, K={k}]{'' if block is None else f', block_size {block}'} needs {list(exp_w)}"
        )
    if bias is not None:
        if bias.dtype not in FLOAT_INPUTS:
            raise InvalidInputError(f"bias must be bfloat16, float16 or float32, got {bias.dtype}")
        if tuple(bias.shape) != (n,):
            raise InvalidInputError(f"bias must be [N={n}], got shape {list(bias.shape)}")
        if not bias.is_contiguous():
            raise InvalidInputError(f"bias must be contiguous, got strides {list(bias.stride())}")
    if check_values:
        check_scale_values("a_s", a_s)
        check_scale_values("w_s", w_s)

    if variant.activation_scale is ActivationScale.TENSOR:
        a_s2 = a_s.reshape(1)
    else:
        a_s2 = a_s.reshape(m, exp_a[-1])
    w_s2 = w_s.reshape(1) if variant.weight_scale is WeightScale.TENSOR else w_s
    both_e8m0 = is_e8m0(a_s.dtype) and is_e8m0(w_s.dtype)
    problem = GemmProblem(
        m=m, n=n, k=k, granularity=granularity, block_size=block, fp8_dtype=w_q.dtype,
        scale_dtype=ScaleDtype.E8M0 if both_e8m0 else ScaleDtype.FLOAT32, out_dtype=out_dtype,
        has_bias=bias is not None,
    )
    operands = GemmOperands(a=a_q.reshape(m, k), a_s=a_s2, w=w_q, w_s=w_s2, bias=bias, out_shape=(*lead, n))
    return operands, problem
