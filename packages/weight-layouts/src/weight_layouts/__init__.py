"""Decode/encode quantized checkpoint formats, stream MoE experts out of safetensors, convert them to each backend's layout."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("weight-layouts")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
