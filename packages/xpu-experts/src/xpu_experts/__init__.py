"""Intel XPU experts over vllm-xpu-kernels, with an emulation of the same contract that runs anywhere; the moe-oracle backend `xpu`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xpu-experts")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
