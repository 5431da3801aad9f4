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


def parse_platform(text: str) -> tuple[PlatformKind, tuple[int, int] | None, str | None]:
    """``"cuda:9.0"``, ``"cuda:sm90"``, ``"rocm:gfx942"``, ``"xpu"``, ``"xpu:xe2"``, ``"cpu"`` ->
    ``(kind, CUDA capability or None, architecture or None)``. ValueError names what was wrong."""
    import re

    kind_text, _, detail = text.strip().lower().partition(":")
    try:
        kind = PlatformKind(kind_text)
    except ValueError:
        valid = ", ".join(k.value for k in PlatformKind)
        raise ValueError(f"unknown platform {text!r}; expected one of {valid}, e.g. 'cuda:9.0'") from None
    if kind is not PlatformKind.CUDA:
        return kind, None, detail or None
    m = re.fullmatch(r"(?:sm_?)?(\d+)(?:\.(\d+))?", detail)
    if m is None:
        raise ValueError(f"cannot read a compute capability from {text!r}; write 'cuda:9.0' or 'cuda:sm90'")
    if m.group(2) is not None:
        return kind, (int(m.group(1)), int(m.group(2))), None
    digits = m.group(1)
    return kind, ((int(digits[:-1]), int(digits[-1])) if len(digits) > 1 else (int(digits), 0)), None
