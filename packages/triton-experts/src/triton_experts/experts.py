"""TritonExperts: fused-MoE Triton kernels behind the moe-oracle experts contract.

Flow per forward: quantize the input per the scheme's activation key (torch), group the
(token, slot) rows by local expert (:mod:`triton_experts.align`), GEMM1 (+bias) into
``[M * k, 2I]``, the activation, quantize its output per the activation key, GEMM2 (+bias) with
the top-k weight folded into its epilogue into ``[M * k, H]``, and a sum over the k slots.
Slots of other ranks' experts and padding slots (negative ids) are never computed and add zero.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from moe_oracle import Activation, Capabilities, Experts, MoEConfig, Platform, RejectReason, apply_activation
from moe_oracle.reference.activation_quant import quantize_activation
from quantkeys import SCHEMES, PlatformKind, QuantDType, QuantKey

from .align import Alignment, align_by_expert
from .layout import LAYOUT
from .tuning import LaunchConfig, get_config

FP8_CAPABILITY = (8, 9)  # Triton's fp8e4nv needs Ada / Hopper
BASE_CAPABILITY = (8, 0)  # bf16 tensor cores


def _served() -> tuple[frozenset, dict]:
    pairs, variants = set(), {}
    for scheme in SCHEMES.values():
        support = scheme.support("triton")
        if support is None:
            continue
        for wk in support.weight_keys:
            pairs.add((wk, scheme.activation_key))
            variants[(wk, scheme.activation_key)] = support.option("variant")
    return frozenset(pairs), variants


_PAIRS, _VARIANT_OF_PAIR = _served()


_DEVICE_NAMES: dict[torch.device, str] = {}


def _device_name(device: torch.device) -> str:
    if device not in _DEVICE_NAMES:
        _DEVICE_NAMES[device] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return _DEVICE_NAMES[device]


def _needs_fp8(wk: QuantKey | None, ak: QuantKey | None) -> bool:
    return any(k is not None and k.dtype in (QuantDType.FP8_E4M3, QuantDType.FP8_E5M2) for k in (wk, ak))


class TritonExperts(Experts):
    """Every scheme the spec gives the ``triton`` backend, one generated kernel variant each."""

    backend = "triton"
    layout = LAYOUT
    capabilities = Capabilities(
        quant_pairs=_PAIRS,
        platforms=frozenset({PlatformKind.CUDA, PlatformKind.ROCM, PlatformKind.XPU}),
        activations=frozenset(Activation),
        in_dtypes=frozenset({torch.bfloat16, torch.float16}),
        bias=True,
        expert_parallel=True,
        lora=False,
        min_capability=BASE_CAPABILITY,
        min_capability_by_key={wk: FP8_CAPABILITY for wk, ak in _PAIRS if _needs_fp8(wk, ak)},
        requires=("triton",),
    )
    variant: ClassVar[dict] = _VARIANT_OF_PAIR

    @classmethod
    def check_extra(cls, config: MoEConfig, platform: Platform, *, weight_key: QuantKey | None,
                    activation_key: QuantKey | None) -> tuple[RejectReason, str] | None:
        if platform.kind is PlatformKind.XPU and _needs_fp8(weight_key, activation_key):
            return RejectReason.DEVICE_CAPABILITY, "Intel's Triton cannot compile fp8e4nv (e4m3) dots"
        if platform.kind is PlatformKind.ROCM and _needs_fp8(weight_key, activation_key):
            return RejectReason.DEVICE_CAPABILITY, "ROCm needs the fnuz fp8 dtype; the e4m3fn kernels are CUDA-only"
        if platform.kind is PlatformKind.CUDA and activation_key is not None and \
                activation_key.dtype is QuantDType.FP8_E4M3 and not platform.at_least(*FP8_CAPABILITY):
            return RejectReason.DEVICE_CAPABILITY, "fp8 activations need compute capability >= 8.9"
        k_granule = {"fp8_block": 128, "mxfp8": 32, "mxfp4": 32}.get(cls.variant.get((weight_key, activation_key), ""))
        h, i = config.hidden_size, config.intermediate_size
        if k_granule and (h % k_granule or i % k_granule):
            return RejectReason.SHAPE, f"hidden {h} and intermediate {i} must be multiples of {k_granule}"
        if weight_key is not None and weight_key.group_shape.group_size and weight_key.dtype.bits <= 8 \
                and weight_key.dtype in (QuantDType.INT4, QuantDType.UINT4, QuantDType.INT8, QuantDType.UINT8) \
                and activation_key is None:
            g = weight_key.group_shape.group_size
            if h % g or i % g:
                return RejectReason.SHAPE, f"groups of {g} must divide hidden {h} and intermediate {i}"
        return None

    def prepare(self) -> None:
        w, cfg = self.weights, self.config
        self.variant_name = w.extras["variant"]
        dtype = cfg.in_dtype
        self.w13 = dict(w.w13.tensors)
        self.w2 = dict(w.w2.tensors)
        if self.variant_name == "bf16":
            self.w13["weight"] = self.w13["weight"].to(dtype)
            self.w2["weight"] = self.w2["weight"].to(dtype)
        self.group13 = self._group(w.w13)
        self.group2 = self._group(w.w2)
        self.b13 = None if w.w13_bias is None else w.w13_bias.to(torch.float32)
        self.b2 = None if w.w2_bias is None else w.w2_bias.to(torch.float32)
        self._device = None
        self.last_configs: tuple[tuple[LaunchConfig, bool], ...] = ()

    @staticmethod
    def _group(w) -> int:
        g = int(w.params.get("group_size", -1))
        return w.cols if g <= 0 else g

    def _to(self, device: torch.device) -> None:
        if self._device == device:
            return
        for table in (self.w13, self.w2):
            for name, t in table.items():
                table[name] = t.to(device)
        if self.b13 is not None:
            self.b13 = self.b13.to(device)
        if self.b2 is not None:
            self.b2 = self.b2.to(device)
        if self.expert_map is not None:
            self.expert_map = self.expert_map.to(device)
        self._device = device

    def _quantize(self, x: torch.Tensor, key: QuantKey | None, static: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key is None:
            return x, None
        qa = quantize_activation(x, key, static_scale=static)
        return qa.q, qa.scale

    def forward(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        from .kernels._generated_moe import VARIANTS
        from .kernels.launch import grouped_gemm

        self._to(hidden_states.device)
        cfg = self.config
        m, k = topk_ids.shape
        h, i = cfg.hidden_size, cfg.intermediate_size
        n1 = self.weights.w13.rows
        meta = VARIANTS[self.variant_name]
        device_name = _device_name(hidden_states.device)
        c1, tuned1 = get_config(m=m, n=n1, k=h, variant=self.variant_name, k_granule=meta["k_granule"],
                                num_experts=cfg.num_local_experts, top_k=k, device=device_name)
        c2, tuned2 = get_config(m=m, n=h, k=i, variant=self.variant_name, k_granule=meta["k_granule"],
                                num_experts=cfg.num_local_experts, top_k=k, device=device_name)
        c1, c2 = self._fit(c1, self.group13), self._fit(c2, self.group2)
        if c2.BLOCK_M != c1.BLOCK_M:  # one row grouping serves both GEMMs
            c2 = LaunchConfig(c1.BLOCK_M, c2.BLOCK_N, c2.BLOCK_K, c2.GROUP_M, c2.num_warps, c2.num_stages)
        self.last_configs = ((c1, tuned1), (c2, tuned2))
        alignment: Alignment = align_by_expert(topk_ids, num_local_experts=cfg.num_local_experts, block_m=c1.BLOCK_M,
                                               expert_map=self.expert_map)
        a13, a2 = self.quant.a13, self.quant.a2
        x, x_scale = self._quantize(hidden_states, a13.key, a13.scale)
        gemm1 = torch.zeros(m * k, n1, device=hidden_states.device, dtype=torch.float32)
        grouped_gemm(variant=self.variant_name, a=x, a_scale=x_scale, weight=self.w13["weight"],
                     scale=self.w13.get("scale"), zero=self.w13.get("zero"), bias=self.b13, out=gemm1,
                     topk_weights=None, alignment=alignment, top_k=k, n=n1, k=h, group_k=self.group13, config=c1)
        act = apply_activation(cfg.activation, gemm1)  # float32, like the reference
        y, y_scale = self._quantize(act if a2.key is not None else act.to(hidden_states.dtype), a2.key, a2.scale)
        gemm2 = torch.zeros(m * k, h, device=hidden_states.device, dtype=torch.float32)
        grouped_gemm(variant=self.variant_name, a=y, a_scale=y_scale, weight=self.w2["weight"],
                     scale=self.w2.get("scale"), zero=self.w2.get("zero"), bias=self.b2, out=gemm2,
                     topk_weights=topk_weights.reshape(-1).to(torch.float32), alignment=alignment, top_k=1, n=h,
                     k=i, group_k=self.group2, config=c2)
        return gemm2.view(m, k, h).sum(dim=1).to(cfg.result_dtype)

    @staticmethod
    def _fit(c: LaunchConfig, group: int) -> LaunchConfig:
        bk = c.BLOCK_K
        while group % bk:
            bk //= 2
        return c if bk == c.BLOCK_K else LaunchConfig(c.BLOCK_M, c.BLOCK_N, bk, c.GROUP_M, c.num_warps, c.num_stages)
