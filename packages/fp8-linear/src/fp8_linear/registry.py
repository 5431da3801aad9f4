"""Per-platform kernel registry and selection, with the reason every other kernel was rejected.

Each platform has an ordered list of kernels (:data:`KERNEL_ORDER`); each kernel answers
``is_supported(platform, problem) -> (ok, rejection)``. Selection walks the list and takes the
first kernel that accepts. Where both cuBLAS and Triton accept, :mod:`fp8_linear.dispatch` says
which one is faster for this shape and M on this device (the measured dispatch table, else the
tuned timings, else a heuristic); cuBLAS is passed over with reason ``slower here`` when Triton is,
and the choice records why it won either way.
Precedence: ``force=`` argument > ``FP8_LINEAR_KERNEL`` > automatic; a forced
kernel that cannot serve the problem raises with its reason (no silent fallback).

* cuda: ``cublas`` (torch blockwise cuBLASLt; SM90, 1x128 x 128x128 only), ``triton``, ``reference``
* rocm: ``triton`` (FP8 in the platform's dtype: e4m3fnuz on gfx94x), ``reference``
* xpu: ``triton`` (FP8 read as bytes, E8M0 scales upcast, activation quant through the custom op), ``reference``
* cpu: ``reference`` (``triton`` can be forced under TRITON_INTERPRET=1)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import ClassVar

import torch

from quantkeys import PlatformKind

from ._generated_variants import Granularity
from .dispatch import prefer
from .errors import ForcedKernelError, NoKernelError, Rejection, RejectReason, UnknownKernelError
from .fp8 import E4M3FN
from .platform import LinearPlatform, ScaledMMApi, triton_options
from .problem import GemmProblem
from .tuned import Engine, GemmConfig, choose_config
from .validation import GemmOperands

log = logging.getLogger("fp8_linear")
ENV_KERNEL = "FP8_LINEAR_KERNEL"

Verdict = tuple[bool, "Rejection | None"]


class GemmKernel:
    """A GEMM implementation the registry can choose."""

    name: ClassVar[str]
    description: ClassVar[str]
    column_major_scales: ClassVar[bool] = False  # the activation-scale layout it reads fastest

    def reject(self, reason: RejectReason, detail: str) -> Verdict:
        return False, Rejection(kernel=self.name, reason=reason, detail=detail)

    def is_supported(self, platform: LinearPlatform, problem: GemmProblem) -> Verdict:
        raise NotImplementedError

    def run(self, ops: GemmOperands, problem: GemmProblem, choice: KernelChoice, *,
            w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class CublasKernel(GemmKernel):
    name = "cublas"
    description = "cuBLASLt blockwise FP8 through torch (1x128 x 128x128, SM90)"
    column_major_scales = True

    def is_supported(self, platform: LinearPlatform, problem: GemmProblem) -> Verdict:
        if platform.kind is not PlatformKind.CUDA:
            return self.reject(RejectReason.PLATFORM, f"CUDA only, this is {platform.kind.value}")
        if platform.capability != (9, 0):
            return self.reject(RejectReason.DEVICE_CAPABILITY,
                               f"torch's blockwise cuBLASLt FP8 GEMM is SM90-only, this is sm{_cap(platform)}")
        if platform.scaled_mm is ScaledMMApi.NONE:
            return self.reject(RejectReason.TORCH_VERSION,
                               f"torch {torch.__version__} has no blockwise _scaled_mm (needs >= 2.9)")
        if problem.granularity is not Granularity.BLOCK:
            return self.reject(RejectReason.GRANULARITY,
                               f"blockwise 1x128 x 128x128 only, this problem is {problem.granularity.value}")
        if problem.block_size != (128, 128):
            return self.reject(RejectReason.BLOCK_SIZE, f"block (128, 128) only, got {problem.block_size}")
        if problem.fp8_dtype != E4M3FN:
            return self.reject(RejectReason.DTYPE, f"float8_e4m3fn operands only, got {problem.fp8_dtype}")
        if problem.n % 16 or problem.k % 16:
            return self.reject(RejectReason.SHAPE, f"cuBLASLt needs N and K multiples of 16, got N={problem.n} "
                                                   f"K={problem.k}")
        kb = -(-problem.k // 128)
        if platform.scaled_mm is ScaledMMApi.V1 and kb % 4:
            return self.reject(RejectReason.SHAPE,
                               f"K/128 = {kb} is not a multiple of 4: torch's v1 _scaled_mm returns wrong results "
                               "there and this torch has no torch.nn.functional.scaled_mm to pad the scales")
        return True, None

    def run(self, ops: GemmOperands, problem: GemmProblem, choice: KernelChoice, *,
            w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
        from .kernels.cublas import cublas_gemm

        return cublas_gemm(ops, problem, api=choice.platform.scaled_mm, w_s_padded=w_s_padded)


class TritonKernel(GemmKernel):
    name = "triton"
    description = "generated Triton block-scaled GEMM (one kernel per scale granularity)"

    def is_supported(self, platform: LinearPlatform, problem: GemmProblem) -> Verdict:
        if not platform.triton:
            return self.reject(RejectReason.MISSING_DEPENDENCY, "triton is not installed (pip install 'fp8-linear[triton]')")
        kind = platform.kind
        if kind is PlatformKind.CPU and not platform.interpret:
            return self.reject(RejectReason.PLATFORM, "Triton runs on the CPU only under TRITON_INTERPRET=1")
        if kind is PlatformKind.CUDA and not platform.at_least(7, 0):
            return self.reject(RejectReason.DEVICE_CAPABILITY, f"needs sm70 or newer for fp16 tl.dot, this is "
                                                                f"sm{_cap(platform)}")
        options = triton_options(platform)
        if not options.fp8_as_bytes and kind in (PlatformKind.CUDA, PlatformKind.ROCM) \
                and problem.fp8_dtype != platform.fp8_dtype:
            return self.reject(RejectReason.DTYPE, f"{platform} computes in {platform.fp8_dtype}, the operands are "
                                                   f"{problem.fp8_dtype} (convert the weight: fp8_linear.to_fnuz)")
        return True, None

    def run(self, ops: GemmOperands, problem: GemmProblem, choice: KernelChoice, *,
            w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
        from .kernels.triton_gemm import triton_gemm

        assert choice.config is not None
        return triton_gemm(ops, problem, config=choice.config, options=triton_options(choice.platform))


class ReferenceKernel(GemmKernel):
    name = "reference"
    description = "torch: dequantize to float32 and matmul (any device; the yardstick, not fast)"

    def is_supported(self, platform: LinearPlatform, problem: GemmProblem) -> Verdict:
        return True, None

    def run(self, ops: GemmOperands, problem: GemmProblem, choice: KernelChoice, *,
            w_s_padded: torch.Tensor | None = None) -> torch.Tensor:
        from .reference import reference_gemm

        return reference_gemm(ops, problem)


KERNELS: Mapping[str, GemmKernel] = MappingProxyType(
    {k.name: k for k in (CublasKernel(), TritonKernel(), ReferenceKernel())}
)
KERNEL_ORDER: Mapping[PlatformKind, tuple[str, ...]] = MappingProxyType({
    PlatformKind.CUDA: ("cublas", "triton", "reference"),
    PlatformKind.ROCM: ("triton", "reference"),
    PlatformKind.XPU: ("triton", "reference"),
    PlatformKind.CPU: ("reference",),
})


def _cap(platform: LinearPlatform) -> str:
    return "".join(map(str, platform.capability)) if platform.capability else "?"


@dataclass(frozen=True, kw_only=True)
class KernelChoice:
    """The selected kernel, its launch config (Triton), and every rejection met before it."""

    kernel: str
    platform: LinearPlatform
    problem: GemmProblem
    rejected: tuple[Rejection, ...]
    forced_by: str | None = None
    config: GemmConfig | None = None
    config_source: str | None = None
    why: str | None = None  # why this kernel beat the other one that could serve (measured or heuristic)

    @property
    def implementation(self) -> GemmKernel:
        return KERNELS[self.kernel]

    def explain(self) -> str:
        how = f"forced by {self.forced_by}" if self.forced_by else "automatic"
        head = f"{self.platform}: {self.problem}: {self.kernel} ({how})"
        if self.config is not None and self.config.engine is Engine.WGMMA:
            c = self.config
            head += (f", Gluon wgmma kernel (sm90; the pointer kernel where it cannot run), tiles "
                     f"{c.block_m}x{c.block_n}x{c.block_k} stages {c.num_stages} group_m {c.group_m} "
                     f"({self.config_source})")
        elif self.config is not None:
            c = self.config
            head += (f", tiles {c.block_m}x{c.block_n}x{c.block_k} split_k {c.split_k} warps {c.num_warps} "
                     f"stages {c.num_stages}{' k_unroll 2' if c.k_unroll == 2 else ''} ({self.config_source})")
        lines = [head]
        if self.why:
            lines.append(f"  chosen: {self.why}")
        return "\n".join([*lines, *(f"  rejected {r}" for r in self.rejected)])


@lru_cache(maxsize=1)
def detected_platform() -> LinearPlatform:
    return LinearPlatform.detect()


def _faster_elsewhere(kernel: GemmKernel, platform: LinearPlatform, problem: GemmProblem) -> tuple[Rejection | None, str | None]:
    """For cuBLAS where Triton can serve too: (a SLOWER rejection, None) when Triton is preferred
    here (see :mod:`fp8_linear.dispatch`), else (None, why cuBLAS is). (None, None) otherwise."""
    if kernel.name != "cublas" or problem.block_size is None or not KERNELS["triton"].is_supported(platform, problem)[0]:
        return None, None
    winner, why = prefer(problem.variant.name, m=problem.m, n=problem.n, k=problem.k, block_size=problem.block_size,
                         device_name=platform.device_name)
    if winner == "triton":
        return Rejection(kernel=kernel.name, reason=RejectReason.SLOWER, detail=why), None
    return None, why


def _with_config(name: str, platform: LinearPlatform, problem: GemmProblem, rejected: tuple[Rejection, ...],
                 forced_by: str | None, why: str | None = None) -> KernelChoice:
    config, source = None, None
    if name == "triton":
        config, source = choose_config(problem.variant, m=problem.m, n=problem.n, k=problem.k,
                                       block_size=problem.block_size or (1, problem.k), group_k=problem.group_k,
                                       device_name=platform.device_name, num_sms=platform.num_sms or 132)
    return KernelChoice(kernel=name, platform=platform, problem=problem, rejected=rejected, forced_by=forced_by,
                        config=config, config_source=source, why=why)


def select_kernel(problem: GemmProblem, *, platform: LinearPlatform | None = None,
                  force: str | None = None) -> KernelChoice:
    """Choose the kernel for ``problem`` on ``platform`` (detected by default); see the module docstring."""
    platform = platform or detected_platform()
    forced_by = None
    requested = None
    if force is not None:
        requested, forced_by = force.strip().lower(), "kernel argument"
    elif os.environ.get(ENV_KERNEL, "").strip():
        requested, forced_by = os.environ[ENV_KERNEL].strip().lower(), ENV_KERNEL
    if requested == "auto":
        requested, forced_by = None, None
    return _select(problem, platform, requested, forced_by)


@lru_cache(maxsize=4096)
def _select(problem: GemmProblem, platform: LinearPlatform, requested: str | None,
            forced_by: str | None) -> KernelChoice:
    if requested is not None:
        kernel = KERNELS.get(requested)
        if kernel is None:
            raise UnknownKernelError(f"unknown kernel {requested!r} ({forced_by}); registered: "
                                     f"{', '.join(KERNELS)}, or 'auto'")
        ok, rejection = kernel.is_supported(platform, problem)
        if not ok:
            assert rejection is not None
            raise ForcedKernelError(f"kernel {requested!r} ({forced_by}) cannot serve {problem} on {platform}:",
                                    (rejection,))
        return _with_config(requested, platform, problem, (), forced_by)
    trail: list[Rejection] = []
    for name in KERNEL_ORDER[platform.kind]:
        kernel = KERNELS[name]
        ok, rejection = kernel.is_supported(platform, problem)
        if not ok:
            assert rejection is not None
            trail.append(rejection)
            continue
        slower, why = _faster_elsewhere(kernel, platform, problem)
        if slower is not None:
            trail.append(slower)
            continue
        if why is None and trail and trail[-1].reason is RejectReason.SLOWER:
            why = f"cublas is slower here ({trail[-1].detail})"
        choice = _with_config(name, platform, problem, tuple(trail), None, why)
        log.debug("%s", choice.explain())
        return choice
    raise NoKernelError(f"no kernel serves {problem} on {platform}; every candidate and its reason:", tuple(trail))


def explain(problem: GemmProblem, *, platform: LinearPlatform | None = None, force: str | None = None) -> str:
    """The choice for ``problem`` and why every earlier kernel was rejected, as text."""
    return select_kernel(problem, platform=platform, force=force).explain()
