"""The adapter against test doubles with the exact signatures of both XpuFusedMoe generations:
argument names, recipe flags, layouts, dtypes, the expert map, one build, version errors."""

from __future__ import annotations

import sys
import threading
import types

import pytest
import torch

import xpu_experts as xe
from moe_oracle import Activation, MoEConfig, Platform, make_kernel
from weight_layouts import load_experts
from weight_layouts.writer import write_tiny_checkpoint
from xpu_experts.adapter import detect_api, load_kernel_class
from xpu_experts.emulation import XpuFusedMoeEmulation, infer_recipe
from xpu_experts.settings import xpu_settings

pytestmark = pytest.mark.xpu_sim

E, H, INTER, TOP = 4, 128, 128, 2
CALLS: list[dict] = []


class _Recorder:
    """Shared behaviour: record every call, then compute through the emulation."""

    def _record(self, kind, **kwargs):
        CALLS.append({"kind": kind, "cls": type(self).__name__, **kwargs})

    def apply(self, output, hidden_states, topk_weights, topk_ids, expert_map=None, a1q_scale=None):
        self._record("apply", output=output, hidden_states=hidden_states, topk_weights=topk_weights,
                     topk_ids=topk_ids, expert_map=expert_map, a1q_scale=a1q_scale)
        self.emulation.apply(output, hidden_states, topk_weights, topk_ids, expert_map, a1q_scale)


class FlagsXpuFusedMoe(_Recorder):
    """The older constructor: explicit recipe flags."""

    def __init__(self, w13, w13_scales, w13_bias, w2, w2_scales, w2_bias, n_experts_per_token, activation,
                 num_experts, ep_rank=0, ep_size=1, expert_map=None, is_fp8=False, is_int4=False, is_mxfp4=False,
                 is_mxfp8=False, is_block_fp8=False):
        flags = {"is_fp8": is_fp8, "is_int4": is_int4, "is_mxfp4": is_mxfp4, "is_mxfp8": is_mxfp8,
                 "is_block_fp8": is_block_fp8}
        assert sum(flags.values()) <= 1, f"non-exclusive recipe flags {flags}"
        self._record("init", w13=w13, w13_scales=w13_scales, w13_bias=w13_bias, w2=w2, w2_scales=w2_scales,
                     w2_bias=w2_bias, n_experts_per_token=n_experts_per_token, activation=activation,
                     num_experts=num_experts, ep_rank=ep_rank, ep_size=ep_size, expert_map=expert_map, flags=flags)
        self.emulation = XpuFusedMoeEmulation(w13, w13_scales, w13_bias, w2, w2_scales, w2_bias, n_experts_per_token,
                                              activation, num_experts, ep_rank, ep_size, expert_map)


class InferredXpuFusedMoe(_Recorder):
    """The 0.1.16.x constructor: the recipe comes from the dtypes."""

    def __init__(self, w13, w13_scales, w13_bias, w2, w2_scales, w2_bias, n_experts_per_token, activation,
                 num_experts, ep_rank=0, ep_size=1, expert_map=None, gemm1_clamp_limit=None,
                 activation_situ_beta=None, activation_situ_linear_beta=None):
        self._record("init", w13=w13, w13_scales=w13_scales, w13_bias=w13_bias, w2=w2, w2_scales=w2_scales,
                     w2_bias=w2_bias, n_experts_per_token=n_experts_per_token, activation=activation,
                     num_experts=num_experts, ep_rank=ep_rank, ep_size=ep_size, expert_map=expert_map,
                     flags=None)
        self.emulation = XpuFusedMoeEmulation(w13, w13_scales, w13_bias, w2, w2_scales, w2_bias, n_experts_per_token,
                                              activation, num_experts, ep_rank, ep_size, expert_map)


class UnknownXpuFusedMoe:
    def __init__(self, weights, scales, topk):
        pass

    def apply(self, output, hidden_states, topk_weights, topk_ids):
        pass


