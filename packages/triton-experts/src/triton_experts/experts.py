"""TritonExperts: fused-MoE Triton kernels behind the moe-oracle experts contract.

Flow per forward (4-6 launches, no host synchronization, per-M decisions cached): group the
(token, slot) rows by local expert (:func:`triton_experts.align.rows_for_experts`: 1 launch
at decode sizes, a torch sort at prefill sizes, nothing for one-row blocks), quantize the input per the scheme's activation
key (fused kernel; torch for keys it does not serve), GEMM1 (+bias) into ``[M * k, 2I]``, the
activation fused with the quantization of its output, GEMM2 (+bias) with the top-k weight folded
into its epilogue into ``[M * k, H]``, and a float32 sum over the k slots into the output dtype.

Numerics: both GEMMs accumulate in float32 and store their outputs in the input's dtype when that
is bf16 or fp16 (float32 otherwise), as vLLM's fused MoE stores its intermediates in the compute
dtype: that halves the intermediates' memory traffic, which is a tenth to a third of a prefill
call's time. Against the reference experts (float32 intermediates) it adds one rounding of the
GEMM1 output and one of each slot's GEMM2 output (2^-9 relative in bf16), inside the tests' bound.
The activation and the top-k sum run in float32 on those values. Slots of other ranks' experts,
padding slots (negative ids) are never computed and add zero; ids past the expert count are refused:
on the CPU by the base class's ValueError, on a GPU by the top-k sum's device-side assertion (no
host synchronization; the GEMMs before it skip such ids).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from moe_oracle import Activation, Capabilities, Experts, MoEConfig, Platform, RejectReason, apply_activation
from moe_oracle.reference.activation_quant import quantize_activation
from quantkeys import SCHEMES, Granularity, PlatformKind, QuantDType, QuantKey

from .align import fused_kernels, rows_for_experts
from .kernels.launch import GemmPlan, gluon_unsupported, new_gemm_out, run_gemm
from .layout import LAYOUT
from .tuning import Kernel, LaunchConfig, get_config

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
        for table in (self.w13, self.w2):
            if "zero" in table:  # group scales / zero points N-contiguous ([E, G, N] storage, [E, N, G] view):
                for name in ("scale", "zero"):  # the kernels read one group of BLOCK_N rows per tile
                    table[name] = table[name].transpose(1, 2).contiguous().transpose(1, 2)
        self.group13 = self._group(w.w13)
        self.group2 = self._group(w.w2)
        self.b13 = None if w.w13_bias is None else w.w13_bias.to(torch.float32)
        self.b2 = None if w.w2_bias is None else w.w2_bias.to(torch.float32)
        self._device = None
        self.last_configs: tuple[tuple[LaunchConfig, bool], ...] = ()
        self._plans: dict[tuple[int, int, torch.device], _CallPlan] = {}
        self._act_code = _ACT_CODES.get(cfg.activation)
        self._q13 = _fused_quant(self.quant.a13.key, self.quant.a13.scale)
        self._q2 = _fused_quant(self.quant.a2.key, self.quant.a2.scale)

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
            self.expert_map = self.expert_map.to(device=device, dtype=torch.int32)
        self._device = device
        self._plans.clear()

    def _call_plan(self, m: int, top_k: int, device: torch.device) -> _CallPlan:
        """Configs and frozen GEMM launches for M tokens of ``top_k`` slots (cached per (M, slots, device))."""
        from .kernels._generated_moe import VARIANTS
        from .kernels.launch import plan_gemm

        cfg = self.config
        h, i = cfg.hidden_size, cfg.intermediate_size
        n1 = self.weights.w13.rows
        meta = VARIANTS[self.variant_name]
        device_name = _device_name(device)
        # configs are tuned per model (all E experts, top_k slots per token) and token count; the tile
        # choice depends on the rows each expert sees, so m tokens of top_k slots (e.g. the all-to-all's
        # single-slot rows) over this rank's experts are looked up as the model's token count that gives
        # each expert as many rows: m * slots * E / (E_local * top_k)
        tokens = max(1, -(-m * top_k * cfg.num_experts // (cfg.num_local_experts * cfg.top_k)))
        c1, tuned1 = get_config(m=tokens, n=n1, k=h, variant=self.variant_name, k_granule=meta["k_granule"],
                                num_experts=cfg.num_experts, top_k=cfg.top_k, device=device_name)
        c2, tuned2 = get_config(m=tokens, n=h, k=i, variant=self.variant_name, k_granule=meta["k_granule"],
                                num_experts=cfg.num_experts, top_k=cfg.top_k, device=device_name)
        c1, c2 = self._fit(c1, self.group13, h), self._fit(c2, self.group2, i)
        if c2.BLOCK_M != c1.BLOCK_M:  # one row grouping serves both GEMMs
            c2 = replace(c2, BLOCK_M=c1.BLOCK_M)
        # a Gluon tile where the Gluon kernel cannot run it (another group size or device than the tuned
        # model's, a refitted tile) runs the Triton kernel with the same tile
        c1 = self._runnable(c1, self.w13, self.group13)
        c2 = self._runnable(c2, self.w2, self.group2)
        g1 = plan_gemm(variant=self.variant_name, weight=self.w13["weight"], scale=self.w13.get("scale"),
                       zero=self.w13.get("zero"), bias=self.b13, top_k=top_k, n=n1, k=h, group_k=self.group13,
                       config=c1)
        g2 = plan_gemm(variant=self.variant_name, weight=self.w2["weight"], scale=self.w2.get("scale"),
                       zero=self.w2.get("zero"), bias=self.b2, top_k=1, n=h, k=i, group_k=self.group2, config=c2)
        plan = _CallPlan(g1=g1, g2=g2, configs=((c1, tuned1), (c2, tuned2)))
        if len(self._plans) > 64:
            self._plans.clear()
        self._plans[(m, top_k, device)] = plan
        return plan

    def assert_expert_ids_on_device(self, topk_ids: torch.Tensor) -> None:
        """Nothing here: forward's last launch (``reduce_topk``, which reads every id) asserts that each
        id is below the expert count, so the check takes no launch of its own (the generic one takes
        three: max, compare, assert)."""

    def _quantize(self, x: torch.Tensor, key: QuantKey | None, static: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key is None:
            return x, None
        qa = quantize_activation(x, key, static_scale=static)
        return qa.q, qa.scale

    def forward(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        device = hidden_states.device
        if self._device != device:
            self._to(device)
        cfg = self.config
        m, k = topk_ids.shape
        plan = self._plans.get((m, k, device)) or self._call_plan(m, k, device)
        self.last_configs = plan.configs
        g1p, g2p = plan.g1, plan.g2
        alignment = rows_for_experts(topk_ids, num_local_experts=cfg.num_local_experts, num_experts=cfg.num_experts,
                                     block_m=g1p.config.BLOCK_M, expert_map=self.expert_map)
        # GEMM1 input
        if self.quant.a13.key is None:
            x, x_scale = hidden_states, None
        elif self._q13 is not None:
            if hidden_states.stride(1) != 1:
                hidden_states = hidden_states.contiguous()
            x, x_scale = _act_quant(hidden_states, 0, self._q13, out_dtype=hidden_states.dtype)
        else:
            x, x_scale = self._quantize(hidden_states, self.quant.a13.key, self.quant.a13.scale)
        # GEMM1; rows outside the alignment stay unwritten, and only row-local steps read them
        # (a per-tensor activation quant, done by torch, needs them zero)
        per_tensor_a2 = self._q2 is None and self.quant.a2.key is not None
        alloc = torch.zeros if per_tensor_a2 or _INTERPRETED else torch.empty  # (no overflow warnings on the CPU)
        inter = hidden_states.dtype if hidden_states.dtype in (torch.bfloat16, torch.float16) else torch.float32
        gemm1 = new_gemm_out(g1p, rows=m * k, dtype=inter, device=device, alloc=alloc)
        run_gemm(g1p, a=x, a_scale=x_scale, out=gemm1, topk_weights=None, alignment=alignment)
        # activation + GEMM2 input (split-K partials summed first)
        if self._q2 is not None and self._act_code is not None:
            y, y_scale = _act_quant(gemm1, self._act_code, self._q2, out_dtype=hidden_states.dtype)
        else:
            act = apply_activation(cfg.activation, (gemm1.sum(0) if gemm1.dim() == 3 else gemm1).float())
            y, y_scale = self._quantize(act if self.quant.a2.key is not None else act.to(hidden_states.dtype),
                                        self.quant.a2.key, self.quant.a2.scale)
        gemm2 = new_gemm_out(g2p, rows=m * k, dtype=inter, device=device)
        tw = topk_weights if topk_weights.dtype == torch.float32 else topk_weights.to(torch.float32)
        run_gemm(g2p, a=y, a_scale=y_scale, out=gemm2, topk_weights=tw.reshape(-1), alignment=alignment)
        return _reduce(gemm2, topk_ids, self.expert_map, m=m, top_k=k, h=g2p.n, num_experts=cfg.num_experts,
                       num_local=cfg.num_local_experts, dtype=cfg.result_dtype)

    def _runnable(self, c: LaunchConfig, w: dict[str, torch.Tensor], group: int) -> LaunchConfig:
        if c.KERNEL.is_gluon and gluon_unsupported(variant=self.variant_name, weight=w["weight"],
                                                          zero=w.get("zero"), group_k=group, config=c):
            return replace(c, KERNEL=Kernel.TRITON)
        return c

    @staticmethod
    def _fit(c: LaunchConfig, group: int, k: int) -> LaunchConfig:
        from .kernels.launch import fits_group

        bk = c.BLOCK_K
        while bk > 16 and (not fits_group(bk, group) or k % bk):
            bk //= 2
        return c if bk == c.BLOCK_K else replace(c, BLOCK_K=bk)


@dataclass(frozen=True)
class _CallPlan:
    g1: GemmPlan
    g2: GemmPlan
    configs: tuple[tuple[LaunchConfig, bool], ...]


_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_ACT_CODES = {Activation.SILU: 1, Activation.GELU: 2, Activation.GELU_TANH: 3, Activation.SWIGLUOAI: 4,
              Activation.RELU2: 5, Activation.SILU_NO_MUL: 6, Activation.GELU_NO_MUL: 7}


def _fused_quant(key: QuantKey | None, static: torch.Tensor | None) -> tuple[str, int] | None:
    """How the fused act_quant kernel quantizes for ``key``: ("none", 0) for no key, ("fp8", G) for
    dynamic fp8 e4m3 per 1xG group (G = 0: per token); None = not served (torch does it)."""
    if key is None:
        return ("none", 0)
    gran = key.group_shape.granularity
    if key.dtype is QuantDType.FP8_E4M3 and key.scale.dtype is QuantDType.FP32 and not key.is_static \
            and key.scale2 is None and static is None and gran in (Granularity.GROUP, Granularity.TOKEN):
        return ("fp8", key.group_shape.cols if gran is Granularity.GROUP else 0)
    return None


def _parts(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """A [rows, N] tensor or [P, rows, N] partials -> (rows view for shapes, P, partial stride)."""
    if x.dim() == 3:
        return x[0], x.shape[0], x.stride(0)
    return x, 1, 0


def _act_quant(x: torch.Tensor, act: int, quant: tuple[str, int], *, out_dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """act(x) (x: [rows, W] or [P, rows, W] partials, summed first), then quantized per ``quant``."""
    fused = _fused()
    act_quant = fused.act_quant
    x0, parts, stride_xp = _parts(x)
    rows = x0.shape[0]
    width = x0.shape[1] // 2 if act in fused.GATED else x0.shape[1]
    kind, group = quant
    if kind == "none":
        q = torch.empty(rows, width, device=x.device, dtype=out_dtype)
        block = min(1024, _next_pow2(width))
        act_quant[(rows, (width + block - 1) // block)](x, q, q, width, x0.stride(0), stride_xp, q.stride(0), 0,
                                                       ACT=act, QUANT=fused.Q_NONE, GROUP=1, BLOCK=block,
                                                       EVEN=width % block == 0, PARTS=parts)
        return q, None
    q = torch.empty(rows, width, device=x.device, dtype=torch.float8_e4m3fn)
    if group:
        block = max(group, min(1024, _next_pow2(width)))
        scale = torch.empty(rows, width // group, device=x.device, dtype=torch.float32)
    else:
        block = group = _next_pow2(width)
        scale = torch.empty(rows, 1, device=x.device, dtype=torch.float32)
    act_quant[(rows, (width + block - 1) // block)](x, q, scale, width, x0.stride(0), stride_xp, q.stride(0),
                                                   scale.stride(0), ACT=act, QUANT=fused.Q_FP8_GROUP, GROUP=group,
                                                   BLOCK=block, EVEN=width % block == 0, PARTS=parts, num_warps=4)
    return q, scale


def _reduce(y: torch.Tensor, topk_ids: torch.Tensor, expert_map: torch.Tensor | None, *, m: int, top_k: int,
            h: int, num_experts: int, num_local: int, dtype: torch.dtype) -> torch.Tensor:
    reduce_topk = _fused().reduce_topk
    out = torch.empty(m, h, device=y.device, dtype=dtype)
    block = min(1024, _next_pow2(h))
    ids = topk_ids if topk_ids.is_contiguous() else topk_ids.contiguous()
    y0, parts, stride_yp = _parts(y)
    reduce_topk[(m, (h + block - 1) // block)](y, ids, expert_map if expert_map is not None else ids, out, h,
                                               y0.stride(0), stride_yp, out.stride(0), num_experts, num_local,
                                               TOP_K=top_k, HAS_MAP=expert_map is not None, BLOCK=block, PARTS=parts,
                                               num_warps=4)
    return out


def _fused() -> Any:
    return fused_kernels()


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())
