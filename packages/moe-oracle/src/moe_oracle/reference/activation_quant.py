"""Activation quantization exactly as the kernels do it, and its inverse.

Served keys and what :func:`quantize_activation` returns for an ``[M, K]`` activation (K the
reduction dimension, ``G`` a group size dividing K):

* kFp8DynamicTensorSym, kFp8StaticTensorSym: ``q`` float8_e4m3fn [M, K], ``scale`` float32 [1].
* kFp8DynamicTokenSym: ``q`` float8_e4m3fn [M, K], ``scale`` float32 [M, 1].
* kFp8Dynamic128Sym / 64 / 32 and any dynamic fp8 1xG key: ``q`` float8_e4m3fn [M, K],
  ``scale`` float32 [M, K/G].
* kMxfp8Dynamic (E8M0 per 1x32): ``q`` float8_e4m3fn [M, K], ``scale`` uint8 [M, K/32] holding
  E8M0 bytes (value ``2**(byte - 127)``).
* kInt8DynamicTokenSym / kInt8DynamicTensorSym / kInt8StaticTensorSym / dynamic int8 1xG:
  ``q`` int8 [M, K], ``scale`` float32 [M, 1] / [1] / [1] / [M, K/G].
* kInt8DynamicTokenAsym / kInt8DynamicTensorAsym: ``q`` uint8 [M, K], ``scale`` float32 and
  ``zero_point`` int32, both [M, 1] / [1].

``zero_point`` is None for every symmetric key.

Contracts (the input is first read as float32, as the kernels do; float64 input is rounded to
float32 first):

* FP8 (vLLM's ``per_token_group_quant_fp8`` / ``scaled_fp8_quant``): per group/token/tensor
  ``scale = max(absmax, 1e-10) / 448`` and ``q = fp8(clamp(x / scale, -448, 448))`` with a true
  division and the round-to-nearest-even float32 -> e4m3 cast. Static per-tensor: the given
  scale, same formula (values beyond ``448 * scale`` saturate).
* INT8 symmetric (vLLM's ``scaled_int8_quant``): ``scale = max(absmax, 1e-10) / 127``;
  dynamic ``q = rne(x * (127 / max(absmax, 1e-10)))``, static ``q = rne(x / scale)``, both
  saturated to [-128, 127]. ``rne`` is round-half-to-even (``nearbyint`` in the CUDA kernel,
  ``torch.round`` here); the Triton per-token int8 path of some engines rounds half away from
  zero, which differs only on exact ties. The reciprocal form is what the dynamic kernel does.
* INT8 asymmetric (vLLM's azp kernel, shifted to the unsigned code range of the key):
  ``scale = max(max - min, 1e-10) / 255`` over the values (zero need not be in range),
  ``azp = rne(-128 - min / scale)``, ``q = clamp(rne(x * (1 / scale)) + azp, -128, 127) + 128``
  stored as uint8 and ``zero_point = azp + 128`` (int32; may lie outside [0, 255]). Dequant:
  ``(q - zero_point) * scale``. vLLM keeps the int8 codes ``q - 128`` and ``azp``: same values.
* MX (OCP MX, E8M0 scale per 32): ``e = clamp(floor(log2(amax)) - 8, -127, 127)`` (8 = emax of
  e4m3; floor(log2 0) counts as -inf, so all-zero groups get -127), scale byte ``e + 127``,
  ``q = fp8(clamp(x / 2**e, -448, 448))``. ``floor(log2)`` is taken exactly from the float's
  exponent (``frexp``). Groups whose amax is not finite get the NaN byte 255. Elements between
  448 and 512 times ``2**e`` saturate (the spec's floor rule, not the "round scale up" variant).

Dequantization returns float32 ``q * scale`` (exact products except for the final float32
rounding).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from quantkeys import Granularity, QuantDType, QuantKey

__all__ = [
    "EPS",
    "FP8_MAX",
    "INT8_MAX",
    "QuantizedActivation",
    "decode_e8m0",
    "dequantize_activation",
    "expected_scale_shape",
    "is_supported_activation_key",
    "quantize_activation",
]

EPS = 1e-10
FP8_MAX = 448.0
INT8_MAX = 127.0
_MX_EMAX_E4M3 = 8
_E8M0_BIAS = 127
_E8M0_NAN = 255


class _Kind(enum.Enum):
    FP8 = "fp8"
    MX = "mx"
    INT8 = "int8"
    UINT8_ASYM = "uint8-asym"


@dataclass(frozen=True)
class _Plan:
    kind: _Kind
    granularity: Granularity  # TENSOR, TOKEN or GROUP
    group: int | None  # G for GROUP


def _describe(key: QuantKey) -> str:
    name = key.name
    return f"{name} ({key})" if name else str(key)


def _plan(key: QuantKey) -> _Plan:
    """How ``key`` is quantized; ValueError naming the key when it is not served."""
    if not isinstance(key, QuantKey):
        raise TypeError(f"key must be a quantkeys.QuantKey, got {type(key).__name__}")
    gran = key.group_shape.granularity
    sdtype = key.scale.dtype
    static = key.is_static
    plan: _Plan | None = None
    group = key.group_shape.cols if gran is Granularity.GROUP else None
    if key.scale2 is None and gran in (Granularity.TENSOR, Granularity.TOKEN, Granularity.GROUP):
        row_wise_dynamic_or_static_tensor = not static or gran is Granularity.TENSOR
        if key.dtype is QuantDType.FP8_E4M3 and sdtype is QuantDType.FP32 and row_wise_dynamic_or_static_tensor:
            plan = _Plan(_Kind.FP8, gran, group)
        elif (
            key.dtype is QuantDType.FP8_E4M3 and sdtype is QuantDType.E8M0 and gran is Granularity.GROUP and not static
        ):
            plan = _Plan(_Kind.MX, gran, group)
        elif key.dtype is QuantDType.INT8 and sdtype is QuantDType.FP32 and row_wise_dynamic_or_static_tensor:
            plan = _Plan(_Kind.INT8, gran, group)
        elif (
            key.dtype is QuantDType.UINT8
            and not key.symmetric
            and sdtype is QuantDType.FP32
            and not static
            and gran in (Granularity.TENSOR, Granularity.TOKEN)
        ):
            plan = _Plan(_Kind.UINT8_ASYM, gran, None)
    if plan is None:
        raise ValueError(
            f"activation quantization does not serve key {_describe(key)}; served: fp8e4m3 dynamic "
            "tensor/token/1xG and static tensor, fp8e4m3 dynamic 1xG e8m0 (MX), int8 sym dynamic "
            "tensor/token/1xG and static tensor, uint8 asym dynamic tensor/token"
        )
    return plan


def is_supported_activation_key(key: QuantKey | None) -> bool:
    """True when :func:`quantize_activation` serves ``key`` (None, unquantized, is not a key)."""
    if key is None:
        return False
    try:
        _plan(key)
    except (ValueError, TypeError):
        return False
    return True


def expected_scale_shape(key: QuantKey, *, num_tokens: int, hidden: int) -> tuple[int, ...]:
    """The shape of ``scale`` (and ``zero_point``) for an ``[num_tokens, hidden]`` activation."""
    plan = _plan(key)
    if plan.group is not None and hidden % plan.group != 0:
        raise ValueError(f"K = {hidden} is not divisible by the group size {plan.group} of key {_describe(key)}")
    return _scale_shape(plan, num_tokens, hidden)


@dataclass(frozen=True, kw_only=True)
class QuantizedActivation:
    """A quantized ``[M, K]`` activation: codes, scales and the key that produced them.

    Shapes and dtypes per key are listed in the module docstring. ``zero_point`` is set for
    asymmetric keys only.
    """

    q: torch.Tensor
    scale: torch.Tensor
    key: QuantKey
    zero_point: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


def decode_e8m0(byte: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes (uint8) -> float32 ``2**(byte - 127)``, exact (byte 0 = 2**-127, 255 = NaN)."""
    if byte.dtype != torch.uint8:
        raise ValueError(f"E8M0 scales are stored as uint8, got {byte.dtype}")
    b = byte.to(torch.int32)
    bits = torch.where(b == 0, torch.full_like(b, 1 << 22), b << 23)  # 2**-127 is a float32 subnormal
    bits = torch.where(b == _E8M0_NAN, torch.full_like(b, 0x7FC00000), bits)
    return bits.view(torch.float32)