SCHEME_FLAGS = {
    "unquantized": (None, xe.XpuRecipe.BF16),
    "fp8_tensor_dynamic": ("is_fp8", xe.XpuRecipe.FP8),
    "fp8_block": ("is_block_fp8", xe.XpuRecipe.BLOCK_FP8),
    "mxfp8": ("is_mxfp8", xe.XpuRecipe.MXFP8),
    "mxfp4_w4a16": ("is_mxfp4", xe.XpuRecipe.MXFP4),
    "int4_w4a16": ("is_int4", xe.XpuRecipe.INT4),
}


@pytest.fixture
def use_kernel(monkeypatch):
    def install(cls):
        CALLS.clear()
        monkeypatch.setattr(xe.XPUExpertsBase, "kernel_class", classmethod(lambda c: cls))

    return install


def _kernel(tmp_path, scheme, *, ep=False):
    ckpt = write_tiny_checkpoint(tmp_path / scheme, scheme=scheme, num_experts=E, top_k=TOP, hidden_size=H,
                                 intermediate_size=INTER, bias=scheme != "mxfp4_w4a16")
    weights = load_experts(ckpt.path, 0)
    act = Activation.SWIGLUOAI if scheme == "mxfp4_w4a16" else Activation.SILU
    config = MoEConfig(num_experts=2 * E if ep else E, top_k=TOP, hidden_size=H, intermediate_size=INTER,
                       activation=act, has_bias=True, in_dtype=torch.bfloat16,
                       ep_size=2 if ep else 1, ep_rank=1 if ep else 0)
    return make_kernel(weights=weights, config=config, platform=Platform.parse("xpu"))


