"""Numeric and validation helpers shared by the checkpoint formats (private).

Scale rounding. Every encoder here rounds its float scales DOWN onto a grid of at most
``max_bits`` significant bits (20 for FP8, 16 for integer codes; the scale dtype's own precision
when that is smaller: bfloat16 8, float16 11). With scales that short, ``code * scale`` and
``qmax * scale`` are exact in float32, so the dense weight that ``decode`` returns lies exactly on
the quantization grid; and because the scale was rounded down, the extreme element of every
block still gets the extreme code, so encoding the decoded weight again finds the same scales and
codes: ``encode(decode(t)) == t`` bit for bit. The price is a clamp of the block's extreme
element by less than ``qmax`` steps of the scale grid (``qmax * ulp(s)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from weight_layouts.formats.base import FormatError

FLOAT_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT_INDEX_DTYPES = (torch.int32, torch.int64)

_PRECISION = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11, torch.float64: 53}
_INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def round_scale(x: torch.Tensor, dtype: torch.dtype, *, mode: str, max_bits: int, fmt: str, name: str) -> torch.Tensor:
    """Round positive float64 scales ``x`` up (``mode="up"``) or down (``"down"``) onto ``dtype``.

    The result has at most ``min(max_bits, precision(dtype))`` significant bits (fewer for
    subnormals). Zeros stay zero (callers replace them); an overflow raises :class:`FormatError`.
    """
    bits = min(max_bits, _PRECISION[dtype])
    mant, exp = torch.frexp(x)  # x = mant * 2**exp, mant in [0.5, 1)
    scaled = mant * float(2**bits)
    scaled = torch.ceil(scaled) if mode == "up" else torch.floor(scaled)
    y = torch.ldexp(scaled / float(2**bits), exp)  # exact in float64
    finfo = torch.finfo(dtype)
    if y.numel() and float(y.max()) > finfo.max:
        raise FormatError(
            f"{fmt}: {name!r} would be {float(y.max()):.6g}, beyond the largest {dtype} ({finfo.max:.6g}); "
            "the weight's range is too large for this scale dtype"
        )
    t = y.to(dtype)
    t64 = t.to(torch.float64)
    as_int = t.view(_INT_VIEW[dtype])
    if mode == "up":
        as_int = torch.where(t64 < y, as_int + 1, as_int)
    else:
        as_int = torch.where(t64 > y, as_int - 1, as_int)
    return as_int.view(dtype)


def smallest_positive(dtype: torch.dtype) -> float:
    """The smallest positive (subnormal) value of a float dtype."""
    return float(torch.tensor(1, dtype=_INT_VIEW[dtype]).view(dtype).item())


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties away from zero (exact; same dtype)."""
    t = torch.trunc(x)
    return t + torch.sign(x) * ((x - t).abs() >= 0.5).to(x.dtype)


def group_index(k: int, group_size: int, device: torch.device) -> torch.Tensor:
    """Default group of each input channel, ``k // group_size`` (``-1`` = one group), int64 [K]."""
    g = k if group_size == -1 else group_size
    return torch.arange(k, device=device, dtype=torch.int64) // g


def num_groups(k: int, group_size: int | None) -> int:
    """``ceil(K / group_size)``; one group for ``-1`` / ``None`` (per channel)."""
    return 1 if group_size in (-1, None) else math.ceil(k / group_size)


