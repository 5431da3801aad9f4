"""QuantKey: what a quantized tensor is (number format, scale description, symmetry).

A QuantKey is the unit the oracle matches on: every experts backend declares the
``(weight_key, activation_key)`` pairs it serves. Keys are frozen, hashable and compare by
value. ``str(key)`` is readable (``fp8e4m3 static 128x128 sym``) and :func:`parse_key` reads
it back, together with the named constants' names (``kFp8Static128BlockSym``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .dtypes import NumberKind, QuantDType
from .group_shape import Granularity, GroupShape


class ScaleKind(enum.Enum):
    """When a scale is known: stored in the checkpoint (static) or computed at run time (dynamic)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


@dataclass(frozen=True, kw_only=True)
class ScaleDesc:
    """How a tensor is scaled.

    ``dtype`` is the scale's number format: ``FP32`` means "a float scale" (checkpoints store
    fp32, bf16 or fp16; kernels cast to what they need), ``E8M0`` a power of two (MX), and
    ``FP8_E4M3`` the NVFP4 group scales. Scales multiply to dequantize.
    """

    dtype: QuantDType = QuantDType.FP32
    kind: ScaleKind
    group_shape: GroupShape

    def __post_init__(self) -> None:
        if self.dtype.kind is NumberKind.INT or self.dtype.kind is NumberKind.UINT:
            raise ValueError(f"a scale cannot be an integer format, got {self.dtype}")

    @property
    def is_static(self) -> bool:
        return self.kind is ScaleKind.STATIC

    @property
    def is_dynamic(self) -> bool:
        return self.kind is ScaleKind.DYNAMIC

    def __str__(self) -> str:
        text = f"{self.kind.value} {self.group_shape}"
        if self.dtype is not QuantDType.FP32:
            text += f" {self.dtype}"
        return text


@dataclass(frozen=True, kw_only=True)
class QuantKey:
    """A quantized tensor's scheme: number format, scale, symmetry, optional second-level scale.

    ``symmetric=False`` means the tensor carries zero points (integer formats only).
    ``scale2`` is a second, coarser scale multiplied in (NVFP4's per-tensor global scale).
    """

    dtype: QuantDType
    scale: ScaleDesc
    symmetric: bool = True
    scale2: ScaleDesc | None = None

    def __post_init__(self) -> None:
        if self.dtype.kind is NumberKind.EXPONENT:
            raise ValueError(f"{self.dtype} is a scale format, not a tensor format")
        if not self.symmetric and self.dtype.kind is NumberKind.FLOAT:
            raise ValueError(f"asymmetric (zero-point) quantization is defined for integer formats, not {self.dtype}")
        if self.symmetric and self.dtype.kind is NumberKind.UINT:
            raise ValueError(
                f"{self.dtype} is the unsigned code range of an asymmetric format; a symmetric key uses "
                f"the signed format ({self.dtype.label[1:]})"
            )
        if self.scale2 is not None and self.scale2.group_shape.granularity is not Granularity.TENSOR:
            raise ValueError(f"scale2 must be per-tensor, got {self.scale2.group_shape}")

    @property
    def is_static(self) -> bool:
        return self.scale.is_static

    @property
    def is_dynamic(self) -> bool:
        return self.scale.is_dynamic

    @property
    def group_shape(self) -> GroupShape:
        return self.scale.group_shape

    @property
    def name(self) -> str | None:
        """The named constant this key equals (``kFp8Static128BlockSym``), or None."""
        from .named import key_name

        return key_name(self)

    def __str__(self) -> str:
        text = f"{self.dtype} {self.scale} {'sym' if self.symmetric else 'asym'}"
        if self.scale2 is not None:
            text += f" + {self.scale2}"
        return text


_SCALE_RE = re.compile(
    r"(?P<kind>static|dynamic)\s+(?P<shape>tensor|token|channel|\d+x\d+)(?:\s+(?P<sdtype>[a-z0-9]+))?"
)
_KEY_RE = re.compile(
    r"^\s*(?P<dtype>[a-z0-9]+)\s+(?P<scale>(?:static|dynamic)\s+\S+(?:\s+(?!sym|asym)[a-z0-9]+)?)\s+"
    r"(?P<sym>sym|asym)(?:\s*\+\s*(?P<scale2>.+?))?\s*$"
)


def _parse_group_shape(text: str) -> GroupShape:
    if text == "tensor":
        return GroupShape.per_tensor()
    if text == "token":
        return GroupShape.per_token()
    if text == "channel":
        return GroupShape.per_channel()
    rows, cols = (int(x) for x in text.split("x"))
    return GroupShape.block(rows, cols)


def _parse_scale(text: str) -> ScaleDesc:
    m = _SCALE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"cannot parse scale description {text!r}; expected e.g. 'static 128x128' or 'dynamic token'")
    dtype = QuantDType.from_label(m["sdtype"]) if m["sdtype"] else QuantDType.FP32
    return ScaleDesc(dtype=dtype, kind=ScaleKind(m["kind"]), group_shape=_parse_group_shape(m["shape"]))


def parse_key(text: str) -> QuantKey | None:
    """Read a key from a named constant's name or from ``str(key)`` form.

    ``"none"`` (any case) gives None, meaning "not quantized". Raises ValueError otherwise.
    """
    from .named import NAMED_KEYS

    stripped = text.strip()
    if stripped.lower() == "none":
        return None
    if stripped in NAMED_KEYS:
        return NAMED_KEYS[stripped]
    m = _KEY_RE.match(stripped)
    if m is None:
        raise ValueError(
            f"cannot parse quant key {text!r}; expected a named key such as 'kFp8Static128BlockSym' "
            "or the form 'fp8e4m3 static 128x128 sym'"
        )
    return QuantKey(
        dtype=QuantDType.from_label(m["dtype"]),
        scale=_parse_scale(m["scale"]),
        symmetric=m["sym"] == "sym",
        scale2=_parse_scale(m["scale2"]) if m["scale2"] else None,
    )
