"""The hardware a GEMM will run on, as a value: detected, or parsed from a string.

Selection takes a :class:`LinearPlatform`, so any machine can ask "what would run on an H100,
an MI300 or an XPU?" and tests need no monkeypatching. The kernels read from it the per-platform
launch choices (:class:`TritonOptions`): FP8 operands read natively or as bytes, E8M0 scales
decoded in the kernel or upcast to float32 first, activation quant in Triton or a custom op.
"""

from __future__ import annotations

import enum
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from quantkeys import PlatformKind
from quantkeys.platforms import PlatformText, parse_platform

from .fp8 import E4M3FN, E4M3FNUZ


class ScaledMMApi(enum.Enum):
    """What the installed torch offers for cuBLAS blockwise (1x128 x 128x128) FP8 GEMMs."""

    V2 = "v2"  # torch.nn.functional.scaled_mm with ScalingType.BlockWise1x128 (validates scale layouts)
    V1 = "v1"  # torch._scaled_mm only (silently wrong when ceil(K/128) % 4 != 0 in torch 2.11)
    NONE = "none"

    @classmethod
    def detect(cls) -> ScaledMMApi:
        functional = torch.nn.functional
        scaling = getattr(functional, "ScalingType", None)
        if hasattr(functional, "scaled_mm") and scaling is not None and hasattr(scaling, "BlockWise1x128"):
            return cls.V2
        major, minor = (int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
        return cls.V1 if (major, minor) >= (2, 9) and hasattr(torch, "_scaled_mm") else cls.NONE


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True, kw_only=True)
class LinearPlatform(PlatformText):
    """A device family with its capability, as far as the FP8 linear kernels care.

    ``capability``: CUDA compute capability ``(major, minor)`` (None elsewhere). ``arch``: ROCm or
    XPU architecture (``gfx942``, ``xe2``) when known. ``device_name``: the device's name, used to
    find tuned configs (None when parsed). ``triton``: triton is importable. ``interpret``:
    TRITON_INTERPRET=1 (Triton kernels run on the CPU). ``scaled_mm``: the torch blockwise API.
    ``num_sms``: streaming multiprocessors (compute units), when detected.
    """

    kind: PlatformKind
    capability: tuple[int, int] | None = None
    arch: str | None = None
    device_name: str | None = None
    triton: bool = False
    interpret: bool = False
    scaled_mm: ScaledMMApi = ScaledMMApi.NONE
    num_sms: int | None = None

    def __post_init__(self) -> None:
        if self.kind is PlatformKind.CUDA and self.capability is None:
            raise ValueError("a CUDA platform needs a compute capability, e.g. LinearPlatform.parse('cuda:9.0')")
        if self.kind is not PlatformKind.CUDA and self.capability is not None:
            raise ValueError(f"compute capability is a CUDA notion; {self.kind.value} platforms use arch")

    @property
    def fp8_dtype(self) -> torch.dtype:
        """The FP8 dtype kernels compute in: e4m3fnuz on ROCm gfx94x (MI300; also when the arch is
        unknown), e4m3fn everywhere else (gfx950 and later use the OCP format)."""
        if self.kind is PlatformKind.ROCM and (self.arch is None or self.arch.startswith("gfx94")):
            return E4M3FNUZ
        return E4M3FN

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        triton: bool | None = None,
        interpret: bool | None = None,
        scaled_mm: ScaledMMApi | None = None,
        device_name: str | None = None,
    ) -> LinearPlatform:
        """``"cuda:9.0"``, ``"cuda:sm90"``, ``"rocm:gfx942"``, ``"xpu"``, ``"xpu:xe2"`` or ``"cpu"``.

        The software fields default to what this machine has (triton importable, TRITON_INTERPRET,
        the installed torch's blockwise API).
        """
        kind, capability, arch = parse_platform(text)
        return cls(
            kind=kind,
            capability=capability,
            arch=arch,
            device_name=device_name,
            triton=_triton_installed() if triton is None else triton,
            interpret=_interpreting() if interpret is None else interpret,
            scaled_mm=ScaledMMApi.detect() if scaled_mm is None else scaled_mm,
        )

    @classmethod
    def detect(cls) -> LinearPlatform:
        """The platform of this process: CUDA/ROCm (torch.cuda), XPU (torch.xpu) or CPU."""
        common: dict[str, Any] = {"triton": _triton_installed(), "interpret": _interpreting(),
                                  "scaled_mm": ScaledMMApi.detect()}
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            common["num_sms"] = torch.cuda.get_device_properties(0).multi_processor_count
            if getattr(torch.version, "hip", None):
                props = torch.cuda.get_device_properties(0)
                arch = getattr(props, "gcnArchName", "").split(":")[0] or None
                return cls(kind=PlatformKind.ROCM, arch=arch, device_name=name, **common)
            cap = torch.cuda.get_device_capability(0)
            return cls(kind=PlatformKind.CUDA, capability=(int(cap[0]), int(cap[1])), device_name=name, **common)
        xpu = getattr(torch, "xpu", None)
        if xpu is not None and xpu.is_available():
            return cls(kind=PlatformKind.XPU, device_name=xpu.get_device_name(0), **common)
        return cls(kind=PlatformKind.CPU, **common)


