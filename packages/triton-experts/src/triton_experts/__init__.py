"""triton-experts: fused-MoE Triton kernels (one generated variant per scheme), registered as the
``triton`` backend of moe-oracle and the ``triton`` layout of weight-layouts."""

from importlib.metadata import PackageNotFoundError, version

from . import layout as _layout  # noqa: F401  (registers the triton layout)
from .align import Alignment, align_by_expert
from .experts import TritonExperts

try:
    __version__ = version("triton-experts")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["Alignment", "TritonExperts", "align_by_expert"]
