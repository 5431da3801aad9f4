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


class PlatformText:
    """Mixin of the platform records (moe-oracle's ``Platform``, fp8-linear's ``LinearPlatform``):
    the ``"cuda:9.0"`` / ``"rocm:gfx942"`` / ``"cpu"`` text that :func:`parse_platform` reads back,
    and the CUDA capability test. The record provides ``kind``, ``capability`` and ``arch``."""

    kind: PlatformKind
    capability: tuple[int, int] | None
    arch: str | None

    def at_least(self, major: int, minor: int = 0) -> bool:
        """True on CUDA devices of capability >= major.minor."""
        return self.capability is not None and self.capability >= (major, minor)

    def __str__(self) -> str:
        if self.capability is not None:
            return f"{self.kind.value}:{self.capability[0]}.{self.capability[1]}"
        if self.arch:
            return f"{self.kind.value}:{self.arch}"
        return self.kind.value


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
