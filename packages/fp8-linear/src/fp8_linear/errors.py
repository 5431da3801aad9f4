"""Errors of fp8-linear: bad input (before any launch) and kernel selection."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Fp8LinearError(ValueError):
    """Base class of every error fp8-linear raises on purpose."""


class InvalidInputError(Fp8LinearError):
    """An operand has the wrong type, dtype, shape, strides or values; raised before any launch."""


class RejectReason(enum.Enum):
    """Why a kernel cannot (or, for ``SLOWER``, should not) serve a GEMM problem."""

    UNKNOWN_KERNEL = "unknown kernel"
    MISSING_DEPENDENCY = "missing dependency"
    PLATFORM = "platform"
    DEVICE_CAPABILITY = "device capability"
    TORCH_VERSION = "torch version"
    GRANULARITY = "scale granularity"
    BLOCK_SIZE = "block size"
    DTYPE = "dtype"
    SHAPE = "shape"
    SLOWER = "slower here"  # measured slower than the next kernel; ignored when the kernel is forced


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """One kernel's reason for not serving a problem."""

    kernel: str
    reason: RejectReason
    detail: str

    def __str__(self) -> str:
        return f"{self.kernel}: {self.reason.value}: {self.detail}"


class KernelSelectionError(Fp8LinearError):
    """No kernel was selected; ``trail`` holds every rejection met."""

    def __init__(self, message: str, trail: tuple[Rejection, ...] = ()) -> None:
        self.trail = trail
        if trail:
            message += "\n" + "\n".join(f"  - {r}" for r in trail)
        super().__init__(message)


class UnknownKernelError(KernelSelectionError):
    """A kernel name that the registry does not know."""


class ForcedKernelError(KernelSelectionError):
    """The forced kernel cannot serve the problem; the trail says why."""


class NoKernelError(KernelSelectionError):
    """No kernel of the platform's list serves the problem."""
