"""Fused-MoE Triton kernels for NVIDIA (and other Triton) GPUs, registered as the moe-oracle backend `triton`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("triton-experts")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
