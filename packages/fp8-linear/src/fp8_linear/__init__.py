"""FP8 block-scaled linear layers: activation quant, GEMM kernels, a per-platform kernel registry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fp8-linear")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
