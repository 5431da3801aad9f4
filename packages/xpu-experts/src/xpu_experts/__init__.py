"""xpu-experts: Intel XPU MoE experts over vllm-xpu-kernels, with a torch emulation of the same
contract that runs anywhere. Registers the ``xpu`` backend of moe-oracle and the ``xpu`` layout of
weight-layouts.
"""

from importlib.metadata import PackageNotFoundError, version

from . import layout as _layout  # noqa: F401  (registers the xpu layout)
from ._generated_experts import (
    ALL_EXPERTS,
    XPUExperts,
    XPUExpertsBlockFp8,
    XPUExpertsFp8,
    XPUExpertsMxFp4,
    XPUExpertsMxFp8,
    XPUExpertsWNA16,
)
from .adapter import KernelApi, XpuFusedMoeAdapter, XpuKernelVersionError, detect_api
from .base import XPUExpertsBase
from .emulation import XpuFusedMoeEmulation
from .recipes import XpuRecipe

try:
    __version__ = version("xpu-experts")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "ALL_EXPERTS",
    "KernelApi",
    "XPUExperts",
    "XPUExpertsBase",
    "XPUExpertsBlockFp8",
    "XPUExpertsFp8",
    "XPUExpertsMxFp4",
    "XPUExpertsMxFp8",
    "XPUExpertsWNA16",
    "XpuFusedMoeAdapter",
    "XpuFusedMoeEmulation",
    "XpuKernelVersionError",
    "XpuRecipe",
    "detect_api",
]
