"""Logical quantized number formats, kept apart from the containers that store them.

A :class:`QuantDType` says what a value *means* (a signed 4-bit integer, an FP4 E2M1 code, a
power-of-two E8M0 scale). How it is *stored* (two codes per ``uint8``, eight per ``int32``, a
raw ``uint8`` byte for E8M0) is a property of a checkpoint format or a kernel layout, described
by :attr:`QuantDType.storage`, and never part of a :class:`~quantkeys.QuantKey`'s identity.

Torch is optional: ``torch_dtype()`` / ``storage_torch_dtype()`` import it lazily.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch


class NumberKind(enum.Enum):
    """The family of a number format."""

    FLOAT = "float"
    INT = "int"
    UINT = "uint"
    EXPONENT = "exponent"  # scale-only formats such as E8M0


@dataclass(frozen=True)
class _DTypeInfo:
    label: str
    kind: NumberKind
    bits: int
    # Range of the representable values (for floats: +-max_finite; for ints: [min, max]).
    min_value: float
    max_value: float
    # Name of the exact torch dtype, when torch has one.
    torch_name: str | None
    # Name of the canonical torch storage container and how many values one element holds.
    storage_name: str
    per_storage_element: int


class QuantDType(enum.Enum):
    """A logical number format used by quantized weights, activations or scales.

    ``str(dtype)`` is the short label used in QuantKey strings (``fp8e4m3``, ``int4`` ...).
    """

    FP8_E4M3 = _DTypeInfo("fp8e4m3", NumberKind.FLOAT, 8, -448.0, 448.0, "float8_e4m3fn", "float8_e4m3fn", 1)
    FP8_E4M3_FNUZ = _DTypeInfo(
        "fp8e4m3fnuz", NumberKind.FLOAT, 8, -240.0, 240.0, "float8_e4m3fnuz", "float8_e4m3fnuz", 1
    )
    FP8_E5M2 = _DTypeInfo("fp8e5m2", NumberKind.FLOAT, 8, -57344.0, 57344.0, "float8_e5m2", "float8_e5m2", 1)
    FP4_E2M1 = _DTypeInfo("fp4e2m1", NumberKind.FLOAT, 4, -6.0, 6.0, None, "uint8", 2)
    INT8 = _DTypeInfo("int8", NumberKind.INT, 8, -128, 127, "int8", "int8", 1)
    UINT8 = _DTypeInfo("uint8", NumberKind.UINT, 8, 0, 255, "uint8", "uint8", 1)
    INT4 = _DTypeInfo("int4", NumberKind.INT, 4, -8, 7, None, "uint8", 2)
    UINT4 = _DTypeInfo("uint4", NumberKind.UINT, 4, 0, 15, None, "uint8", 2)
    E8M0 = _DTypeInfo("e8m0", NumberKind.EXPONENT, 8, 2.0**-127, 2.0**127, "float8_e8m0fnu", "uint8", 1)
    FP32 = _DTypeInfo("fp32", NumberKind.FLOAT, 32, -3.4028234663852886e38, 3.4028234663852886e38, "float32", "float32", 1)
    FP16 = _DTypeInfo("fp16", NumberKind.FLOAT, 16, -65504.0, 65504.0, "float16", "float16", 1)
    BF16 = _DTypeInfo("bf16", NumberKind.FLOAT, 16, -3.3895313892515355e38, 3.3895313892515355e38, "bfloat16", "bfloat16", 1)

    @property
    def label(self) -> str:
        return self.value.label

    @property
    def kind(self) -> NumberKind:
        return self.value.kind

    @property
    def bits(self) -> int:
        return self.value.bits

    @property
    def min_value(self) -> float:
        return self.value.min_value

    @property
    def max_value(self) -> float:
        """Largest finite value (floats) or largest integer code (ints)."""
        return self.value.max_value

    @property
    def storage(self) -> str:
        """Name of the canonical torch container (``uint8`` for packed 4-bit and for E8M0)."""
        return self.value.storage_name

    @property
    def per_storage_element(self) -> int:
        """How many values one element of :attr:`storage` holds (2 for packed 4-bit)."""
        return self.value.per_storage_element

    @property
    def is_packed(self) -> bool:
        return self.value.per_storage_element > 1

    def torch_dtype(self) -> torch.dtype | None:
        """The exact torch dtype for this format, or None when torch has none (int4, fp4).

        Raises ImportError if torch is not installed.
        """
        resolved: torch.dtype | None = _resolve(self.value.torch_name)
        return resolved

    def storage_torch_dtype(self) -> torch.dtype:
        """The canonical torch container dtype. Raises ImportError without torch."""
        resolved: torch.dtype | None = _resolve(self.value.storage_name)
        assert resolved is not None
        return resolved

    def __str__(self) -> str:
        return self.value.label

    def __repr__(self) -> str:
        return f"QuantDType.{self.name}"

    @classmethod
    def from_label(cls, label: str) -> QuantDType:
        """Look a dtype up by its label (``"fp8e4m3"``); ValueError lists the valid labels."""
        for member in cls:
            if member.label == label:
                return member
        valid = ", ".join(m.label for m in cls)
        raise ValueError(f"unknown quant dtype {label!r}; expected one of: {valid}")


def _resolve(name: str | None) -> Any:
    if name is None:
        return None
    import torch

    return getattr(torch, name, None)
