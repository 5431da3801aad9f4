"""Tensor-parallel shards of the intermediate dimension and expert-parallel expert selection.

Every format, at sizes that need padding: each rank's shard decodes to exactly the slice of the
full layer's dense weights it owns (gate rows, up rows, w2 input columns), zeros in the padding,
finite non-zero scales everywhere; and the sum over ranks of the float64 MoE math on the shards
equals the math on the full layer (the padded result equals the unpadded math).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from weight_layouts import (
    CANONICAL,
    ExpertWeights,
    ShardingError,
    StackedWeight,
    encode,
    plan_tp_shard,
    select_experts,
    shard_experts_tp,
    tp_granularity,
)

E, H = 3, 64
FORMATS = [  # (format, params, I values that encode)
    ("dense", {}, (384, 160)),
    ("fp8-tensor", {}, (384, 160)),
    ("fp8-channel", {}, (384, 160)),
    ("int8-channel", {}, (384, 160)),
    ("fp8-block", {"block_size": (128, 128)}, (384,)),
    ("fp8-block", {"block_size": (32, 64)}, (384, 160)),
    ("gptq", {"bits": 4, "group_size": 128, "sym": True}, (384, 160)),
    ("gptq", {"bits": 4, "group_size": 128, "sym": False}, (384, 160)),
    ("gptq", {"bits": 8, "group_size": 32, "sym": False, "checkpoint_format": "gptq_v2"}, (384, 160)),
    ("gptq", {"bits": 4, "group_size": -1, "sym": True}, (384, 160)),
    ("ct-pack-quantized", {"bits": 4, "group_size": 128, "symmetric": True}, (384, 160)),
    ("ct-pack-quantized", {"bits": 4, "group_size": 32, "symmetric": False}, (384, 160)),
    ("ct-pack-quantized", {"bits": 4, "group_size": 128, "symmetric": False}, (160,)),
    ("ct-pack-quantized", {"bits": 8, "group_size": None, "symmetric": True}, (384, 160)),
    ("mxfp8", {}, (384, 160)),
    ("mxfp4", {}, (384, 160)),
]
CASES = [(f, p, i) for f, p, sizes in FORMATS for i in sizes]


def experts(fmt: str, params: dict, inter: int, *, bias: bool = False, seed: int = 0) -> ExpertWeights:
    gen = torch.Generator().manual_seed(seed)
    w13 = torch.randn(E, 2 * inter, H, generator=gen) / H**0.5
    w2 = torch.randn(E, H, inter, generator=gen) / inter**0.5
    return ExpertWeights(
        w13=StackedWeight(format=fmt, tensors=encode(fmt, w13, **params), params=params, rows=2 * inter, cols=H),
        w2=StackedWeight(format=fmt, tensors=encode(fmt, w2, **params), params=params, rows=H, cols=inter),
        weight_key=None, activation_key=None,
        w13_bias=torch.randn(E, 2 * inter, generator=gen) if bias else None,
        w2_bias=torch.randn(E, H, generator=gen) if bias else None,
    )


def expected_shard(full13, full2, plan):
    """The dense shard the plan describes: owned columns at the front of each half, zeros after."""
    inter, n, pad = plan.intermediate_size, plan.real_size, plan.padded_size
    w13 = torch.zeros(full13.shape[0], 2 * pad, full13.shape[2])
    w13[:, :n] = full13[:, plan.start:plan.stop]
    w13[:, pad:pad + n] = full13[:, inter + plan.start:inter + plan.stop]
    w2 = torch.zeros(full2.shape[0], full2.shape[1], pad)
    w2[:, :, :n] = full2[:, :, plan.start:plan.stop]
    return w13, w2


def moe64(x, w13, w2, b13=None, b2=None):
    """Every expert on every token, float64, silu-gated; [E, M, H]."""
    h = torch.einsum("mh,enh->emn", x.double(), w13.double())
    if b13 is not None:
        h = h + b13.double()[:, None]
    inter = h.shape[-1] // 2
    y = torch.einsum("emi,ehi->emh", torch.nn.functional.silu(h[..., :inter]) * h[..., inter:], w2.double())
    return y if b2 is None else y + b2.double()[:, None]


def float_scales(sw: StackedWeight):
    return [t for name, t in sw.tensors.items() if t.is_floating_point() and t.dtype != torch.float8_e4m3fn
            and name != "weight"]


@pytest.mark.parametrize(("fmt", "params", "inter"), CASES, ids=[f"{f}-{p}-{i}" for f, p, i in CASES])
def test_every_shard_is_the_exact_slice_with_exact_padding(fmt, params, inter):
    full = experts(fmt, params, inter)
    full13, full2 = full.dequantize()
    gran = tp_granularity(full)
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(1))
    want = moe64(x, full13, full2)
    for tp in (1, 2, 3, 4):
        total = torch.zeros_like(want)
        for rank in range(tp):
            shard = shard_experts_tp(full, tp_rank=rank, tp_size=tp)
            plan = plan_tp_shard(intermediate_size=inter, tp_rank=rank, tp_size=tp, granularity=gran)
            assert shard.intermediate_size == plan.padded_size and plan.padded_size % gran == 0
            assert shard.w13.format == fmt and shard.layout == CANONICAL
            s13, s2 = shard.dequantize()
            e13, e2 = expected_shard(full13, full2, plan)
            assert torch.equal(s13, e13), (tp, rank)
            assert torch.equal(s2, e2), (tp, rank)
            for t in float_scales(shard.w13) + float_scales(shard.w2):
                assert bool(torch.isfinite(t).all()) and bool((t != 0).all()), "a padded scale is 0 or not finite"
            total += moe64(x, s13, s2)
        assert torch.allclose(total, want, rtol=0, atol=1e-12 * float(want.abs().max())), tp


def test_padding_is_needed_and_happens():
    """Qwen3-30B-A3B: I = 768 at TP 4 is 192 per rank against 128-wide blocks: whole 128-column
    units 2, 2, 1, 1, every shard padded to 256."""
    plans = [plan_tp_shard(intermediate_size=768, tp_rank=r, tp_size=4, granularity=128) for r in range(4)]
    assert [(p.start, p.stop) for p in plans] == [(0, 256), (256, 512), (512, 640), (640, 768)]
    assert {p.padded_size for p in plans} == {256} and [p.padding for p in plans] == [0, 0, 128, 128]
    assert plan_tp_shard(intermediate_size=768, tp_rank=1, tp_size=2, granularity=128).padding == 0
    assert [plan_tp_shard(intermediate_size=768, tp_rank=r, tp_size=4).real_size for r in range(4)] == [192] * 4
    few = [plan_tp_shard(intermediate_size=384, tp_rank=r, tp_size=4, granularity=128) for r in range(4)]
    assert [p.real_size for p in few] == [128, 128, 128, 0] and few[3].padded_size == 128
    assert few[3].index().tolist() == [-1] * 128


def test_shard_of_qwen3_sized_fp8_block_and_int4():
    for fmt, params in (("fp8-block", {"block_size": (128, 128)}), ("gptq", {"bits": 4, "group_size": 128})):
        full = experts(fmt, params, 768)
        shard = shard_experts_tp(full, tp_rank=2, tp_size=4)
        assert shard.intermediate_size == 256
        s13, s2 = shard.dequantize()
        f13, f2 = full.dequantize()
        assert torch.equal(s13[:, :128], f13[:, 512:640]) and not bool(s13[:, 128:256].any())
        assert torch.equal(s2[:, :, :128], f2[:, :, 512:640]) and not bool(s2[:, :, 128:].any())


@pytest.mark.parametrize(("fmt", "params", "gran"), [
    ("dense", {}, 1), ("fp8-channel", {}, 1), ("fp8-block", {"block_size": (128, 128)}, 128),
    ("gptq", {"bits": 4, "group_size": 128}, 128), ("gptq", {"bits": 4, "group_size": -1}, 8),
    ("ct-pack-quantized", {"bits": 4, "group_size": None}, 1), ("ct-pack-quantized", {"bits": 4, "group_size": 32,
                                                                                       "symmetric": False}, 32),
    ("mxfp4", {}, 32),
])
def test_granularity(fmt, params, gran):
    w = experts(fmt, params, 384)
    assert tp_granularity(w) == gran
    assert tp_granularity(w, multiple=48) == math.lcm(gran, 48)


def test_kernel_multiple_pads_even_tp_1():
    w = experts("dense", {}, 160)
    shard = shard_experts_tp(w, tp_rank=0, tp_size=1, multiple=128)
    assert shard.intermediate_size == 256
    s13, s2 = shard.dequantize()
    f13, f2 = w.dequantize()
    assert torch.equal(s13[:, :160], f13[:, :160]) and torch.equal(s13[:, 256:416], f13[:, 160:])
    assert torch.equal(s2[:, :, :160], f2) and not bool(s2[:, :, 160:].any())


def test_biases():
    w = experts("fp8-block", {"block_size": (32, 64)}, 160, bias=True)
    f13, f2 = w.dequantize()
    x = torch.randn(4, H, generator=torch.Generator().manual_seed(2))
    want = moe64(x, f13, f2, w.w13_bias, w.w2_bias)
    total = torch.zeros_like(want)
    for rank in range(3):
        shard = shard_experts_tp(w, tp_rank=rank, tp_size=3)
        plan = plan_tp_shard(intermediate_size=160, tp_rank=rank, tp_size=3, granularity=tp_granularity(w))
        pad, n = plan.padded_size, plan.real_size
        assert torch.equal(shard.w13_bias[:, :n], w.w13_bias[:, plan.start:plan.stop])
        assert torch.equal(shard.w13_bias[:, pad:pad + n], w.w13_bias[:, 160 + plan.start:160 + plan.stop])
        assert not bool(shard.w13_bias[:, n:pad].any()) and not bool(shard.w13_bias[:, pad + n:].any())
        assert torch.equal(shard.w2_bias, w.w2_bias if rank == 0 else torch.zeros_like(w.w2_bias))
        s13, s2 = shard.dequantize()
        total += moe64(x, s13, s2, shard.w13_bias, shard.w2_bias)
    assert torch.allclose(total, want, rtol=0, atol=1e-12 * float(want.abs().max()))


def test_non_gated_experts():
    gen = torch.Generator().manual_seed(3)
    w13, w2 = torch.randn(E, 160, H, generator=gen), torch.randn(E, H, 160, generator=gen)
    w = ExpertWeights(w13=StackedWeight(format="dense", tensors={"weight": w13}, rows=160, cols=H),
                      w2=StackedWeight(format="dense", tensors={"weight": w2}, rows=H, cols=160),
                      weight_key=None, activation_key=None, gated=False)
    shard = shard_experts_tp(w, tp_rank=1, tp_size=3, multiple=32)  # units of 32: 2, 2, 1 -> rank 1 has [64, 128)
    assert shard.intermediate_size == 64 and not shard.gated
    assert torch.equal(shard.w13.tensors["weight"], w13[:, 64:128]) and torch.equal(shard.w2.tensors["weight"],
                                                                                    w2[:, :, 64:128])


def test_errors():
    w = experts("fp8-block", {"block_size": (128, 128)}, 160)
    with pytest.raises(ShardingError, match="not a multiple of the 128-row block"):
        shard_experts_tp(w, tp_rank=0, tp_size=2)
    w = experts("dense", {}, 128)
    with pytest.raises(ShardingError, match="tp_rank"):
        shard_experts_tp(w, tp_rank=2, tp_size=2)
    with pytest.raises(ShardingError, match="tp_size"):
        shard_experts_tp(w, tp_rank=0, tp_size=0)
    with pytest.raises(ShardingError, match="multiple"):
        shard_experts_tp(w, tp_rank=0, tp_size=1, multiple=0)
    with pytest.raises(ShardingError, match="canonical"):
        shard_experts_tp(replace(w, layout="reference"), tp_rank=0, tp_size=2)
    with pytest.raises(ShardingError, match="granularity"):
        plan_tp_shard(intermediate_size=128, tp_rank=0, tp_size=1, granularity=True)
    with pytest.raises(ShardingError, match="no tensor-parallel sharding"):
        shard_experts_tp(replace(w, w2=replace(w.w2, format="exotic")), tp_rank=0, tp_size=2)


def test_act_order_down_projection_cannot_be_split():
    gen = torch.Generator().manual_seed(4)
    params = {"bits": 4, "group_size": 32, "desc_act": True}
    w2 = torch.randn(E, H, 128, generator=gen)
    perm = torch.randperm(128, generator=gen)
    w13 = torch.randn(E, 256, H, generator=gen)
    w = ExpertWeights(
        w13=StackedWeight(format="gptq", tensors=encode("gptq", w13, **params, perm=torch.randperm(H, generator=gen)),
                          params=params, rows=256, cols=H),
        w2=StackedWeight(format="gptq", tensors=encode("gptq", w2, **params, perm=perm), params=params, rows=H, cols=128),
        weight_key=None, activation_key=None)
    with pytest.raises(ShardingError, match="act-order"):
        shard_experts_tp(w, tp_rank=0, tp_size=2)
    # w13 is split along its output rows, which act order on its input channels does not touch
    shard = shard_experts_tp(replace(w, w2=experts("gptq", {"bits": 4, "group_size": 32}, 128).w2,
                                     w13=replace(w.w13)), tp_rank=1, tp_size=2)
    assert torch.equal(shard.w13.dequantize(), w.w13.dequantize()[:, [*range(64, 128), *range(192, 256)]])


def test_select_experts():
    w = experts("gptq", {"bits": 4, "group_size": 32, "sym": False}, 128, bias=True)
    picked = select_experts(w, [2, 0])
    assert picked.num_experts == 2
    full13, full2 = w.dequantize()
    p13, p2 = picked.dequantize()
    assert torch.equal(p13, full13[[2, 0]]) and torch.equal(p2, full2[[2, 0]])
    assert torch.equal(picked.w13_bias, w.w13_bias[[2, 0]]) and torch.equal(picked.w2_bias, w.w2_bias[[2, 0]])
    with pytest.raises(ShardingError, match="distinct"):
        select_experts(w, [1, 1])
    with pytest.raises(ShardingError, match=r"\[0, 3\)"):
        select_experts(w, [3])


@pytest.mark.skipif(not hasattr(torch, "float8_e8m0fnu"), reason="torch without float8_e8m0fnu")
def test_e8m0_typed_scales_pad_with_one():
    w = experts("mxfp8", {}, 160)
    typed = replace(w, w13=replace(w.w13, tensors={**w.w13.tensors,
                                                   "weight_scale": w.w13.tensors["weight_scale"].view(torch.float8_e8m0fnu)}),
                    w2=replace(w.w2, tensors={**w.w2.tensors,
                                              "weight_scale": w.w2.tensors["weight_scale"].view(torch.float8_e8m0fnu)}))
    shard = shard_experts_tp(typed, tp_rank=1, tp_size=2, multiple=64)  # units of 64: 2, 1 -> rank 1 pads 64
    assert shard.w2.tensors["weight_scale"].dtype == torch.float8_e8m0fnu
    assert shard.w2.tensors["weight_scale"].view(torch.uint8)[..., 1:].eq(127).all()  # padded blocks: 2**0
    assert torch.equal(shard.w2.dequantize(), shard_experts_tp(w, tp_rank=1, tp_size=2, multiple=64).w2.dequantize())