@pytest.mark.parametrize("kernel_cls", [FlagsXpuFusedMoe, InferredXpuFusedMoe])
@pytest.mark.parametrize("scheme", list(SCHEME_FLAGS))
def test_constructor_and_apply_calls(tmp_path, use_kernel, kernel_cls, scheme):
    use_kernel(kernel_cls)
    kernel = _kernel(tmp_path, scheme, ep=True)
    flag, recipe = SCHEME_FLAGS[scheme]
    (init,) = [c for c in CALLS if c["kind"] == "init"]  # built at load time, once
    assert init["cls"] == kernel_cls.__name__
    if kernel_cls is FlagsXpuFusedMoe:
        assert init["flags"] == {f: f == flag for f in init["flags"]}  # exactly the recipe's flag
    assert infer_recipe(init["w13"], init["w13_scales"]) is recipe  # the dtypes say the recipe too
    assert init["num_experts"] == E and init["n_experts_per_token"] == TOP
    assert (init["ep_rank"], init["ep_size"]) == (1, 2)
    assert init["expert_map"].tolist() == [-1] * E + list(range(E))  # the map is passed, not rebuilt
    assert init["activation"] == ("swigluoai" if scheme == "mxfp4_w4a16" else "silu")
    w13, w2 = init["w13"], init["w2"]
    assert w13.is_contiguous() and w2.is_contiguous()
    if recipe.is_4bit:
        assert tuple(w13.shape) == (E, 2 * INTER, H // 2) and tuple(w2.shape) == (E, H, INTER // 2)
        expected = torch.float4_e2m1fn_x2 if recipe is xe.XpuRecipe.MXFP4 else torch.uint8
        assert w13.dtype == expected and w2.dtype == expected
    else:
        assert tuple(w13.shape) == (E, H, 2 * INTER) and tuple(w2.shape) == (E, INTER, H)
    if recipe is xe.XpuRecipe.INT4:
        assert init["w13_scales"].dtype == torch.bfloat16  # read as the activation type by the kernel
    if recipe is xe.XpuRecipe.BF16:
        assert w13.dtype == torch.bfloat16 and init["w13_scales"] is None
    if init["w13_bias"] is not None:
        assert init["w13_bias"].dtype == torch.bfloat16 and tuple(init["w13_bias"].shape) == (E, 2 * INTER)

    x = torch.randn(6, H).to(torch.bfloat16)
    ids = torch.tensor([[0, 5], [6, 7], [1, 2], [4, 4], [-1, -1], [7, 3]], dtype=torch.int32)
    tw = torch.rand(6, TOP)
    out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
    applies = [c for c in CALLS if c["kind"] == "apply"]
    assert len(applies) == 1
    call = applies[0]
    assert call["topk_ids"] is ids and call["topk_weights"] is tw and call["a1q_scale"] is None
    assert call["expert_map"] is init["expert_map"]
    assert call["output"].shape == (6, H) and call["output"].dtype == torch.bfloat16
    assert torch.all(out[[2, 4]] == 0)  # rows with no local expert (rank 1 holds 4..7) and padding


def test_built_once_across_threads(tmp_path, use_kernel):
    use_kernel(InferredXpuFusedMoe)
    kernel = _kernel(tmp_path, "int4_w4a16")
    x = torch.randn(3, H).to(torch.bfloat16)
    ids = torch.tensor([[0, 1], [2, 3], [1, 0]], dtype=torch.int32)
    tw = torch.rand(3, TOP)
    threads = [threading.Thread(target=kernel, kwargs=dict(hidden_states=x, topk_weights=tw, topk_ids=ids))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kernel.experts.adapter.builds == 1
    assert sum(c["kind"] == "init" for c in CALLS) == 1 and sum(c["kind"] == "apply" for c in CALLS) == 4


def test_api_detection_and_version_error(monkeypatch):
    assert detect_api(FlagsXpuFusedMoe) is xe.KernelApi.FLAGS
    assert detect_api(InferredXpuFusedMoe) is xe.KernelApi.INFERRED
    monkeypatch.setattr("xpu_experts.adapter.installed_version", lambda: "0.0.9")
    with pytest.raises(xe.XpuKernelVersionError, match=r"vllm-xpu-kernels 0\.0\.9: XpuFusedMoe\(self, weights"):
        detect_api(UnknownXpuFusedMoe)


def _fake_library(monkeypatch, cls):
    pkg = types.ModuleType("vllm_xpu_kernels")
    mod = types.ModuleType("vllm_xpu_kernels.fused_moe_interface")
    mod.XpuFusedMoe = cls
    pkg.fused_moe_interface = mod
    monkeypatch.setitem(sys.modules, "vllm_xpu_kernels", pkg)
    monkeypatch.setitem(sys.modules, "vllm_xpu_kernels.fused_moe_interface", mod)


def test_environment_switch_forces_the_emulation(monkeypatch):
    _fake_library(monkeypatch, InferredXpuFusedMoe)
    assert load_kernel_class() == (InferredXpuFusedMoe, True)
    monkeypatch.setenv("QMOE_XPU_EMULATION", "1")
    xpu_settings.cache_clear()
    assert load_kernel_class() == (XpuFusedMoeEmulation, False)
    monkeypatch.setenv("QMOE_XPU_EMULATION", "maybe")
    xpu_settings.cache_clear()
    with pytest.raises(ValueError, match="QMOE_XPU_EMULATION='maybe'"):
        load_kernel_class()


def test_without_the_library_the_emulation_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm_xpu_kernels", None)  # import fails
    assert load_kernel_class() == (XpuFusedMoeEmulation, False)


def test_emulation_refuses_what_the_kernel_refuses():
    w13 = torch.zeros(2, 64, 64, dtype=torch.bfloat16)
    w2 = torch.zeros(2, 32, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="activation 'swish'"):
        XpuFusedMoeEmulation(w13, None, None, w2, None, None, 2, "swish", 2)
    with pytest.raises(ValueError, match="contiguous"):
        XpuFusedMoeEmulation(w13.transpose(1, 2), None, None, w2, None, None, 2, "silu", 2)
    emu = XpuFusedMoeEmulation(w13, None, None, w2, None, None, 2, "silu", 2)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        emu.apply(torch.zeros(1, 64), torch.zeros(1, 64), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.int32))
