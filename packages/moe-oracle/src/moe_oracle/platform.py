"""The hardware a layer will run on, as a value: detected, or parsed from a string.

Selection takes a :class:`Platform` argument, so any machine can ask "what would run on an XPU,
an H100 or a CPU?" and tests need no monkeypatching.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from quantkeys import PlatformKind
from quantkeys.platforms import PlatformText, parse_platform

# Optional kernel packages whose presence changes what a backend can do.
OPTIONAL_PACKAGES = ("triton", "vllm_xpu_kernels", "triton_experts", "xpu_experts")


def _installed() -> frozenset[str]:
    return frozenset(p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)


@dataclass(frozen=True, kw_only=True)
class Platform(PlatformText):
    """A device family with its capability.

    ``capability`` is the CUDA compute capability ``(major, minor)`` (None elsewhere); ``arch``
    names a ROCm or XPU architecture (``gfx942``, ``xe2``) when known. ``packages`` lists the
    optional kernel packages importable here (see ``OPTIONAL_PACKAGES``).
    """

    kind: PlatformKind
    capability: tuple[int, int] | None = None
    arch: str | None = None
    torch_version: str = ""
    packages: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.kind is PlatformKind.CUDA and self.capability is None:
            raise ValueError("a CUDA platform needs a compute capability, e.g. Platform.parse('cuda:9.0')")
        if self.kind is not PlatformKind.CUDA and self.capability is not None:
            raise ValueError(f"compute capability is a CUDA notion; {self.kind.value} platforms use arch")

    def has(self, package: str) -> bool:
        return package in self.packages

    @classmethod
    def parse(cls, text: str, *, packages: frozenset[str] | None = None) -> Platform:
        """``"cuda:9.0"``, ``"cuda:sm90"``, ``"rocm:gfx942"``, ``"xpu"``, ``"xpu:xe2"`` or ``"cpu"``.

        ``packages`` defaults to what is importable on this machine.
        """
        kind, capability, arch = parse_platform(text)
        import torch

        return cls(kind=kind, capability=capability, arch=arch, torch_version=torch.__version__,
                   packages=_installed() if packages is None else packages)

    @classmethod
    def detect(cls) -> Platform:
        """The platform of this process: CUDA/ROCm (torch.cuda), XPU (torch.xpu) or CPU."""
        import torch

        packages = _installed()
        if torch.cuda.is_available():
            if getattr(torch.version, "hip", None):
                props = torch.cuda.get_device_properties(0)
                arch = getattr(props, "gcnArchName", "").split(":")[0] or None
                return cls(kind=PlatformKind.ROCM, arch=arch, torch_version=torch.__version__, packages=packages)
            return cls(kind=PlatformKind.CUDA, capability=tuple(torch.cuda.get_device_capability(0)),  # type: ignore[arg-type]
                       torch_version=torch.__version__, packages=packages)
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            return cls(kind=PlatformKind.XPU, torch_version=torch.__version__, packages=packages)
        return cls(kind=PlatformKind.CPU, torch_version=torch.__version__, packages=packages)
