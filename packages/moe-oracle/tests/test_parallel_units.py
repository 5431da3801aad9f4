"""Prepare/finalize selection and its reasons, the dispatch wire format (which schemes quantize
before dispatch, and that the round trip is bit exact), input checks, and the distributed paths
at world size 1 in this process (gloo): equal to the local layer, clear errors for bad groups
and expert maps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import quantkeys as qk
from moe_oracle import (
    MoEConfig,
    MoEQuantConfig,
    ParallelConfig,
    Platform,
    PrepareFinalizeKind,
    TokenLayout,
    make_kernel,
)
from moe_oracle.parallel import RowCodec, check_inputs, choose_codec, select_prepare_finalize
from moe_oracle.reference.activation_quant import quantize_activation
from weight_layouts import load_experts, select_experts
from weight_layouts.writer import write_tiny_checkpoint

Kind = PrepareFinalizeKind
CPU = Platform.parse("cpu")
H = 256


def cfg(**kw) -> MoEConfig:
    base = dict(num_experts=8, top_k=2, hidden_size=H, intermediate_size=128)
    return MoEConfig(**{**base, **kw})


def quant_of(scheme: str) -> MoEQuantConfig:
    s = qk.SCHEMES[scheme]
    static = s.activation_key is not None and s.activation_key.is_static
    one = torch.tensor([0.01])
    return MoEQuantConfig.from_keys(weight_key=s.support("reference").weight_keys[0], activation_key=s.activation_key,
                                    a13_scale=one if static else None, a2_scale=one if static else None)


# -- selection ---------------------------------------------------------------------------------------
def test_no_parallel_config_is_local_and_says_so():
    sel = select_prepare_finalize(config=cfg(), parallel=None)
    assert sel.kind is Kind.LOCAL and "single-rank" in sel.reason
    sel = select_prepare_finalize(config=cfg(ep_size=4, ep_rank=1), parallel=None)
    assert sel.kind is Kind.LOCAL and "partial sum" in sel.reason


@pytest.mark.parametrize(("ep", "top_k", "tokens", "kind", "words"), [
    (1, 2, TokenLayout.DATA_PARALLEL, Kind.LOCAL, "ep_size=1"),
    (4, 2, TokenLayout.REPLICATED, Kind.NAIVE, "replicated"),
    (4, 2, TokenLayout.DATA_PARALLEL, Kind.ALL_TO_ALL, "top_k=2 < ep_size=4"),
    (2, 2, TokenLayout.DATA_PARALLEL, Kind.NAIVE, "top_k=2 >= ep_size=2"),
    (8, 8, TokenLayout.DATA_PARALLEL, Kind.NAIVE, "top_k=8 >= ep_size=8"),
    (16, 8, TokenLayout.DATA_PARALLEL, Kind.ALL_TO_ALL, "7.50 rows per token"),
])
def test_auto_selection_rules(ep, top_k, tokens, kind, words):
    config = cfg(num_experts=256, top_k=top_k, ep_size=ep)
    sel = select_prepare_finalize(config=config, parallel=ParallelConfig(tokens=tokens))
    assert sel.kind is kind and not sel.forced
    assert words in sel.reason
    assert "automatic" in sel.explain()


def test_forced_choice_is_reported():
    sel = select_prepare_finalize(config=cfg(), parallel=ParallelConfig(kind=Kind.ALL_TO_ALL), tp_size=4)
    assert sel.kind is Kind.ALL_TO_ALL and sel.forced
    text = sel.explain()
    assert "forced by ParallelConfig.kind" in text and "all-reduced over 4 ranks" in text


@pytest.mark.parametrize(("scheme", "dtype", "quantized"), [
    ("fp8_block", torch.bfloat16, True), ("fp8_block", torch.float32, True), ("fp8_block", torch.float16, False),
    ("fp8_channel", torch.bfloat16, True), ("int8_w8a8", torch.bfloat16, True), ("mxfp8", torch.bfloat16, True),
    ("mxfp4_w4a8", torch.float32, True), ("fp8_tensor_static", torch.bfloat16, True),
    ("fp8_tensor_dynamic", torch.bfloat16, False), ("int4_w4a16", torch.bfloat16, False),
    ("unquantized", torch.bfloat16, False), ("mxfp4_w4a16", torch.bfloat16, False),
])
def test_which_schemes_quantize_before_dispatch(scheme, dtype, quantized):
    codec, why = choose_codec(config=cfg(in_dtype=dtype), quant=quant_of(scheme), quantize=None)
    assert codec.quantized is quantized, why
    assert ("quantized with" in why) is quantized
    sel = select_prepare_finalize(config=cfg(in_dtype=dtype, ep_size=4), parallel=ParallelConfig(),
                                  quant=quant_of(scheme))
    assert sel.dispatch == why and f"dispatch: {why}" in sel.explain()


def test_quantize_dispatch_overrides():
    q = quant_of("fp8_block")
    assert not choose_codec(config=cfg(), quant=q, quantize=False)[0].quantized
    codec, why = choose_codec(config=cfg(in_dtype=torch.float16), quant=q, quantize=True)
    assert codec.quantized and "not bit exact" in why
    for scheme, words in (("int4_w4a16", "does not quantize activations"), ("fp8_tensor_dynamic", "per-tensor")):
        with pytest.raises(ValueError, match=words):
            choose_codec(config=cfg(), quant=quant_of(scheme), quantize=True)


def test_nothing_dispatched_for_replicated_tokens():
    sel = select_prepare_finalize(config=cfg(ep_size=4), parallel=ParallelConfig(tokens=TokenLayout.REPLICATED),
                                  quant=quant_of("fp8_block"))
    assert sel.kind is Kind.NAIVE and sel.dispatch == ""


def test_parallel_config_rejects_bad_values():
    with pytest.raises(ValueError, match="PrepareFinalizeKind"):
        ParallelConfig(kind="naive")
    with pytest.raises(ValueError, match="TokenLayout"):
        ParallelConfig(tokens="replicated")
    with pytest.raises(ValueError, match="quantize_dispatch"):
        ParallelConfig(quantize_dispatch=1)


# -- the wire format ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "dtype", "row_bytes"), [
    (None, torch.bfloat16, 2 * H), (None, torch.float32, 4 * H),
    (qk.kFp8Dynamic128Sym, torch.bfloat16, H + 2 * 4), (qk.kFp8DynamicTokenSym, torch.bfloat16, H + 4),
    (qk.kInt8DynamicTokenSym, torch.float32, H + 4), (qk.kMxfp8Dynamic, torch.bfloat16, H + H // 32),
    (qk.kFp8StaticTensorSym, torch.bfloat16, H),
])
def test_row_bytes(key, dtype, row_bytes):
    static = torch.tensor([0.02]) if key is not None and key.is_static else None
    codec = RowCodec(hidden_size=H, dtype=dtype, key=key, static_scale=static)
    assert codec.row_bytes == row_bytes
    x = torch.randn(5, H).to(dtype)
    rows = codec.encode(x)
    assert rows.dtype == torch.uint8 and tuple(rows.shape) == (5, row_bytes)
    assert codec.decode(rows).dtype == dtype
    assert tuple(codec.encode(x[:0]).shape) == (0, row_bytes) and tuple(codec.decode(rows[:0]).shape) == (0, H)


def test_codec_refuses_keys_without_row_wise_scales():
    with pytest.raises(ValueError, match="per-tensor"):
        RowCodec(hidden_size=H, dtype=torch.bfloat16, key=qk.kFp8DynamicTensorSym)
    with pytest.raises(ValueError, match="cannot be sent quantized"):
        RowCodec(hidden_size=H, dtype=torch.bfloat16, key=qk.kInt8DynamicTokenAsym)
    with pytest.raises(ValueError, match="static_scale"):
        RowCodec(hidden_size=H, dtype=torch.bfloat16, key=qk.kFp8StaticTensorSym)


ROW_KEYS = [qk.kFp8Dynamic128Sym, qk.kFp8Dynamic32Sym, qk.kFp8DynamicTokenSym, qk.kInt8DynamicTokenSym,
            qk.kMxfp8Dynamic, qk.kFp8StaticTensorSym, qk.kInt8StaticTensorSym]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("key", ROW_KEYS, ids=str)
def test_quantized_dispatch_round_trip_is_bit_exact(key, dtype):
    """What the receiving experts compute from the decoded rows equals what they compute from the
    original rows: same codes, same scales (the claim of moe_oracle.parallel.wire)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(512, H, generator=gen) * 10 ** torch.empty(512, 1).uniform_(-6, 6, generator=gen)).to(dtype)
    x[3] = 0
    static = (x.float().abs().max() / 448 * 0.9).reshape(1) if key.is_static else None
    codec = RowCodec(hidden_size=H, dtype=dtype, key=key, static_scale=static)
    again = quantize_activation(codec.decode(codec.encode(x)), key, static_scale=static)
    first = quantize_activation(x, key, static_scale=static)
    as_int = (lambda t: t.view(torch.uint8)) if first.q.dtype == torch.float8_e4m3fn else (lambda t: t)
    assert torch.equal(as_int(again.q), as_int(first.q))
    assert torch.equal(again.scale, first.scale)


