"""Adapter to ``vllm_xpu_kernels.fused_moe_interface.XpuFusedMoe`` across its API generations.

* ``FLAGS`` (older): the constructor takes explicit recipe flags ``is_fp8``, ``is_int4``,
  ``is_mxfp4``, ``is_mxfp8``, ``is_block_fp8``; exactly the recipe's flag is set, the others False.
* ``INFERRED`` (0.1.16.x): no flags; the recipe is inferred from weight and scale dtypes, so the
  adapter makes the dtypes say the recipe (MXFP4 bytes viewed as ``float4_e2m1fn_x2`` so they are
  not taken for int4).

The generation is read from the installed class's signature; one that fits neither raises
:class:`XpuKernelVersionError` naming the installed version. The kernel object is built once, on
first use, under a lock. Without vllm-xpu-kernels (or with ``QMOE_XPU_EMULATION=1``) the torch
emulation (:mod:`xpu_experts.emulation`) runs the same contract.
"""

from __future__ import annotations

import enum
import inspect
import threading
from dataclasses import dataclass
from typing import Any

import torch

from .emulation import XpuFusedMoeEmulation
from .recipes import KERNEL_FLAGS, XpuRecipe
from .settings import xpu_settings

_CORE = ("w13", "w13_scales", "w13_bias", "w2", "w2_scales", "w2_bias", "n_experts_per_token", "activation",
         "num_experts")


class XpuKernelVersionError(RuntimeError):
    """The installed vllm-xpu-kernels has an XpuFusedMoe this adapter does not know."""


class KernelApi(enum.Enum):
    FLAGS = "flags"
    INFERRED = "inferred"


def installed_version() -> str:
    try:
        from importlib.metadata import version

        return version("vllm-xpu-kernels")
    except Exception:
        return "unknown"


def detect_api(kernel_cls: type) -> KernelApi:
    """Which constructor generation ``kernel_cls`` has (see the module docstring)."""
    params = inspect.signature(kernel_cls.__init__).parameters
    names = set(params) - {"self"}
    missing = [p for p in _CORE if p not in names]
    flags = [f for f in KERNEL_FLAGS if f in names]
    apply_params = set(inspect.signature(kernel_cls.apply).parameters)
    apply_ok = {"output", "hidden_states", "topk_weights", "topk_ids"} <= apply_params
    if not missing and apply_ok and len(flags) == len(KERNEL_FLAGS):
        return KernelApi.FLAGS
    if not missing and apply_ok and not flags and {"ep_rank", "ep_size", "expert_map"} <= names:
        return KernelApi.INFERRED
    raise XpuKernelVersionError(
        f"vllm-xpu-kernels {installed_version()}: XpuFusedMoe{inspect.signature(kernel_cls.__init__)} fits neither "
        f"known API (flags {KERNEL_FLAGS}, or 0.1.16.x with inferred recipes); missing {missing}, flags {flags}"
    )


def load_kernel_class() -> tuple[type, bool]:
    """``(class, native)``: the installed XpuFusedMoe, or the emulation (forced or not installed)."""
    if xpu_settings().force_emulation:
        return XpuFusedMoeEmulation, False
    try:
        from vllm_xpu_kernels.fused_moe_interface import XpuFusedMoe  # type: ignore[import-not-found]
    except ImportError:
        return XpuFusedMoeEmulation, False
    return XpuFusedMoe, True


@dataclass(frozen=True, kw_only=True)
class KernelArgs:
    """Everything the XpuFusedMoe constructor needs, already in the XPU layout."""

    recipe: XpuRecipe
    w13: torch.Tensor
    w13_scales: torch.Tensor | None
    w13_bias: torch.Tensor | None
    w2: torch.Tensor
    w2_scales: torch.Tensor | None
    w2_bias: torch.Tensor | None
    top_k: int
    activation: str
    num_experts: int
    ep_rank: int
    ep_size: int
    expert_map: torch.Tensor | None


class XpuFusedMoeAdapter:
    """Builds the kernel object once (lazily, thread-safely) and calls it by keyword."""

    def __init__(self, args: KernelArgs, *, kernel_cls: type | None = None) -> None:
        if kernel_cls is None:
            kernel_cls, self.native = load_kernel_class()
        else:
            self.native = kernel_cls is not XpuFusedMoeEmulation
        self.kernel_cls = kernel_cls
        self.api = KernelApi.INFERRED if kernel_cls is XpuFusedMoeEmulation else detect_api(kernel_cls)
        self.args = args
        self._impl: Any = None
        self._lock = threading.Lock()
        self.builds = 0

    def _constructor_kwargs(self) -> dict[str, Any]:
        a = self.args
        w13, w2 = a.w13, a.w2
        if a.recipe is XpuRecipe.MXFP4:  # uint8 would read as int4: say float4 (both generations accept it)
            w13, w2 = w13.view(torch.float4_e2m1fn_x2), w2.view(torch.float4_e2m1fn_x2)
        kwargs: dict[str, Any] = dict(
            w13=w13, w13_scales=a.w13_scales, w13_bias=a.w13_bias, w2=w2, w2_scales=a.w2_scales, w2_bias=a.w2_bias,
            n_experts_per_token=a.top_k, activation=a.activation, num_experts=a.num_experts, ep_rank=a.ep_rank,
            ep_size=a.ep_size, expert_map=a.expert_map,
        )
        if self.api is KernelApi.FLAGS:
            kwargs.update(dict.fromkeys(KERNEL_FLAGS, False))
            if a.recipe.kernel_flag is not None:
                kwargs[a.recipe.kernel_flag] = True
        return kwargs

    @property
    def impl(self) -> Any:
        if self._impl is None:
            with self._lock:
                if self._impl is None:
                    self._impl = self.kernel_cls(**self._constructor_kwargs())
                    self.builds += 1
        return self._impl

    def apply(self, *, output: torch.Tensor, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> None:
        self.impl.apply(output=output, hidden_states=hidden_states, topk_weights=topk_weights, topk_ids=topk_ids,
                        expert_map=self.args.expert_map, a1q_scale=None)