def _check_input(x: torch.Tensor, plan: _Plan, key: QuantKey) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"activation must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise ValueError(f"activation to quantize must be float32/float16/bfloat16/float64, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"activation must be 2-D [M, K], got shape {tuple(x.shape)}")
    k = x.shape[1]
    if k < 1:
        raise ValueError("activation has K = 0 columns")
    if plan.group is not None and k % plan.group != 0:
        raise ValueError(f"K = {k} is not divisible by the group size {plan.group} of key {_describe(key)}")


def _static_scale_tensor(static_scale: torch.Tensor | float, key: QuantKey, device: torch.device) -> torch.Tensor:
    s = torch.as_tensor(static_scale, dtype=torch.float32, device=device)
    if s.numel() != 1:
        raise ValueError(
            f"key {_describe(key)} takes one per-tensor static scale, got a scale of shape {tuple(s.shape)}"
        )
    value = float(s.reshape(()).item())
    if not (value > 0.0 and value != float("inf")):
        raise ValueError(f"static scale for key {_describe(key)} must be finite and > 0, got {value}")
    return s.reshape(1)


def _grouped(xf: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """``[M, K]`` -> ``[M, groups, G]`` (TOKEN: one group of K; TENSOR: handled by callers)."""
    m, k = xf.shape
    g = plan.group if plan.group is not None else k
    return xf.reshape(m, k // g, g)


def _div(num: torch.Tensor, den: float) -> torch.Tensor:
    """``num / den`` as a true float division on every device (CUDA turns ``tensor / python_scalar``
    into a multiplication by the reciprocal, which can differ from the kernels by one ulp)."""
    return num / torch.full_like(num, den)


def _rdiv(num: float, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as a true division (``python_scalar / tensor`` is a reciprocal times a scalar)."""
    return torch.full_like(den, num) / den


def _amax(values: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Absmax per scale: ``[1]`` for TENSOR, else ``[M, groups]`` from ``[M, groups, G]`` values."""
    a = values.abs()
    if plan.granularity is Granularity.TENSOR:
        return a.amax().reshape(1) if a.numel() else a.new_zeros(1)
    return a.amax(dim=-1)


def quantize_activation(
    x: torch.Tensor,
    key: QuantKey,
    *,
    static_scale: torch.Tensor | float | None = None,
) -> QuantizedActivation:
    """Quantize ``x`` ``[M, K]`` with ``key`` (see the module docstring for the contracts).

    ``static_scale`` (one float32 value, > 0 and finite) is required by static keys and
    refused by dynamic ones.
    """
    plan = _plan(key)
    _check_input(x, plan, key)
    if key.is_static and static_scale is None:
        raise ValueError(f"key {_describe(key)} is static: pass its scale as static_scale=")
    if not key.is_static and static_scale is not None:
        raise ValueError(f"key {_describe(key)} is dynamic: static_scale must not be given")

    m, k = x.shape
    xf = x.to(torch.float32)
    per_tensor = plan.granularity is Granularity.TENSOR
    values = xf.reshape(1, 1, m * k) if per_tensor else _grouped(xf, plan)  # [rows, groups, G]

    if plan.kind is _Kind.FP8:
        if static_scale is not None:
            scale = _static_scale_tensor(static_scale, key, x.device)
        else:
            scale = _div(_amax(values, plan).clamp(min=EPS), FP8_MAX)
        s = scale.reshape(1, 1, 1) if per_tensor else scale.unsqueeze(-1)
        q = (values / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(m, k)
        return QuantizedActivation(q=q, scale=scale if per_tensor else scale.reshape(_scale_shape(plan, m, k)), key=key)

    if plan.kind is _Kind.MX:
        amax = _amax(values, plan)  # [M, groups]
        _, exponent = torch.frexp(amax)  # amax = mant * 2**exponent, mant in [0.5, 1)
        e = (exponent.to(torch.int32) - 1) - _MX_EMAX_E4M3  # floor(log2(amax)) - emax
        e = torch.where(amax == 0, torch.full_like(e, -_E8M0_BIAS), e).clamp(-_E8M0_BIAS, _E8M0_BIAS)
        byte = torch.where(torch.isfinite(amax), e + _E8M0_BIAS, torch.full_like(e, _E8M0_NAN)).to(torch.uint8)
        s = decode_e8m0(byte).unsqueeze(-1)
        q = (values / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(m, k)
        return QuantizedActivation(q=q, scale=byte, key=key)

    if plan.kind is _Kind.INT8:
        if static_scale is not None:
            scale = _static_scale_tensor(static_scale, key, x.device)
            codes = torch.round(values / scale.reshape(1, 1, 1))
        else:
            amax = _amax(values, plan).clamp(min=EPS)
            scale = _div(amax, INT8_MAX)
            inv = _rdiv(INT8_MAX, amax)
            codes = torch.round(values * (inv.reshape(1, 1, 1) if per_tensor else inv.unsqueeze(-1)))
        q = codes.clamp(-128, 127).to(torch.int8).reshape(m, k)
        return QuantizedActivation(q=q, scale=scale if per_tensor else scale.reshape(_scale_shape(plan, m, k)), key=key)

    # UINT8_ASYM, dynamic per tensor or per token
    if per_tensor:
        vmax = values.amax().reshape(1) if values.numel() else values.new_zeros(1)
        vmin = values.amin().reshape(1) if values.numel() else values.new_zeros(1)
    else:
        vmax, vmin = values.amax(dim=-1), values.amin(dim=-1)  # [M, 1]
    scale = _div((vmax - vmin).clamp(min=EPS), 255.0)
    azp = torch.round(-128.0 - vmin / scale)
    inv = _rdiv(1.0, scale)
    shape_b = (1, 1, 1) if per_tensor else (m, 1, 1)
    codes = torch.round(values * inv.reshape(shape_b)) + azp.reshape(shape_b)
    q = (codes.clamp(-128, 127) + 128).to(torch.uint8).reshape(m, k)
    zero_point = (azp + 128).to(torch.int32)
    if not per_tensor:
        scale, zero_point = scale.reshape(m, 1), zero_point.reshape(m, 1)
    return QuantizedActivation(q=q, scale=scale, key=key, zero_point=zero_point)


def _scale_shape(plan: _Plan, m: int, k: int) -> tuple[int, ...]:
    if plan.granularity is Granularity.TENSOR:
        return (1,)
    if plan.granularity is Granularity.TOKEN:
        return (m, 1)
    assert plan.group is not None
    return (m, k // plan.group)


def dequantize_activation(qa: QuantizedActivation) -> torch.Tensor:
    """``q * scale`` (asymmetric: ``(q - zero_point) * scale``) as a float32 ``[M, K]`` tensor.

    Checks that ``scale`` (and ``zero_point``) have the key's shape and dtype, so scales produced
    elsewhere (a kernel's own quantizer) can be dequantized too.
    """
    plan = _plan(qa.key)
    q = qa.q
    if q.dim() != 2:
        raise ValueError(f"quantized activation must be 2-D [M, K], got shape {tuple(q.shape)}")
    m, k = q.shape
    if plan.group is not None and k % plan.group != 0:
        raise ValueError(f"K = {k} is not divisible by the group size {plan.group} of key {_describe(qa.key)}")
    want_q = {
        _Kind.FP8: torch.float8_e4m3fn,
        _Kind.MX: torch.float8_e4m3fn,
        _Kind.INT8: torch.int8,
        _Kind.UINT8_ASYM: torch.uint8,
    }[plan.kind]
    if q.dtype != want_q:
        raise ValueError(f"codes for key {_describe(qa.key)} must be {want_q}, got {q.dtype}")
    shape = _scale_shape(plan, m, k)
    want_s = torch.uint8 if plan.kind is _Kind.MX else torch.float32
    if tuple(qa.scale.shape) != shape or qa.scale.dtype != want_s:
        raise ValueError(
            f"scale for key {_describe(qa.key)} on a [{m}, {k}] activation must be {want_s} {list(shape)}, "
            f"got {qa.scale.dtype} {list(qa.scale.shape)}"
        )
    if plan.kind is _Kind.UINT8_ASYM:
        zp = qa.zero_point
        if zp is None or tuple(zp.shape) != shape:
            got = None if zp is None else list(zp.shape)
            raise ValueError(f"key {_describe(qa.key)} needs a zero_point of shape {list(shape)}, got {got}")
    elif qa.zero_point is not None:
        raise ValueError(f"key {_describe(qa.key)} is symmetric: zero_point must be None")

    scale = decode_e8m0(qa.scale) if plan.kind is _Kind.MX else qa.scale
    codes = q.to(torch.float32)
    if plan.kind is _Kind.UINT8_ASYM:
        assert qa.zero_point is not None
        codes = codes - qa.zero_point.to(torch.float32)
    if plan.granularity is Granularity.GROUP:
        assert plan.group is not None
        return (codes.reshape(m, k // plan.group, plan.group) * scale.unsqueeze(-1)).reshape(m, k)
    return codes * scale  # [1] or [M, 1] broadcast
