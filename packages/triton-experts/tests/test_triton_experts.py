"""Every triton scheme against the reference experts and float64 math on the dense weights.

Runs the real kernels: on the CPU under TRITON_INTERPRET=1 (the `triton-interpret` config) and on
a GPU (the `cuda` config)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import quantkeys as qk
import weight_layouts as wl
from moe_oracle import Activation, MoEConfig, Platform, RejectReason, make_kernel, select_backend
from weight_layouts.writer import write_tiny_checkpoint

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")

ON_GPU = torch.cuda.is_available()
if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cuda" if ON_GPU else "cpu"
H100 = Platform.parse("cuda:9.0")
PLATFORM = Platform.detect() if ON_GPU else H100
SCHEMES = [s.name for s in qk.SCHEMES.values() if s.support("triton") is not None]
# Bound vs the reference experts (same dequantized weights, same activation quantization): bf16
# roundings of the two GEMM inputs (2^-9 relative each; the CPU interpreter truncates instead of
# rounding, 2^-8) and rare one-step flips of a re-quantized activation: 3% relative.
BOUND_VS_REFERENCE = 0.03
# MX activations (e4m3 codes, one power-of-two scale per 32) step 6-12% per code: the bf16 rounding of
# the GEMM1 output flips a few percent of the re-quantized codes, which measured 2.9-3.3% here
BOUND_MX_ACTIVATIONS = 0.05


def bound(scheme: str) -> float:
    return BOUND_MX_ACTIVATIONS if scheme == "mxfp8" else BOUND_VS_REFERENCE


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _case(tmp_path, scheme, *, e, h, i, bias, seed):
    ckpt = write_tiny_checkpoint(tmp_path / f"{scheme}-{e}-{h}-{i}-{bias}", scheme=scheme, num_experts=e,
                                 hidden_size=h, intermediate_size=i, bias=bias and scheme != "mxfp4_w4a16", seed=seed)
    weights = wl.load_experts(ckpt.path, 0)
    act = Activation.SWIGLUOAI if scheme == "mxfp4_w4a16" else Activation.SILU
    return ckpt, weights, act


def _inputs(m, k, e_global, h, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, h, generator=gen).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(e_global, generator=gen)[:k] for _ in range(m)]).to(torch.int32)
    tw = torch.rand(m, k, generator=gen)
    if m > 2:
        ids[1] = -1  # a padding row
    return x.to(DEVICE), tw.to(DEVICE), ids.to(DEVICE)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("m", "e", "h", "i"), [(1, 4, 128, 128), (9, 8, 256, 128)])
def test_scheme_matches_reference(tmp_path, scheme, m, e, h, i):
    _, weights, act = _case(tmp_path, scheme, e=e, h=h, i=i, bias=True, seed=m + e)
    config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, activation=act,
                       has_bias=weights.w13_bias is not None, in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
    assert kernel.experts.weights.layout == "triton"
    reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
    x, tw, ids = _inputs(m, 2, e, h, seed=m)
    out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
    assert rel(out.cpu(), ref) < BOUND_VS_REFERENCE, scheme
    if m > 2:
        assert torch.all(out[1] == 0)  # padding row


@pytest.mark.parametrize("scheme", ["fp8_block", "int4_w4a16", "unquantized"])
def test_single_slot_rows_match_the_reference(tmp_path, scheme):
    """Rows of one slot each (the all-to-all dispatch's received rows), summed per token, against the
    reference layer; then the same row count routed with two slots (the plans are per (M, slots))."""
    _, weights, act = _case(tmp_path, scheme, e=8, h=256, i=128, bias=False, seed=5)
    config = MoEConfig(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128, activation=act,
                       in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
    reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
    x, tw, ids = _inputs(9, 2, 8, 256, seed=11)
    rows = kernel.experts.apply(hidden_states=x.repeat_interleave(2, dim=0), topk_weights=tw.reshape(-1, 1),
                                topk_ids=ids.reshape(-1, 1))
    out = rows.float().reshape(9, 2, -1).sum(dim=1).cpu()
    ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
    assert rel(out, ref) < BOUND_VS_REFERENCE, scheme
    assert torch.all(out[1] == 0)  # the padding row's two slots
    x18, tw18, ids18 = _inputs(18, 2, 8, 256, seed=12)  # 18 tokens again, now of two slots
    out18 = kernel(hidden_states=x18, topk_weights=tw18, topk_ids=ids18).cpu()
    ref18 = reference(hidden_states=x18.cpu(), topk_weights=tw18.cpu(), topk_ids=ids18.cpu())
    assert rel(out18, ref18) < BOUND_VS_REFERENCE, scheme


def test_expert_parallel_rank_reads_the_models_tuned_configs(tmp_path, monkeypatch):
    """An EP rank (4 of 8 experts) running single-slot rows looks up the model's tuned file (E = 8) at
    the token count that gives each expert as many rows (rows * 1 * 8 / (4 * 2)), and runs it right."""
    from triton_experts import tuning
    from weight_layouts import select_experts

    e, h, i = 8, 256, 128
    _, weights, act = _case(tmp_path, "fp8_block", e=e, h=h, i=i, bias=False, seed=3)
    config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, activation=act,
                       in_dtype=torch.bfloat16, ep_rank=0, ep_size=2)
    local = select_experts(weights, [0, 1, 2, 3])
    kernel = make_kernel(weights=local.to(DEVICE), config=config, platform=PLATFORM, force="triton")
    reference = make_kernel(weights=local, config=config, platform=PLATFORM, force="reference")
    small = tuning.LaunchConfig(16, 32, 128, 1, 4, 2)
    large = tuning.LaunchConfig(32, 64, 128, 1, 4, 2)
    device = "cpu" if DEVICE == "cpu" else torch.cuda.get_device_name(DEVICE)
    for n, k in ((2 * i, h), (h, i)):
        name = tuning.file_name(e=e, n=n, k=k, variant=kernel.experts.variant_name, device=device)
        (tmp_path / name).write_text(json.dumps({"1": small.as_dict(), "64": large.as_dict()}))
    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path))
    tuning._load.cache_clear()
    try:
        for rows, want in ((2, small), (40, large)):  # tokens 2 -> tuned M 1; tokens 40 -> tuned M 64
            gen = torch.Generator().manual_seed(rows)
            x = torch.randn(rows, h, generator=gen).to(torch.bfloat16)
            ids = torch.randint(0, 4, (rows, 1), generator=gen, dtype=torch.int32)
            tw = torch.rand(rows, 1, generator=gen)
            out = kernel.experts.apply(hidden_states=x.to(DEVICE), topk_weights=tw.to(DEVICE), topk_ids=ids.to(DEVICE))
            assert kernel.experts.last_configs == ((want, True), (want, True)), rows
            ref = reference.experts.apply(hidden_states=x, topk_weights=tw, topk_ids=ids)
            assert rel(out.cpu(), ref) < BOUND_VS_REFERENCE
    finally:
        tuning._load.cache_clear()


@pytest.mark.parametrize("scheme", ["fp8_block", "int4_w4a16", "mxfp4_w4a16", "unquantized"])
def test_expert_map(tmp_path, scheme):
    e, h, i = 4, 128, 128
    _, weights, act = _case(tmp_path, scheme, e=e, h=h, i=i, bias=False, seed=3)
    # rank 1 of 2 with a strided placement: global experts 1, 3, 5, 7 are local 0..3
    emap = tuple(g // 2 if g % 2 else -1 for g in range(2 * e))
    config = MoEConfig(num_experts=2 * e, top_k=2, hidden_size=h, intermediate_size=i, activation=act,
                       ep_size=2, ep_rank=1, expert_map=emap, in_dtype=torch.bfloat16,
                       has_bias=weights.w13_bias is not None)
    kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
    reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
    x, tw, ids = _inputs(12, 2, 2 * e, h, seed=4)
    out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
    ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
    assert rel(out.cpu(), ref) < BOUND_VS_REFERENCE
    no_local = [t for t in range(12) if all(int(g) < 0 or int(g) % 2 == 0 for g in ids[t])]
    for t in no_local:
        assert torch.all(out[t] == 0)


def test_against_dense_float64(tmp_path):
    """The whole path (checkpoint -> triton layout -> kernels) against float64 on the dense weights."""
    e, h, i = 8, 256, 128
    ckpt, weights, _ = _case(tmp_path, "fp8_block", e=e, h=h, i=i, bias=False, seed=9)
    config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
    x, tw, ids = _inputs(16, 2, e, h, seed=5)
    out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids).cpu().double()
    ref = torch.zeros(16, h, dtype=torch.float64)
    for t in range(16):
        for j in range(2):
            g = int(ids[t, j])
            if g < 0:
                continue
            hh = ckpt.w13[0][g].double() @ x[t].cpu().double()
            a = torch.nn.functional.silu(hh[:i]) * hh[i:]
            ref[t] += float(tw[t, j]) * (ckpt.w2[0][g].double() @ a)
    # fp8 weights (~2.6% RMS) + fp8 1x128 activations on both GEMM inputs (~2-3%): 8% bound
    assert rel(out, ref) < 0.08


def test_oracle_prefers_triton_on_cuda_and_says_why_not_elsewhere():
    cfg = MoEConfig(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128)
    sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg,
                         platform=H100)
    assert sel.backend == "triton"
    sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg,
                         platform=Platform.parse("cuda:8.0"))
    assert sel.backend == "reference"
    (rej,) = [r for r in sel.rejected if r.backend == "triton"]
    assert rej.reason is RejectReason.DEVICE_CAPABILITY and "8.9" in rej.detail
    sel = select_backend(weight_key=qk.kInt4Static, activation_key=None, config=cfg, platform=Platform.parse("cuda:8.0"))
    assert sel.backend == "triton"  # weight-only int4 runs on Ampere
    from moe_oracle import ForcedBackendError

    with pytest.raises(ForcedBackendError, match="fp8e4nv"):
        select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg,
                       platform=Platform.parse("xpu"), force="triton")


@pytest.mark.parametrize("scheme", ["int4_w4a16", "int4_w4a16_asym", "int8_w8a16"])
@pytest.mark.parametrize(("block_m", "block_k"), [(16, 256), (16, 128), (16, 64), (32, 128), (32, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_k_tiles_against_quantization_groups(tmp_path, monkeypatch, scheme, block_m, block_k, dtype):
    """K tiles of 2 quantization groups (per-element dequantization), of one group and of half a
    group (4-bit with 16-row tiles: the codes path with zero and scale applied after the dot, through
    inline PTX on NVIDIA GPUs; with 32-row tiles: per-element), in bf16 and fp16, against the reference."""
    if scheme not in SCHEMES:
        pytest.skip(f"{scheme} is not served by triton")
    from triton_experts import tuning

    e, h, i = 8, 256, 128
    _, weights, act = _case(tmp_path, scheme, e=e, h=h, i=i, bias=False, seed=11)
    folder = tmp_path / "configs"
    folder.mkdir()
    device = torch.cuda.get_device_name() if ON_GPU else "cpu"
    cfg = {"BLOCK_M": block_m, "BLOCK_N": 32, "BLOCK_K": block_k, "GROUP_M": 1, "num_warps": 4, "num_stages": 2}
    variant = "int8_w8a16" if scheme == "int8_w8a16" else "int4_w4a16"
    (folder / tuning.file_name(e=e, n=2 * i, k=h, variant=variant, device=device)).write_text(json.dumps({"1": cfg}))
    monkeypatch.setenv(tuning.ENV_DIR, str(folder))
    tuning._load.cache_clear()
    try:
        config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, activation=act,
                           in_dtype=dtype)
        kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
        reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
        x, tw, ids = _inputs(5, 2, e, h, seed=7)
        x = x.to(dtype)
        out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        (c1, tuned1), _ = kernel.experts.last_configs
        assert tuned1 and block_k == c1.BLOCK_K
        ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
        assert out.dtype == dtype
        assert rel(out.cpu(), ref) < BOUND_VS_REFERENCE, scheme
    finally:
        tuning._load.cache_clear()


@pytest.mark.parametrize("scheme", ["unquantized", "fp8_block", "int4_w4a16"])
@pytest.mark.parametrize("split_k", [2, 3])
def test_split_k_matches_reference(tmp_path, monkeypatch, scheme, split_k):
    """SPLIT_K programs per output tile store float32 partials that the activation and the top-k
    reduction sum (the bias added once; with 3 splits of 4 K steps the last split has none), against
    the reference experts."""
    from triton_experts import tuning

    e, h, i = 8, 256, 128
    _, weights, act = _case(tmp_path, scheme, e=e, h=h, i=i, bias=True, seed=5)
    folder = tmp_path / "configs"
    variant = {"unquantized": "bf16"}.get(scheme, scheme)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 2,
           "SPLIT_K": split_k}
    _write_configs(folder, e=e, h=h, i=i, variant=variant, cfg=cfg)
    monkeypatch.setenv(tuning.ENV_DIR, str(folder))
    tuning._load.cache_clear()
    try:
        config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, activation=act,
                           in_dtype=torch.bfloat16, has_bias=True)
        kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
        reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
        x, tw, ids = _inputs(5, 2, e, h, seed=3)
        out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        assert [c.SPLIT_K for c, _ in kernel.experts.last_configs] == [split_k, split_k]
        ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
        assert rel(out.cpu(), ref) < BOUND_VS_REFERENCE, scheme
    finally:
        tuning._load.cache_clear()


def _write_configs(folder, *, e, h, i, variant, cfg):
    from triton_experts import tuning

    device = torch.cuda.get_device_name() if ON_GPU else "cpu"
    folder.mkdir(exist_ok=True)
    for n, k in ((2 * i, h), (h, i)):
        (folder / tuning.file_name(e=e, n=n, k=k, variant=variant, device=device)).write_text(json.dumps({"1": cfg}))


def _two_rank_config(*, e, h, i, act, ep, dtype, has_bias):
    """Top-2 over ``e`` experts; with ``ep``, rank 1 of 2 whose ``e`` local experts are the model's odd
    ones (a strided expert map over 2e)."""
    emap = tuple(g // 2 if g % 2 else -1 for g in range(2 * e)) if ep else None
    return MoEConfig(num_experts=2 * e if ep else e, top_k=2, hidden_size=h, intermediate_size=i, activation=act,
                     ep_size=2 if ep else 1, ep_rank=1 if ep else 0, expert_map=emap, in_dtype=dtype,
                     has_bias=has_bias)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("block_m", "split_k"), [(1, 1), (1, 2), (4, 1)])
@pytest.mark.parametrize("ep", [False, True], ids=["all-experts", "expert-map"])
def test_few_row_blocks_match_reference(tmp_path, monkeypatch, scheme, block_m, split_k, ep):
    """Blocks of fewer than 16 rows multiply on the CUDA cores; one-row blocks also skip the
    alignment (rows read their experts themselves, through the expert map on an EP rank): bias,
    padding rows, other ranks' experts and split-K partials, against the reference experts."""
    from triton_experts import tuning
    from triton_experts.align import DirectRows, rows_for_experts

    e, h, i = 4, 128, 128
    _, weights, act = _case(tmp_path, scheme, e=e, h=h, i=i, bias=True, seed=block_m + 2 * split_k)
    variant = qk.SCHEMES[scheme].support("triton").option("variant")
    bk = 32 if variant in ("mxfp8", "mxfp4") else 64
    cfg = {"BLOCK_M": block_m, "BLOCK_N": 32, "BLOCK_K": bk, "GROUP_M": 1, "num_warps": 4, "num_stages": 2,
           "SPLIT_K": split_k}
    # tuned files are per model (all experts): an EP rank of 4 local experts out of 8 reads E = 8
    e_model = 2 * e if ep else e
    _write_configs(tmp_path / "configs", e=e_model, h=h, i=i, variant=variant, cfg=cfg)
    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path / "configs"))
    tuning._load.cache_clear()
    try:
        config = _two_rank_config(e=e, h=h, i=i, act=act, ep=ep, dtype=torch.bfloat16,
                                  has_bias=weights.w13_bias is not None)
        kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
        reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
        x, tw, ids = _inputs(6, 2, e_model, h, seed=block_m)
        out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        assert [c.BLOCK_M for c, _ in kernel.experts.last_configs] == [block_m, block_m]
        rows = rows_for_experts(ids, num_local_experts=e, num_experts=e_model, block_m=block_m,
                                expert_map=kernel.experts.expert_map)
        assert isinstance(rows, DirectRows) == (block_m == 1)
        ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
        assert rel(out.cpu(), ref) < bound(scheme), scheme
        assert torch.all(out[1] == 0)  # the padding row
    finally:
        tuning._load.cache_clear()


