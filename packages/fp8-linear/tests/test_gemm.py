"""block_scaled_mm: every variant on every kernel against the float64 reference of the dequantized
operands (``ref`` in conftest), and every kind of bad input rejected before a launch."""

from __future__ import annotations

import pytest
import torch

import fp8_linear
from fp8_linear import Granularity, InvalidInputError, LinearPlatform, block_scaled_mm
from fp8_linear.tuned import GemmConfig
from fp8_linear.validation import check_gemm

CPU = LinearPlatform.parse("cpu")
SHAPES = {
    "block": [(1, 48, 256), (37, 200, 384), (64, 256, 128)],
    "token_channel": [(1, 48, 200), (37, 200, 384), (20, 64, 96)],
    "tensor": [(1, 48, 200), (37, 200, 384), (20, 64, 96)],
    "mx": [(1, 48, 96), (37, 200, 160), (16, 64, 64)],
}
CASES = [(g, s) for g, shapes in SHAPES.items() for s in shapes]
OUT = [torch.bfloat16, torch.float16, torch.float32]


def make(h, granularity, m, n, k, *, seed, block=(128, 128), fp8=torch.float8_e4m3fn, e8m0=None):
    """FP8 operands and scales of ``granularity`` (MX: E8M0 scales unless e8m0=False)."""
    gen = torch.Generator().manual_seed(seed)
    a, w = h.rand_fp8((m, k), gen, fp8), h.rand_fp8((n, k), gen, fp8)
    bn, bk = (1, 32) if granularity == "mx" else block
    e8 = (granularity == "mx") if e8m0 is None else e8m0
    shapes = {
        "block": ((m, k // bk), (-(-n // bn), k // bk)),
        "mx": ((m, k // 32), (n, k // 32)),
        "token_channel": ((m, 1), (n, 1)),
        "tensor": ((1,), (1,)),
    }[granularity]
    a_s, w_s = (h.rand_scales(s, gen, e8m0=e8) for s in shapes)
    return a, a_s, w, w_s, (bn, bk)


def run_and_check(h, device, granularity, m, n, k, *, out_dtype, bias, seed, kernel, platform=None,
                  fp8=torch.float8_e4m3fn, block=(128, 128), e8m0=None):
    a, a_s, w, w_s, blk = make(h, granularity, m, n, k, seed=seed, block=block, fp8=fp8, e8m0=e8m0)
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1)).to(out_dtype) if bias else None
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity=granularity, block=blk, bias=b)

    def to(t):
        return None if t is None else t.to(device)

    out = block_scaled_mm(to(a), to(a_s), to(w), to(w_s), block_size=blk, out_dtype=out_dtype, bias=to(b),
                          kernel=kernel, platform=platform, granularity=granularity)
    assert out.shape == (m, n) and out.dtype == out_dtype
    h.assert_close(out, expected, magnitude, bias=b)


# --- reference kernel (no triton) --------------------------------------------------------------
@pytest.mark.parametrize(("granularity", "shape"), CASES, ids=[f"{g}-{'x'.join(map(str, s))}" for g, s in CASES])
@pytest.mark.parametrize("out_dtype", OUT, ids=str)
def test_reference_kernel(h, granularity, shape, out_dtype):
    run_and_check(h, "cpu", granularity, *shape, out_dtype=out_dtype, bias=shape[0] != 1, seed=sum(shape),
                  kernel="reference", platform=CPU)


def test_auto_on_cpu_is_reference_and_keeps_leading_dims(h):
    a, a_s, w, w_s, _ = make(h, "block", 6, 64, 256, seed=1)
    out = block_scaled_mm(a.reshape(2, 3, 256), a_s.reshape(2, 3, 2), w, w_s, platform=CPU)
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block")
    assert out.shape == (2, 3, 64)
    h.assert_close(out.reshape(6, 64), expected, magnitude)


def test_granularity_is_inferred(h):
    for granularity, (m, n, k) in [("block", (4, 64, 256)), ("token_channel", (4, 64, 256)),
                                   ("tensor", (4, 64, 256)), ("mx", (4, 64, 256))]:
        a, a_s, w, w_s, blk = make(h, granularity, m, n, k, seed=2)
        for block in {blk, (128, 128)}:  # MX is found with block (1, 32) and with the default
            _, problem = check_gemm(a, a_s, w, w_s, block_size=block, out_dtype=torch.bfloat16, bias=None,
                                    granularity=None, check_values=True)
            assert problem.granularity is Granularity(granularity), (granularity, block)


def test_e8m0_block_scales_are_upcast(h):
    """UE8M0 weight scales stored as E8M0 bytes with 128x128 blocks: the block variant, upcast."""
    a, a_s, w, w_s, blk = make(h, "block", 5, 130, 256, seed=3, e8m0=True)
    _, problem = check_gemm(a, a_s, w, w_s, block_size=blk, out_dtype=torch.bfloat16, bias=None,
                            granularity=None, check_values=True)
    assert problem.granularity is Granularity.BLOCK and problem.scale_dtype.value == "e8m0"
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block")
    h.assert_close(block_scaled_mm(a, a_s, w, w_s, platform=CPU), expected, magnitude)


# --- bad input --------------------------------------------------------------------------------
def _ok(h):
    a, a_s, w, w_s, _ = make(h, "block", 4, 64, 256, seed=5)
    return {"a_q": a, "a_s": a_s, "w_q": w, "w_s": w_s}


BAD = [
    ("a_q", lambda t: t.to(torch.bfloat16), "a_q must be FP8"),
    ("w_q", lambda t: t.to(torch.bfloat16), "w_q must be an FP8 weight"),
    ("w_q", lambda t: t.to(torch.float8_e5m2), "w_q must be an FP8 weight"),
    ("a_q", lambda t: t.to(torch.float32).to(torch.float8_e4m3fnuz), "share one FP8 dtype"),
    ("a_q", lambda t: torch.cat([t, t], 1)[:, ::2], "a_q must be contiguous"),
    ("w_q", lambda t: t.t().contiguous().t(), "w_q must be contiguous"),
    ("a_q", lambda t: t[:, :200].contiguous(), "does not match w_q"),
    ("w_q", lambda t: t.reshape(1, 64, 256), "w_q must be 2-D"),
    ("a_s", lambda t: t[:, :1], "a_s has shape"),
    ("a_s", lambda t: t.t(), "a_s has shape"),
    ("w_s", lambda t: t[:, :1].contiguous(), "w_s has shape"),
    ("w_s", lambda t: t.to(torch.float16), "w_s must be float32"),
    ("a_s", lambda t: torch.full_like(t, float("nan")), "NaN"),
    ("w_s", lambda t: torch.full_like(t, float("inf")), "inf"),
    ("w_s", lambda t: -t, "negative"),
    ("a_q", lambda t: t.reshape(-1), "at least 2 dims"),
    ("a_s", lambda t: [1.0], "must be a torch.Tensor"),
]


@pytest.mark.parametrize(("name", "change", "match"), BAD, ids=[f"{n}-{m}" for n, _, m in BAD])
def test_bad_operands(h, name, change, match):
    args = _ok(h)
    args[name] = change(args[name])
    with pytest.raises(InvalidInputError, match=match):
        block_scaled_mm(**args, platform=CPU)


def test_bad_options(h):
    args = _ok(h)
    with pytest.raises(InvalidInputError, match="not a multiple of the block"):
        a, a_s, w, w_s, _ = make(h, "block", 4, 64, 200, seed=6, block=(128, 40))
        block_scaled_mm(a, a_s[:, :2].contiguous(), w, w_s[:, :2].contiguous(), platform=CPU)
    with pytest.raises(InvalidInputError, match="serve bk in"):
        block_scaled_mm(**args, block_size=(128, 96), platform=CPU)
    with pytest.raises(InvalidInputError, match="block_size must"):
        block_scaled_mm(**args, block_size=(128,), platform=CPU)
    with pytest.raises(InvalidInputError, match="out_dtype"):
        block_scaled_mm(**args, out_dtype=torch.float8_e4m3fn, platform=CPU)
    with pytest.raises(InvalidInputError, match="bias must be"):
        block_scaled_mm(**args, bias=torch.randn(63), platform=CPU)
    with pytest.raises(InvalidInputError, match="bias must be"):
        block_scaled_mm(**args, bias=torch.randint(0, 3, (64,)), platform=CPU)
    with pytest.raises(InvalidInputError, match="unknown granularity"):
        block_scaled_mm(**args, granularity="per-row", platform=CPU)
    with pytest.raises(InvalidInputError, match="takes float32 scales"):
        a, a_s, w, w_s, _ = make(h, "token_channel", 4, 64, 256, seed=7, e8m0=True)
        block_scaled_mm(a, a_s, w, w_s, platform=CPU)


def test_e8m0_nan_byte_rejected_and_check_values_off(h):
    a, a_s, w, w_s, blk = make(h, "mx", 4, 64, 64, seed=8)
    w_s[1, 1] = 0xFF
    with pytest.raises(InvalidInputError, match="0xFF"):
        block_scaled_mm(a, a_s, w, w_s, block_size=blk, platform=CPU)
    args = _ok(h)
    args["a_s"] = torch.full_like(args["a_s"], float("nan"))
    out = block_scaled_mm(**args, platform=CPU, check_values=False)  # the caller's promise: no scan
    assert bool(out.float().isnan().all())


def test_empty_batch(h):
    a, a_s, w, w_s, _ = make(h, "block", 0, 64, 256, seed=9)
    assert block_scaled_mm(a, a_s, w, w_s, platform=CPU).shape == (0, 64)


# --- Triton (interpreter on the CPU, the GPU in the cuda configuration) -----------------------
@pytest.mark.triton
@pytest.mark.parametrize(("granularity", "shape"), CASES, ids=[f"{g}-{'x'.join(map(str, s))}" for g, s in CASES])
@pytest.mark.parametrize("out_dtype", OUT, ids=str)
def test_triton_variants(h, device, granularity, shape, out_dtype):
    run_and_check(h, device, granularity, *shape, out_dtype=out_dtype, bias=out_dtype != torch.float16,
                  seed=sum(shape) + 1, kernel="triton")


PLATFORMS = ["xpu", "cuda:8.0", "rocm:gfx942", "rocm:gfx950"]


@pytest.mark.triton
@pytest.mark.parametrize("granularity", list(SHAPES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_triton_platform_options(h, device, granularity, platform):
    """Each platform's launch choices (FP8 as bytes, E8M0 upcast, e4m3fnuz) computed here."""
    p = LinearPlatform.parse(platform, triton=True)
    if device == "cuda" and platform == "rocm:gfx942":
        pytest.skip("native e4m3fnuz loads are for ROCm and the interpreter")
    fp8 = p.fp8_dtype
    m, n, k = SHAPES[granularity][1]
    run_and_check(h, device, granularity, m, n, k, out_dtype=torch.bfloat16, bias=True, seed=k, kernel="triton",
                  platform=p, fp8=fp8)


SPLITS = [
    GemmConfig(block_m=16, block_n=32, block_k=128, split_k=2),
    GemmConfig(block_m=16, block_n=64, block_k=64, split_k=3),   # 6 K iterations over 3 splits
    GemmConfig(block_m=32, block_n=16, block_k=128, split_k=4),  # more splits than 3 iterations: empty ones
    GemmConfig(block_m=16, block_n=256, block_k=32, group_m=1, split_k=5),  # tile wider than the block
    GemmConfig(block_m=64, block_n=128, block_k=128, group_m=2),  # one scale row per tile (scalar path)
    GemmConfig(block_m=16, block_n=64, block_k=128, k_unroll=2),  # 3 iterations: one pair and a tail
    GemmConfig(block_m=32, block_n=32, block_k=64, split_k=2, k_unroll=2),  # 3 per split: pair and tail
]


@pytest.mark.triton
@pytest.mark.parametrize("config", SPLITS, ids=lambda c: f"{c.block_m}x{c.block_n}x{c.block_k}s{c.split_k}u{c.k_unroll}")
@pytest.mark.parametrize("granularity", ["block", "tensor"])
def test_triton_configs_and_split_k(h, device, config, granularity):
    from fp8_linear.kernels.triton_gemm import triton_gemm
    from fp8_linear.tuned import fit_config

    m, n, k = 33, 300, 384
    a, a_s, w, w_s, blk = make(h, granularity, m, n, k, seed=config.split_k * 10 + config.block_n)
    b = torch.randn(n, generator=torch.Generator().manual_seed(3))
    ops, problem = check_gemm(a.to(device), a_s.to(device), w.to(device), w_s.to(device), block_size=blk,
                              out_dtype=torch.bfloat16, bias=b.to(device), granularity=granularity, check_values=True)
    cfg = fit_config(config, problem.variant, k=k, group_k=problem.group_k)
    out = triton_gemm(ops, problem, config=cfg, options=fp8_linear.triton_options(LinearPlatform.parse("cuda:9.0")))
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity=granularity, block=blk, bias=b)
    h.assert_close(out, expected, magnitude, bias=b)


@pytest.mark.triton
@pytest.mark.parametrize("block", [(64, 128), (128, 64), (256, 32), (1, 32), (48, 128)], ids=str)
def test_triton_block_sizes(h, device, block):
    run_and_check(h, device, "block", 19, 200, 256, out_dtype=torch.bfloat16, bias=False, seed=block[0] + block[1],
                  kernel="triton", block=block)


@pytest.mark.triton
def test_triton_column_major_scales_3d_input_and_e8m0_block(h, device):
    a, a_s, w, w_s, _ = make(h, "block", 12, 130, 256, seed=21)
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block")
    col = a_s.t().contiguous().t()
    out = block_scaled_mm(a.reshape(3, 4, 256).to(device), col.to(device).reshape(3, 4, 2), w.to(device),
                          w_s.to(device), kernel="triton")
    h.assert_close(out.reshape(12, 130), expected, magnitude)
    a, a_s, w, w_s, _ = make(h, "block", 12, 130, 256, seed=22, e8m0=True)
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block")
    out = block_scaled_mm(a.to(device), a_s.to(device), w.to(device), w_s.to(device), kernel="triton")
    h.assert_close(out, expected, magnitude)
    a, a_s, w, w_s, blk = make(h, "mx", 12, 130, 64, seed=23, e8m0=False)  # MX shapes, float32 scales
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="mx", block=blk)
    out = block_scaled_mm(a.to(device), a_s.to(device), w.to(device), w_s.to(device), block_size=blk,
                          kernel="triton", granularity="mx")
    h.assert_close(out, expected, magnitude)


@pytest.mark.triton
@pytest.mark.parametrize("k_unroll", [1, 2])
def test_triton_k_unroll_with_ragged_k(h, device, k_unroll):
    """Epilogue variants take any K: the last (masked) iteration falls in the pair or the tail."""
    from fp8_linear.kernels.triton_gemm import triton_gemm

    for k in (200, 328):  # 2 and 3 iterations of 128, the last one partial
        a, a_s, w, w_s, _ = make(h, "token_channel", 9, 80, k, seed=k + k_unroll)
        ops, problem = check_gemm(a.to(device), a_s.to(device), w.to(device), w_s.to(device), block_size=(128, 128),
                                  out_dtype=torch.float32, bias=None, granularity=None, check_values=True)
        cfg = GemmConfig(block_m=16, block_n=32, block_k=128, k_unroll=k_unroll)
        out = triton_gemm(ops, problem, config=cfg, options=fp8_linear.triton_options(LinearPlatform.parse("cuda:9.0")))
        expected, magnitude = h.ref(a, a_s, w, w_s, granularity="token_channel")
        h.assert_close(out, expected, magnitude)


def test_wgmma_engine_only_where_it_applies():
    """fit_config keeps the Gluon engine only for variants that have it with 128-wide K groups, and
    pins its tiles; elsewhere the config falls back to the pointer kernels unchanged otherwise."""
    from fp8_linear.tuned import Engine, fit_config

    cfg = GemmConfig(block_m=64, block_n=64, block_k=64, split_k=4, num_stages=9, engine=Engine.WGMMA)
    block = fit_config(cfg, fp8_linear.VARIANTS[fp8_linear.Granularity.BLOCK], k=4096, group_k=128)
    assert (block.engine, block.block_m, block.block_n, block.block_k, block.split_k, block.num_stages) == (
        Engine.WGMMA, 128, 128, 128, 1, 5)
    small_groups = fit_config(cfg, fp8_linear.VARIANTS[fp8_linear.Granularity.BLOCK], k=4096, group_k=64)
    assert (small_groups.engine, small_groups.block_k, small_groups.split_k) == (Engine.POINTERS, 64, 4)
    tensor = fit_config(cfg, fp8_linear.VARIANTS[fp8_linear.Granularity.TENSOR], k=4096, group_k=None)
    assert (tensor.engine, tensor.split_k) == (Engine.POINTERS, 4)
    assert GemmConfig.from_json(block.to_json()) == block
    assert GemmConfig.from_json({"block_m": 16, "block_n": 32, "block_k": 64}).engine is Engine.POINTERS
    with pytest.raises(ValueError, match="unknown GEMM engine 'tcgen05'"):
        GemmConfig.from_json({"block_m": 16, "block_n": 32, "block_k": 64, "engine": "tcgen05"})


@pytest.mark.triton
def test_wgmma_config_off_hopper_runs_the_pointer_kernel(h, device):
    """Off sm90 (the interpreter, other GPUs) a WGMMA config says why it cannot run and the same
    tiles run in the pointer kernel, which must still be right."""
    from fp8_linear.kernels import triton_gemm as tg
    from fp8_linear.tuned import Engine, fit_config

    m, n, k = 70, 300, 384
    a, a_s, w, w_s, blk = make(h, "block", m, n, k, seed=5)
    b = torch.randn(n, generator=torch.Generator().manual_seed(4))
    ops, problem = check_gemm(a.to(device), a_s.to(device), w.to(device), w_s.to(device), block_size=blk,
                              out_dtype=torch.bfloat16, bias=b.to(device), granularity="block", check_values=True)
    cfg = fit_config(GemmConfig(block_m=128, block_n=128, block_k=128, engine=Engine.WGMMA), problem.variant,
                     k=k, group_k=problem.group_k)
    options = fp8_linear.triton_options(LinearPlatform.parse("cuda:9.0"))
    out = torch.empty((m, n), dtype=torch.bfloat16, device=device)
    why = tg.wgmma_unusable(ops, problem, options, out, ops.a_s, ops.w_s)
    if device == "cpu" or torch.cuda.get_device_capability(0)[0] != 9:
        assert why is not None
    tg.triton_gemm(ops, problem, config=cfg, options=options, out=out)
    expected, magnitude = h.ref(a, a_s, w, w_s, granularity="block", block=blk, bias=b)
    h.assert_close(out, expected, magnitude, bias=b)
