"""Every named QuantKey, with vLLM's names and meanings, minus vLLM's ambiguities.

Differences from vLLM's vocabulary, on purpose:

* Logical dtypes only: int4 / fp4 e2m1 / e8m0 are formats, not the uint8 / int32 containers.
* Weight group sizes are explicit. ``kInt4Static`` is int4 with **1x128** groups (the GPTQ
  default), ``kInt4Static32`` 1x32, ``kInt4StaticChannel`` one scale per output channel; none
  of them looks like per-token.
* Per-channel (weights) and per-token (activations) are distinct group shapes.
* Each constant is defined once; no two names denote the same key.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .dtypes import QuantDType
from .group_shape import GroupShape
from .keys import QuantKey, ScaleDesc, ScaleKind

__all__ = [  # noqa: RUF022  (grouped as defined below)
    "kFp8StaticTensorSym",
    "kFp8DynamicTensorSym",
    "kFp8StaticTokenSym",
    "kFp8DynamicTokenSym",
    "kFp8StaticChannelSym",
    "kFp8Static128BlockSym",
    "kFp8Static128BlockE8M0Sym",
    "kFp8Dynamic128Sym",
    "kFp8Dynamic64Sym",
    "kFp8Dynamic32Sym",
    "kInt8StaticChannelSym",
    "kInt8StaticTensorSym",
    "kInt8DynamicTokenSym",
    "kInt8DynamicTensorSym",
    "kInt8StaticTensorAsym",
    "kInt8DynamicTokenAsym",
    "kInt8DynamicTensorAsym",
    "kInt4Static",
    "kInt4Static64",
    "kInt4Static32",
    "kInt4StaticChannel",
    "kInt4StaticAsym",
    "kInt4Static64Asym",
    "kInt4Static32Asym",
    "kInt4StaticChannelAsym",
    "kInt8Static",
    "kInt8Static64",
    "kInt8Static32",
    "kInt8StaticAsym",
    "kMxfp8Static",
    "kMxfp8Dynamic",
    "kMxfp4Static",
    "kMxfp4Dynamic",
    "kNvfp4Static",
    "kNvfp4Dynamic",
]

_S, _D = ScaleKind.STATIC, ScaleKind.DYNAMIC
FP8 = QuantDType.FP8_E4M3


def _key(
    dtype: QuantDType,
    kind: ScaleKind,
    shape: GroupShape,
    *,
    scale_dtype: QuantDType = QuantDType.FP32,
    symmetric: bool = True,
    scale2: ScaleDesc | None = None,
) -> QuantKey:
    return QuantKey(
        dtype=dtype,
        scale=ScaleDesc(dtype=scale_dtype, kind=kind, group_shape=shape),
        symmetric=symmetric,
        scale2=scale2,
    )


def int_weight_key(*, bits: int, group_size: int | None, symmetric: bool) -> QuantKey:
    """Static integer weight key: ``bits`` in {4, 8}, ``group_size`` None for per-channel."""
    if bits not in (4, 8):
        raise ValueError(f"integer weight keys exist for 4 and 8 bits, got bits={bits}")
    if symmetric:
        dtype = QuantDType.INT4 if bits == 4 else QuantDType.INT8
    else:
        dtype = QuantDType.UINT4 if bits == 4 else QuantDType.UINT8
    shape = GroupShape.per_channel() if group_size is None else GroupShape.group(group_size)
    return _key(dtype, _S, shape, symmetric=symmetric)


_TENSOR, _TOKEN, _CHANNEL = GroupShape.per_tensor(), GroupShape.per_token(), GroupShape.per_channel()
_GLOBAL = ScaleDesc(kind=_S, group_shape=_TENSOR)

# --- FP8 ------------------------------------------------------------------------------------
kFp8StaticTensorSym = _key(FP8, _S, _TENSOR)
kFp8DynamicTensorSym = _key(FP8, _D, _TENSOR)
kFp8StaticTokenSym = _key(FP8, _S, _TOKEN)
kFp8DynamicTokenSym = _key(FP8, _D, _TOKEN)
kFp8StaticChannelSym = _key(FP8, _S, _CHANNEL)
kFp8Static128BlockSym = _key(FP8, _S, GroupShape.block(128, 128))
kFp8Static128BlockE8M0Sym = _key(FP8, _S, GroupShape.block(128, 128), scale_dtype=QuantDType.E8M0)
kFp8Dynamic128Sym = _key(FP8, _D, GroupShape.group(128))
kFp8Dynamic64Sym = _key(FP8, _D, GroupShape.group(64))
kFp8Dynamic32Sym = _key(FP8, _D, GroupShape.group(32))

# --- INT8 W8A8 ------------------------------------------------------------------------------
kInt8StaticChannelSym = _key(QuantDType.INT8, _S, _CHANNEL)
kInt8StaticTensorSym = _key(QuantDType.INT8, _S, _TENSOR)
kInt8DynamicTokenSym = _key(QuantDType.INT8, _D, _TOKEN)
kInt8DynamicTensorSym = _key(QuantDType.INT8, _D, _TENSOR)
kInt8StaticTensorAsym = _key(QuantDType.UINT8, _S, _TENSOR, symmetric=False)
kInt8DynamicTokenAsym = _key(QuantDType.UINT8, _D, _TOKEN, symmetric=False)
kInt8DynamicTensorAsym = _key(QuantDType.UINT8, _D, _TENSOR, symmetric=False)

# --- INT4 / INT8 weight-only (GPTQ, AWQ, compressed-tensors pack-quantized) ------------------
kInt4Static = int_weight_key(bits=4, group_size=128, symmetric=True)
kInt4Static64 = int_weight_key(bits=4, group_size=64, symmetric=True)
kInt4Static32 = int_weight_key(bits=4, group_size=32, symmetric=True)
kInt4StaticChannel = int_weight_key(bits=4, group_size=None, symmetric=True)
kInt4StaticAsym = int_weight_key(bits=4, group_size=128, symmetric=False)
kInt4Static64Asym = int_weight_key(bits=4, group_size=64, symmetric=False)
kInt4Static32Asym = int_weight_key(bits=4, group_size=32, symmetric=False)
kInt4StaticChannelAsym = int_weight_key(bits=4, group_size=None, symmetric=False)
kInt8Static = int_weight_key(bits=8, group_size=128, symmetric=True)
kInt8Static64 = int_weight_key(bits=8, group_size=64, symmetric=True)
kInt8Static32 = int_weight_key(bits=8, group_size=32, symmetric=True)
kInt8StaticAsym = int_weight_key(bits=8, group_size=128, symmetric=False)
# (per-channel symmetric int8 weights are kInt8StaticChannelSym, shared with W8A8)

# --- OCP MX (E8M0 scale per 32 along K) -------------------------------------------------------
_MX = GroupShape.group(32)
kMxfp8Static = _key(FP8, _S, _MX, scale_dtype=QuantDType.E8M0)
kMxfp8Dynamic = _key(FP8, _D, _MX, scale_dtype=QuantDType.E8M0)
kMxfp4Static = _key(QuantDType.FP4_E2M1, _S, _MX, scale_dtype=QuantDType.E8M0)
kMxfp4Dynamic = _key(QuantDType.FP4_E2M1, _D, _MX, scale_dtype=QuantDType.E8M0)

# --- NVFP4 (FP8 E4M3 scale per 16, times a per-tensor fp32 global scale) ---------------------
kNvfp4Static = _key(QuantDType.FP4_E2M1, _S, GroupShape.group(16), scale_dtype=FP8, scale2=_GLOBAL)
kNvfp4Dynamic = _key(QuantDType.FP4_E2M1, _D, GroupShape.group(16), scale_dtype=FP8, scale2=_GLOBAL)


def _collect() -> dict[str, QuantKey]:
    found = {name: value for name, value in globals().items() if name.startswith("k") and isinstance(value, QuantKey)}
    by_value: dict[QuantKey, str] = {}
    for name, value in found.items():
        if value in by_value:
            raise AssertionError(f"{name} and {by_value[value]} denote the same key {value}")
        by_value[value] = name
    return found


NAMED_KEYS: Mapping[str, QuantKey] = MappingProxyType(_collect())
_NAME_OF: Mapping[QuantKey, str] = MappingProxyType({v: k for k, v in NAMED_KEYS.items()})


def key_name(key: QuantKey | None) -> str | None:
    """The constant's name for ``key`` (``"kFp8Static128BlockSym"``), ``"none"`` for None, else None."""
    if key is None:
        return "none"
    return _NAME_OF.get(key)


def get_key(name: str) -> QuantKey:
    """The named key ``name``; KeyError lists close matches."""
    try:
        return NAMED_KEYS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(NAMED_KEYS), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no named quant key {name!r}{hint}") from None