@pytest.mark.parametrize("qmax", [448.0, 127.0])
def test_float32_scales_survive_decode(qmax):
    """``fl(fl(Q * s) / Q) == s`` for ``s = fl(amax / Q)``, every float32 mantissa of amax: the
    largest decoded value gives the scale back (exponent-independent, so one binade suffices)."""
    amax = ((127 << 23) | torch.arange(1 << 23, dtype=torch.int32)).view(torch.float32)
    q = torch.full_like(amax, qmax)
    s = amax / q
    assert torch.equal((s * q) / q, s)


# -- input checks ------------------------------------------------------------------------------------
def test_check_inputs_errors():
    config = cfg(in_dtype=torch.float32)
    x, w, ids = torch.randn(3, H), torch.rand(3, 2), torch.zeros(3, 2, dtype=torch.int64)
    check_inputs(config, hidden_states=x, topk_weights=w, topk_ids=ids)
    with pytest.raises(ValueError, match="swapped"):
        check_inputs(config, hidden_states=x, topk_weights=ids, topk_ids=w)
    with pytest.raises(ValueError, match="dtype"):
        check_inputs(config, hidden_states=x.bfloat16(), topk_weights=w, topk_ids=ids)
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        check_inputs(config, hidden_states=x, topk_weights=w[:, :1], topk_ids=ids)
    with pytest.raises(ValueError, match="expert id 8"):
        check_inputs(config, hidden_states=x, topk_weights=w, topk_ids=ids + 8)
    with pytest.raises(ValueError, match=f"\\[M, {H}\\]"):
        check_inputs(config, hidden_states=x[:, :8], topk_weights=w, topk_ids=ids)


