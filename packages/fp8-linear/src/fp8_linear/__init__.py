"""FP8 block-scaled linear layers: activation quant, GEMM kernels, a per-platform kernel registry.

* :func:`per_token_group_quant`: ``x`` [..., K] -> FP8 ``x_q`` and float32 scales [..., K/group]
  (vLLM's contract: ``scale = max(absmax, 1e-10) / 448``, ``q = fp8(clamp(x / scale))``).
* :func:`block_scaled_mm`: ``a_q`` [..., K] x ``w_q`` [N, K] with block / per-token x per-channel /
  per-tensor / MX scales, bf16 / fp16 / fp32 output, optional bias; the kernel is chosen per
  platform (:mod:`fp8_linear.registry`) or forced by name.
* :class:`Fp8BlockLinear`: a ``torch.nn.Module`` from a checkpoint's ``weight`` + ``weight_scale_inv``.

Importing fp8_linear does not import triton.
"""

from importlib.metadata import PackageNotFoundError, version

from ._generated_variants import VARIANTS, Granularity
from .errors import (
    ForcedKernelError,
    Fp8LinearError,
    InvalidInputError,
    KernelSelectionError,
    NoKernelError,
    Rejection,
    RejectReason,
    UnknownKernelError,
)
from .fp8 import to_fnuz
from .gemm import block_scaled_mm, clear_caches
from .module import Fp8BlockLinear
from .platform import LinearPlatform, QuantBackend, ScaledMMApi, TritonOptions, triton_options
from .problem import GemmProblem
from .quant import per_token_group_quant
from .registry import KERNEL_ORDER, KERNELS, KernelChoice, explain, select_kernel
from .tuned import GemmConfig
from .variant_types import GemmVariant

try:
    __version__ = version("fp8-linear")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "KERNELS",
    "KERNEL_ORDER",
    "VARIANTS",
    "ForcedKernelError",
    "Fp8BlockLinear",
    "Fp8LinearError",
    "GemmConfig",
    "GemmProblem",
    "GemmVariant",
    "Granularity",
    "InvalidInputError",
    "KernelChoice",
    "KernelSelectionError",
    "LinearPlatform",
    "NoKernelError",
    "QuantBackend",
    "RejectReason",
    "Rejection",
    "ScaledMMApi",
    "TritonOptions",
    "UnknownKernelError",
    "block_scaled_mm",
    "clear_caches",
    "explain",
    "per_token_group_quant",
    "select_kernel",
    "to_fnuz",
    "triton_options",
]