def group_minmax(w: torch.Tensor, g_idx: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min and max of ``w`` [..., N, K] with group index ``g_idx`` [K] or [..., K].

    Returns float64 ``(lo, hi)`` of shape [..., N, groups]; empty groups give 0.
    """
    w64 = w.to(torch.float64)
    index = g_idx.to(torch.int64).unsqueeze(-2).expand(w64.shape)
    shape = (*w64.shape[:-1], groups)
    lo = torch.zeros(shape, dtype=torch.float64, device=w.device).scatter_reduce(-1, index, w64, "amin", include_self=False)
    hi = torch.zeros(shape, dtype=torch.float64, device=w.device).scatter_reduce(-1, index, w64, "amax", include_self=False)
    return lo, hi


def gather_groups(per_group: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """Expand per-group values [..., N, G] to per-element [..., N, K] with ``g_idx`` [K] or [..., K]."""
    index = g_idx.to(torch.int64).unsqueeze(-2)
    shape = (*per_group.shape[:-1], index.shape[-1])
    index = index.expand(shape)
    return per_group.gather(-1, index)


def fit_symmetric(
    amax: torch.Tensor, qpos: int, dtype: torch.dtype, *, fmt: str, name: str
) -> torch.Tensor:
    """Symmetric integer scale ``amax / qpos`` rounded down onto ``dtype`` (16 bits at most).

    Rounding down keeps the extreme element at code ``+-qpos`` (clamped, excess < qpos ulps of
    the scale), which is what makes re-encoding reproduce the scale. All-zero groups get 1.0.
    """
    s = round_scale(amax / qpos, dtype, mode="down", max_bits=16, fmt=fmt, name=name)
    tiny = smallest_positive(dtype)
    s = torch.where((amax > 0) & (s == 0), torch.full_like(s, tiny), s)
    return torch.where(amax > 0, s, torch.ones_like(s))


def fit_asymmetric(
    lo: torch.Tensor, hi: torch.Tensor, maxq: int, dtype: torch.dtype, *, zmin: int, fmt: str, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric integer scale and zero point (codes ``0..maxq``) for groups spanning ``[lo, hi]``.

    ``lo``/``hi`` float64 per-group min/max. The range is widened to include 0; the scale
    ``(hi - lo) / maxq`` is rounded down onto ``dtype`` and the zero point is
    ``round_half_away(-lo / scale)``, so the group's min gets code 0 and its max code ``maxq``
    (possibly clamped by less than ``maxq`` ulps of the scale). ``zmin=1`` (GPTQ v1, which cannot
    store a zero point of 0) re-fits groups whose zero point would be 0 to ``[-s, (maxq-1)*s]``.
    All-zero groups get scale 1.0 and zero point ``zmin``. Returns ``(scale in dtype, zero int64)``.
    """
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    span = hi - lo
    tiny = smallest_positive(dtype)

    def _scale(raw: torch.Tensor) -> torch.Tensor:
        s = round_scale(raw, dtype, mode="down", max_bits=16, fmt=fmt, name=name)
        return torch.where((raw > 0) & (s == 0), torch.full_like(s, tiny), s)

    s = _scale(span / maxq)
    s64 = torch.where(s > 0, s.to(torch.float64), torch.ones_like(span))
    z = round_half_away(-lo / s64).clamp(0, maxq)
    if zmin > 0:
        refit = (z < zmin) & (span > 0)
        s_alt = _scale(hi / (maxq - zmin))
        s = torch.where(refit, s_alt, s)
        z = torch.where(refit, torch.full_like(z, zmin), z)
    zero_group = span == 0
    s = torch.where(zero_group, torch.ones_like(s), s)
    z = torch.where(zero_group, torch.full_like(z, zmin), z)
    return s, z.to(torch.int64)


def quantize_int(
    w: torch.Tensor, scale_el: torch.Tensor, zero_el: torch.Tensor | int, lo: int, hi: int
) -> torch.Tensor:
    """Codes ``clamp(round_half_away(w / scale) + zero, lo, hi)`` as int64 (math in float64)."""
    q = round_half_away(w.to(torch.float64) / scale_el.to(torch.float64))
    if isinstance(zero_el, torch.Tensor):
        q = q + zero_el.to(torch.float64)
    else:
        q = q + float(zero_el)
    return q.clamp(lo, hi).to(torch.int64)


def fp8_scale(amax: torch.Tensor, dtype: torch.dtype, *, fmt: str, name: str) -> torch.Tensor:
    """FP8 E4M3 scale ``amax / 448`` rounded DOWN onto ``dtype`` (20 significant bits at most).

    Rounding down makes the block max encode as exactly +-448 (saturating by less than 448 ulps
    of the scale), so decoding and re-encoding finds the same scale for every scale dtype, even
    where the dtype's grid is coarse (float16 subnormals). All-zero blocks get 1.0.
    """
    amax64 = amax.to(torch.float64)
    s = round_scale(amax64 / 448.0, dtype, mode="down", max_bits=20, fmt=fmt, name=name)
    s = torch.where((amax64 > 0) & (s == 0), torch.full_like(s, smallest_positive(dtype)), s)
    return torch.where(amax64 > 0, s, torch.ones_like(s))


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """float -> float8_e4m3fn, round to nearest even via float32, saturating at +-448."""
    return x.to(torch.float32).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


# -- validation -----------------------------------------------------------------------------------


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_dtype(fmt: str, name: str, t: torch.Tensor, allowed: Sequence[torch.dtype], what: str = "") -> None:
    if t.dtype not in allowed:
        exp = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise FormatError(f"{fmt}: tensor {name!r} must be {exp}{what}, got {str(t.dtype).replace('torch.', '')}")


def check_shape(fmt: str, name: str, t: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    if tuple(t.shape) != tuple(int(e) for e in expected):
        raise FormatError(
            f"{fmt}: tensor {name!r} has shape {shape_str(t.shape)}, expected {shape_str(expected)} ({meaning})"
        )


def check_ndim(fmt: str, name: str, t: torch.Tensor, min_ndim: int, meaning: str) -> None:
    if t.ndim < min_ndim:
        raise FormatError(f"{fmt}: tensor {name!r} must be {meaning} (at least {min_ndim} dims), got shape {shape_str(t.shape)}")


def check_divisible(fmt: str, dim_name: str, value: int, divisor: int, why: str) -> None:
    if value % divisor:
        raise FormatError(f"{fmt}: {dim_name}={value} must be a multiple of {divisor} ({why})")


def check_scale_values(fmt: str, name: str, t: torch.Tensor) -> None:
    """Float scales must be finite and > 0 (NaN, inf, zero and negatives raise)."""
    if t.numel() == 0:
        return
    s = t.to(torch.float32)
    bad = ~(torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        idx = torch.nonzero(bad)[0].tolist()
        value = s[tuple(idx)].item()
        kind = "NaN" if math.isnan(value) else "inf" if math.isinf(value) else "zero" if value == 0 else "negative"
        raise FormatError(
            f"{fmt}: tensor {name!r} must hold finite positive scales; found {kind} ({value}) at index {idx} "
            f"({int(bad.sum())} bad value(s))"
        )


def check_e8m0_values(fmt: str, name: str, t: torch.Tensor) -> None:
    """E8M0 bytes must not be 0xFF (NaN)."""
    u = t.view(torch.uint8) if t.dtype != torch.uint8 else t
    bad = u == 0xFF
    if u.numel() and bool(bad.any()):
        idx = torch.nonzero(bad)[0].tolist()
        raise FormatError(
            f"{fmt}: tensor {name!r} holds E8M0 byte 0xFF (NaN) at index {idx} ({int(bad.sum())} such byte(s)); "
            "expected exponent bytes 0..254"
        )


_CHECK_CHUNK = 1 << 22  # elements per slice of a whole-tensor check: bounds its temporaries at ~8 MB


def check_fp8_values(fmt: str, name: str, t: torch.Tensor) -> None:
    """float8_e4m3fn data must not contain NaN codes (0x7F / 0xFF). Checked in slices, so a
    multi-GB stacked weight needs no full-size temporary."""
    flat = t.reshape(-1).view(torch.uint8)
    for start in range(0, flat.numel(), _CHECK_CHUNK):
        part = flat[start:start + _CHECK_CHUNK].bitwise_and(0x7F)
        if int(part.max()) == 0x7F:  # max() is ~3x faster than materializing a bool mask
            first = start + int(torch.nonzero(part == 0x7F)[0])
            idx = list(torch.unravel_index(torch.tensor(first), tuple(t.shape)))
            count = int(((flat.bitwise_and(0x7F)) == 0x7F).sum())
            raise FormatError(f"{fmt}: tensor {name!r} holds an FP8 NaN code at index {[int(i) for i in idx]} "
                              f"({count} NaN(s))")


def check_index_values(fmt: str, name: str, t: torch.Tensor, upper: int, meaning: str) -> None:
    """Integer indices must lie in ``[0, upper)``."""
    if t.numel() == 0:
        return
    bad = (t < 0) | (t >= upper)
    if bool(bad.any()):
        idx = torch.nonzero(bad)[0].tolist()
        raise FormatError(
            f"{fmt}: tensor {name!r} value {int(t[tuple(idx)])} at index {idx} is out of range: "
            f"expected 0 <= {name} < {upper} ({meaning})"
        )


def check_batch(fmt: str, tensors: Mapping[str, torch.Tensor], name: str, trailing: int, batch: tuple[int, ...]) -> None:
    """``tensors[name]`` must carry the same leading dims as the primary tensor."""
    t = tensors[name]
    if t.ndim < trailing or tuple(t.shape[: t.ndim - trailing]) != batch:
        raise FormatError(
            f"{fmt}: tensor {name!r} has shape {shape_str(t.shape)}; expected leading dims {shape_str(batch)} "
            f"(the same as the weight's) followed by {trailing} format dim(s)"
        )


def as_index_tensor(
    fmt: str, name: str, value: object, *, k: int, batch: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """An encode input such as ``perm`` / ``g_idx``: a tensor or sequence of ints, shape [K] or [*batch, K]."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise FormatError(f"{fmt}: {name} must be an integer tensor or sequence, got {type(value).__name__}") from exc
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise FormatError(f"{fmt}: {name} must hold integers, got {t.dtype}")
    if tuple(t.shape) not in ((k,), (*batch, k)):
        raise FormatError(
            f"{fmt}: {name} has shape {shape_str(t.shape)}, expected {shape_str((k,))} or {shape_str((*batch, k))} (K={k})"
        )
    return t.to(device=device, dtype=torch.int64)


def perm_to_g_idx(fmt: str, perm: torch.Tensor, group_size: int) -> torch.Tensor:
    """Act-order permutation -> group index: ``g_idx[perm[i]] = i // group_size``.

    ``perm[i]`` is the input channel GPTQ quantized i-th (its act order), so the channels
    ``perm[r*g : (r+1)*g]`` share group ``r``. ``perm`` must be a permutation of ``range(K)`` along
    its last dim.
    """
    k = perm.shape[-1]
    if not bool((torch.sort(perm, dim=-1).values == torch.arange(k, device=perm.device)).all()):
        raise FormatError(f"{fmt}: perm must be a permutation of range(K={k}) along its last dim")
    order = group_index(k, group_size, perm.device).expand(perm.shape)
    return torch.empty_like(perm).scatter_(-1, perm, order)
