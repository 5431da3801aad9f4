"""Platform kinds the spec table and the oracle know about."""

from __future__ import annotations

import enum


class PlatformKind(enum.Enum):
    """A family of devices with its own kernels."""

    CUDA = "cuda"
    ROCM = "rocm"
    XPU = "xpu"
    CPU = "cpu"

    def __str__(self) -> str:
        return self.value