class QuantBackend(enum.Enum):
    """Who runs per-token-group activation quantization."""

    TRITON = "triton"  # the Triton kernel (fp8 conversion in Triton)
    CUSTOM_OP = "custom_op"  # torch.ops.fp8_linear.per_token_group_quant: torch math behind a custom op
    REFERENCE = "reference"  # the plain torch reference


@dataclass(frozen=True, kw_only=True)
class TritonOptions:
    """How the Triton kernels are launched on a platform.

    ``fp8_as_bytes``: pass FP8 operands as uint8 and decode them to fp16 in the kernel (for Triton
    builds that cannot compile fp8e4nv: Intel XPU, CUDA below sm89). ``upcast_e8m0``: turn E8M0
    scales into float32 before the launch (ROCm, XPU). ``quant``: who quantizes activations.
    ``exact_rounding``: round to the FP8 grid by hand before the cast (the interpreter's fp8 cast
    does not round to nearest even; GPUs do).
    """

    fp8_as_bytes: bool
    upcast_e8m0: bool
    quant: QuantBackend
    exact_rounding: bool


def triton_options(platform: LinearPlatform) -> TritonOptions:
    """The per-platform launch choices (see :class:`TritonOptions`)."""
    kind = platform.kind
    if kind is PlatformKind.XPU:
        return TritonOptions(fp8_as_bytes=True, upcast_e8m0=True, quant=QuantBackend.CUSTOM_OP,
                             exact_rounding=platform.interpret)
    if kind is PlatformKind.ROCM:
        return TritonOptions(fp8_as_bytes=False, upcast_e8m0=True, quant=QuantBackend.TRITON,
                             exact_rounding=platform.interpret)
    if kind is PlatformKind.CUDA and not platform.at_least(8, 9):
        return TritonOptions(fp8_as_bytes=True, upcast_e8m0=False, quant=QuantBackend.CUSTOM_OP,
                             exact_rounding=platform.interpret)
    return TritonOptions(fp8_as_bytes=False, upcast_e8m0=False, quant=QuantBackend.TRITON,
                         exact_rounding=platform.interpret)


def default_quant_backend(platform: LinearPlatform) -> QuantBackend:
    """Triton where it can convert to FP8 (CUDA sm89+, ROCm), the custom op on XPU and older CUDA,
    the reference on the CPU and wherever triton is missing."""
    if platform.kind is PlatformKind.CPU:
        return QuantBackend.REFERENCE
    choice = triton_options(platform).quant
    if choice is QuantBackend.TRITON and not platform.triton:
        return QuantBackend.REFERENCE
    return choice