def test_launch_config_names_its_kernel():
    from triton_experts.tuning import Kernel, LaunchConfig

    gluon = LaunchConfig(16, 128, 128, 1, 4, 2, SPLIT_K=2, KERNEL=Kernel.GLUON)
    assert gluon.as_dict()["KERNEL"] == "gluon" and LaunchConfig.from_dict(gluon.as_dict()) == gluon
    persistent = LaunchConfig(16, 128, 128, 1, 4, 2, KERNEL=Kernel.GLUON_PERSISTENT)
    assert persistent.as_dict()["KERNEL"] == "gluon_persistent" and LaunchConfig.from_dict(persistent.as_dict()) == \
        persistent
    plain = LaunchConfig(16, 128, 128, 1, 4, 2)
    assert "KERNEL" not in plain.as_dict() and LaunchConfig.from_dict(plain.as_dict()) == plain
    with pytest.raises(ValueError, match="KERNEL='cutlass': expected one of"):
        LaunchConfig.from_dict({**plain.as_dict(), "KERNEL": "cutlass"})


@pytest.mark.parametrize("scheme", ["int4_w4a16", "int4_w4a16_asym"])
@pytest.mark.parametrize(("split_k", "stages", "block_n"), [(1, 2, 64), (2, 3, 128)])
@pytest.mark.parametrize("ep", [False, True], ids=["all-experts", "expert-map"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(("kernel_name", "block_m"),
                         [("gluon", 16), ("gluon", 1), ("gluon_persistent", 16), ("gluon_persistent", 1)],
                         ids=["gluon", "gluon-direct-rows", "gluon_persistent", "gluon_persistent-direct-rows"])
def test_gluon_decode_tiles_match_reference(tmp_path, monkeypatch, scheme, split_k, stages, block_n, ep, dtype,
                                            kernel_name, block_m):
    """A tuned ``KERNEL: gluon`` / ``gluon_persistent`` tile runs that Gluon decode kernel on an NVIDIA
    GPU (bias, padding row, an EP rank's expert map, split-K partials; the persistent grid held to 3
    programs, so each walks several tiles and its copy ring runs across them; BLOCK_M 1: direct rows,
    no alignment) and the Triton kernel with the same tile where Gluon cannot run (the interpreter);
    both against the reference experts."""
    from triton_experts import tuning
    from triton_experts.align import DirectRows, rows_for_experts
    from triton_experts.kernels import launch
    from triton_experts.tuning import Kernel

    e, h, i = 4, 256, 256  # two 128-k steps in each GEMM (split-K 2 splits both)
    _, weights, act = _case(tmp_path, scheme, e=e, h=h, i=i, bias=True, seed=split_k + stages)
    cfg = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4,
           "num_stages": stages, "SPLIT_K": split_k, "KERNEL": kernel_name}
    monkeypatch.setattr(launch, "persistent_grid", lambda *args, **kwargs: 3)
    e_model = 2 * e if ep else e
    _write_configs(tmp_path / "configs", e=e_model, h=h, i=i, variant="int4_w4a16", cfg=cfg)
    monkeypatch.setenv(tuning.ENV_DIR, str(tmp_path / "configs"))
    tuning._load.cache_clear()
    try:
        config = _two_rank_config(e=e, h=h, i=i, act=act, ep=ep, dtype=dtype, has_bias=True)
        kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
        reference = make_kernel(weights=weights, config=config, platform=PLATFORM, force="reference")
        x, tw, ids = _inputs(6, 2, e_model, h, seed=split_k)
        x = x.to(dtype)
        out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        assert out.dtype == dtype
        ran = Kernel(kernel_name) if ON_GPU and torch.version.hip is None else Kernel.TRITON
        assert [c.KERNEL for c, _ in kernel.experts.last_configs] == [ran, ran]
        assert [(c.SPLIT_K, c.BLOCK_M) for c, _ in kernel.experts.last_configs] == [(split_k, block_m)] * 2
        rows = rows_for_experts(ids, num_local_experts=e, num_experts=e_model, block_m=block_m,
                                expert_map=kernel.experts.expert_map)
        assert isinstance(rows, DirectRows) == (block_m == 1)
        ref = reference(hidden_states=x.cpu(), topk_weights=tw.cpu(), topk_ids=ids.cpu())
        assert rel(out.cpu(), ref) < BOUND_VS_REFERENCE, scheme
        assert torch.all(out[1] == 0)  # the padding row
    finally:
        tuning._load.cache_clear()


def test_gluon_tile_refusals_name_what_is_missing():
    from triton_experts.kernels.launch import plan_gemm
    from triton_experts.tuning import Kernel, LaunchConfig

    w = torch.zeros(2, 2, 64, 64, dtype=torch.uint8, device=DEVICE)  # K tiles: E 2, K 256, N 64
    s = torch.ones(2, 64, 2, dtype=torch.bfloat16, device=DEVICE)
    z = torch.full((2, 64, 2), 8, dtype=torch.uint8, device=DEVICE)
    eight_rows = LaunchConfig(8, 64, 128, 1, 4, 2, KERNEL=Kernel.GLUON)
    with pytest.raises(ValueError, match="BLOCK_M=16 \\(aligned blocks\\) or 1 \\(direct rows\\) and BLOCK_K=128 "
                                         "\\(got 8 and 128\\)"):
        plan_gemm(variant="int4_w4a16", weight=w, scale=s, zero=z, bias=None, top_k=2, n=64, k=256, group_k=128,
                  config=eight_rows)
    tile = LaunchConfig(16, 64, 128, 1, 4, 2, KERNEL=Kernel.GLUON)
    with pytest.raises(ValueError, match="groups of 128 k \\(got 64\\)"):
        plan_gemm(variant="int4_w4a16", weight=w, scale=s, zero=z, bias=None, top_k=2, n=64, k=256, group_k=64,
                  config=tile)
    with pytest.raises(ValueError, match="a variant with a Gluon kernel"):
        plan_gemm(variant="mxfp4", weight=w, scale=s, zero=z, bias=None, top_k=2, n=64, k=256, group_k=32,
                  config=LaunchConfig(16, 64, 32, 1, 4, 2, KERNEL=Kernel.GLUON))
    w3 = torch.zeros(2, 3, 64, 64, dtype=torch.uint8, device=DEVICE)  # K 384: three K tiles
    s3 = torch.ones(2, 64, 3, dtype=torch.bfloat16, device=DEVICE)
    z3 = torch.full((2, 64, 3), 8, dtype=torch.uint8, device=DEVICE)
    with pytest.raises(ValueError, match=r"KERNEL=gluon_persistent needs .*SPLIT_K dividing the 3 K tiles"):
        plan_gemm(variant="int4_w4a16", weight=w3, scale=s3, zero=z3, bias=None, top_k=2, n=64, k=384, group_k=128,
                  config=LaunchConfig(16, 64, 128, 1, 4, 2, SPLIT_K=2, KERNEL=Kernel.GLUON_PERSISTENT))
    if not ON_GPU:
        with pytest.raises(ValueError, match="an NVIDIA GPU of sm80 or newer, not the interpreter"):
            plan_gemm(variant="int4_w4a16", weight=w, scale=s, zero=z, bias=None, top_k=2, n=64, k=256,
                      group_k=128, config=tile)


def test_block_m_must_be_a_power_of_two(tmp_path):
    from triton_experts.kernels.launch import plan_gemm
    from triton_experts.tuning import LaunchConfig

    w = torch.zeros(2, 64, 128, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="BLOCK_M=3 must be a power of two"):
        plan_gemm(variant="bf16", weight=w, scale=None, zero=None, bias=None, top_k=2, n=64, k=128, group_k=128,
                  config=LaunchConfig(3, 32, 64, 1, 4, 2))


def test_out_of_range_expert_id_is_refused(tmp_path):
    """On the CPU a ValueError; on a GPU a device-side assertion (no host sync), run in a child
    process because a device-side assertion ends the process's CUDA context."""
    e, h, i = 4, 128, 128
    if not ON_GPU:
        _, weights, _ = _case(tmp_path, "fp8_block", e=e, h=h, i=i, bias=False, seed=2)
        config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
        kernel = make_kernel(weights=weights, config=config, platform=PLATFORM, force="triton")
        x, tw, ids = _inputs(3, 2, e, h, seed=1)
        ids[0, 0] = e + 3
        with pytest.raises(ValueError, match=r"expert id 7; valid ids are 0\.\.3"):
            kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        return
    import subprocess
    import sys

    script = f"""
import torch, weight_layouts as wl
from moe_oracle import MoEConfig, Platform, make_kernel
from weight_layouts.writer import write_tiny_checkpoint
ckpt = write_tiny_checkpoint({str(tmp_path / 'c')!r}, scheme="fp8_block", num_experts={e}, hidden_size={h},
                             intermediate_size={i})
config = MoEConfig(num_experts={e}, top_k=2, hidden_size={h}, intermediate_size={i}, in_dtype=torch.bfloat16)
kernel = make_kernel(weights=wl.load_experts(ckpt.path, 0).to("cuda"), config=config, platform=Platform.detect(),
                     force="triton")
x = torch.randn(3, {h}, device="cuda", dtype=torch.bfloat16)
ids = torch.tensor([[0, {e} + 3], [1, 2], [3, 0]], device="cuda", dtype=torch.int32)
kernel(hidden_states=x, topk_weights=torch.rand(3, 2, device="cuda"), topk_ids=ids)
torch.cuda.synchronize()
print("NO ERROR")
"""
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "NO ERROR" not in r.stdout, r.stdout + r.stderr
    assert "device-side assert" in r.stderr or "expert id" in r.stderr, r.stderr[-2000:]


@pytest.mark.cuda_only
@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_forward_replays_from_a_cuda_graph(tmp_path):
    """Engines capture decode in CUDA graphs: capture needs no host synchronization inside forward."""
    e, h, i = 8, 256, 128
    _, weights, _ = _case(tmp_path, "fp8_block", e=e, h=h, i=i, bias=False, seed=6)
    config = MoEConfig(num_experts=e, top_k=2, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
    kernel = make_kernel(weights=weights.to(DEVICE), config=config, platform=PLATFORM, force="triton")
    x, tw, ids = _inputs(4, 2, e, h, seed=8)
    eager = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids).clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    fresh = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
    assert rel(out, fresh) < 1e-6 and rel(eager, fresh) > 0.1  # the replay used the new input