# -- world size 1 in this process ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("pf") / "fp8_block", scheme="fp8_block", hidden_size=H,
                                 intermediate_size=128, seed=2).path
    return load_experts(path, 0)


def test_parallel_needs_an_initialized_process_group(weights):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        make_kernel(weights=weights, config=cfg(), platform=CPU, parallel=ParallelConfig(kind=Kind.NAIVE))


@pytest.fixture
def gloo_world_1(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_world_size_1_paths_equal_the_local_layer(weights, gloo_world_1):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(21, H, generator=gen)
    tw, ids = torch.softmax(torch.randn(21, 8, generator=gen), -1).topk(2)
    ids[0, 1] = -1  # a padding slot
    for dtype in (torch.float32, torch.bfloat16):
        config = cfg(in_dtype=dtype)
        local = make_kernel(weights=weights, config=config, platform=CPU)
        ref = local(hidden_states=x.to(dtype), topk_weights=tw, topk_ids=ids)
        for kind, tokens in ((Kind.ALL_TO_ALL, TokenLayout.DATA_PARALLEL), (Kind.NAIVE, TokenLayout.DATA_PARALLEL),
                             (Kind.NAIVE, TokenLayout.REPLICATED)):
            kernel = make_kernel(weights=weights, config=config, platform=CPU,
                                 parallel=ParallelConfig(kind=kind, tokens=tokens))
            assert kernel.prepare_finalize.name == kind.value and kernel.prepare_finalize_selection.kind is kind
            out = kernel(hidden_states=x.to(dtype), topk_weights=tw, topk_ids=ids)
            if kind is Kind.NAIVE or dtype == torch.float32:
                assert torch.equal(out, ref), (kind, dtype)
            else:  # each (token, slot) row is rounded to bfloat16 before the sum
                assert (out.float() - ref.float()).abs().max() <= 2**-6 * ref.float().abs().max()
            empty = kernel(hidden_states=x[:0].to(dtype), topk_weights=tw[:0], topk_ids=ids[:0])
            assert tuple(empty.shape) == (0, H)
        auto = make_kernel(weights=weights, config=config, platform=CPU, parallel=ParallelConfig())
        assert auto.prepare_finalize.name == "local" and "ep_size=1" in auto.explain()


def test_group_must_match_the_config(weights, gloo_world_1):
    config = cfg(ep_size=2, ep_rank=0)
    with pytest.raises(ValueError, match="EP group of 1"):
        make_kernel(weights=select_experts(weights, range(4)), config=config, platform=CPU,
                    parallel=ParallelConfig(kind=Kind.NAIVE))


def test_expert_maps_must_place_every_expert_once(weights, gloo_world_1):
    config = replace(cfg(), expert_map=(0, 1, 2, 3, -1, -1, -1, -1))
    local = select_experts(weights, range(4))
    with pytest.raises(ValueError, match=r"experts \[4, 5, 6, 7\] are on no rank"):
        make_kernel(weights=local, config=config, platform=CPU, parallel=ParallelConfig(kind=Kind.ALL_TO_ALL))
