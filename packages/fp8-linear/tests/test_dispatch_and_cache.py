"""The plan cache of block_scaled_mm (same answers as the uncached path, new validation when a
signature changes) and the measured cuBLAS-or-Triton dispatch table (lookup, thresholds,
heuristic fallback, reasons)."""

from __future__ import annotations

import json

import pytest
import torch

import fp8_linear
from fp8_linear import InvalidInputError, LinearPlatform, ScaledMMApi, dispatch, gemm, registry, select_kernel, tuned
from fp8_linear.errors import RejectReason
from fp8_linear.problem import GemmProblem
from fp8_linear.variant_types import ScaleDtype

DEVICE = "NVIDIA H100 80GB HBM3"


def operands(h, m, n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (h.rand_fp8((m, k), gen), h.rand_scales((m, k // 128), gen), h.rand_fp8((n, k), gen),
            h.rand_scales((-(-n // 128), k // 128), gen))


@pytest.fixture
def fresh():
    fp8_linear.clear_caches()
    yield
    fp8_linear.clear_caches()


def test_cached_call_gives_the_uncached_answer(h, fresh):
    a, a_s, w, w_s = operands(h, 5, 256, 512)
    first = fp8_linear.block_scaled_mm(a, a_s, w, w_s)
    stats = gemm.plan_cache_stats()
    again = fp8_linear.block_scaled_mm(a, a_s, w, w_s)
    after = gemm.plan_cache_stats()
    assert after["hits"] == stats["hits"] + 1 and after["misses"] == stats["misses"]
    assert torch.equal(first, again)
    a2, a_s2, _, _ = operands(h, 5, 256, 512, seed=1)  # same signature, new values
    fp8_linear.clear_caches()
    uncached = fp8_linear.block_scaled_mm(a2, a_s2, w, w_s)
    fp8_linear.block_scaled_mm(a, a_s, w, w_s)
    assert torch.equal(fp8_linear.block_scaled_mm(a2, a_s2, w, w_s), uncached)


def test_3d_input_and_tensor_scales_through_the_cache(h, fresh):
    gen = torch.Generator().manual_seed(3)
    a, w = h.rand_fp8((2, 3, 256), gen), h.rand_fp8((128, 256), gen)
    a_s, w_s = h.rand_scales((2, 3, 2), gen), h.rand_scales((1, 2), gen)
    outs = [fp8_linear.block_scaled_mm(a, a_s, w, w_s) for _ in range(2)]
    assert outs[0].shape == (2, 3, 128) and torch.equal(outs[0], outs[1])
    ts, tw = torch.tensor([0.5]), torch.tensor(0.25)  # per-tensor scales, 0-dim weight scale
    outs = [fp8_linear.block_scaled_mm(a, ts, w, tw, granularity="tensor") for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert gemm.plan_cache_stats()["hits"] >= 2


def test_a_changed_signature_is_validated_again(h, fresh):
    a, a_s, w, w_s = operands(h, 4, 256, 512)
    fp8_linear.block_scaled_mm(a, a_s, w, w_s)
    with pytest.raises(InvalidInputError, match="a_q must be FP8"):  # dtype change
        fp8_linear.block_scaled_mm(a.to(torch.float32), a_s, w, w_s)
    with pytest.raises(InvalidInputError, match="a_s has shape"):  # shape change
        fp8_linear.block_scaled_mm(a, a_s[:, :3], w, w_s)
    wide = torch.empty((4, 1024), dtype=a.dtype)
    with pytest.raises(InvalidInputError, match="contiguous"):  # stride change, same shape
        fp8_linear.block_scaled_mm(wide[:, ::2], a_s, w, w_s)
    with pytest.raises(InvalidInputError, match="float32"):  # scale dtype change
        fp8_linear.block_scaled_mm(a, a_s.to(torch.float16), w, w_s)
    bad = a_s.clone()
    bad[1, 2] = float("nan")  # values are checked on every call, cached or not
    with pytest.raises(InvalidInputError, match="NaN"):
        fp8_linear.block_scaled_mm(a, bad, w, w_s)
    fp8_linear.block_scaled_mm(a, bad, w, w_s, check_values=False)
    assert torch.isnan(fp8_linear.block_scaled_mm(a, bad, w, w_s, check_values=False)[1]).all()


def test_forcing_is_part_of_the_signature(h, fresh, monkeypatch):
    a, a_s, w, w_s = operands(h, 4, 256, 512)
    fp8_linear.block_scaled_mm(a, a_s, w, w_s)
    with pytest.raises(fp8_linear.ForcedKernelError):
        fp8_linear.block_scaled_mm(a, a_s, w, w_s, kernel="cublas")
    monkeypatch.setenv(registry.ENV_KERNEL, "cublas")
    with pytest.raises(fp8_linear.ForcedKernelError):
        fp8_linear.block_scaled_mm(a, a_s, w, w_s)


def test_cached_padded_weight_scale_follows_the_tensor():
    from fp8_linear.kernels.cublas import _PADDED, cached_padded_weight_scale

    w_s = torch.rand(3, 5) + 1
    first = cached_padded_weight_scale(w_s)
    assert first.shape == (8, 3) and first.stride() == (1, 8) and torch.equal(first[:5], w_s.t())
    assert cached_padded_weight_scale(w_s) is first
    w_s.mul_(2)  # in place: recomputed
    second = cached_padded_weight_scale(w_s)
    assert second is not first and torch.equal(second[:5], w_s.t()) and bool((second[5:] == 1).all())
    key = id(w_s)
    del w_s
    assert key not in _PADDED


def test_cublas_padding_helpers():
    from fp8_linear.kernels.cublas import column_major_scales, pad_rows

    a = (torch.randn(5, 256) * 10).to(torch.float8_e4m3fn)
    p = pad_rows(a, 8)
    assert p.shape == (8, 256) and p.dtype == a.dtype
    assert torch.equal(p[:5].view(torch.uint8), a.view(torch.uint8)) and not p[5:].view(torch.uint8).any()
    s = torch.rand(5, 7)
    c = column_major_scales(s, 8)
    assert c.shape == (8, 7) and c.stride() == (1, 8) and torch.equal(c[:5], s) and bool((c[5:] == 1).all())
    same = column_major_scales(s.t().contiguous().t(), 5)
    assert same.stride() == (1, 5)
    moved = column_major_scales(s, 5)
    assert moved.stride() == (1, 5) and torch.equal(moved, s)


def test_ranges_from_timings():
    t = {1: {"triton": 5.0, "cublas": 9.0}, 16: {"triton": 6.0, "cublas": 9.0}, 64: {"triton": 12.0, "cublas": 10.0},
         256: {"triton": 30.0, "cublas": 20.0}, 1024: {"triton": 50.0, "cublas": 60.0}}
    r = dispatch.ranges_from_timings(t)
    assert [(x.m_min, x.m_max, x.kernel) for x in r] == [(1, 32, "triton"), (33, 512, "cublas"),
                                                         (513, None, "triton")]
    assert dispatch.ranges_from_timings({}) == ()
    assert dispatch.ranges_from_timings({8: {"triton": 1.0}}) == ()  # incomplete rows are ignored


def test_a_tie_goes_to_cublas():
    """Triton must beat cuBLAS by more than the tie margin (the run-to-run scatter) to be chosen."""
    margin = dispatch.TIE_MARGIN
    close = {128: {"triton": 10.0, "cublas": 10.0 * (1 + margin / 2)}}
    clear = {128: {"triton": 10.0, "cublas": 10.0 * (1 + 2 * margin)}}
    assert dispatch.winners(close) == {128: "cublas"}
    assert dispatch.winners(clear) == {128: "triton"}
    assert dispatch.winners({128: {"triton": 11.0, "cublas": 10.0}}) == {128: "cublas"}


def test_heuristic():
    assert dispatch.heuristic(64, 576, 7168)[0] == "triton"
    assert dispatch.heuristic(4096, 576, 7168)[0] == "cublas"
    assert dispatch.heuristic(16, 7168, 2048)[0] == "cublas"
    kernel, why = dispatch.heuristic(3, 7168, 2048)
    assert kernel == "triton" and "multiple of 4" in why


def problem(m, n=7168, k=2048):
    return GemmProblem(m=m, n=n, k=k, granularity=fp8_linear.Granularity.BLOCK, block_size=(128, 128),
                       fp8_dtype=torch.float8_e4m3fn, scale_dtype=ScaleDtype.FLOAT32, out_dtype=torch.bfloat16,
                       has_bias=False)


def test_dispatch_table_drives_selection(tmp_path, monkeypatch, fresh):
    timings = {1: {"triton": 9.0, "cublas": 12.0}, 64: {"triton": 11.0, "cublas": 10.0},
               4096: {"triton": 170.0, "cublas": 110.0}}
    data = {"variant": "block", "block_size": [128, 128], "device": DEVICE,
            "shapes": {"7168,2048": dispatch.table_json(timings)}}
    (tmp_path / dispatch.dispatch_filename("block", (128, 128), DEVICE)).write_text(json.dumps(data))
    monkeypatch.setenv(tuned.ENV_CONFIG_DIR, str(tmp_path))
    fp8_linear.clear_caches()
    h100 = LinearPlatform.parse("cuda:9.0", triton=True, interpret=False, scaled_mm=ScaledMMApi.V2,
                                device_name=DEVICE)
    small = select_kernel(problem(4), platform=h100)
    assert small.kernel == "triton" and [r.reason for r in small.rejected] == [RejectReason.SLOWER]
    text = small.explain()
    assert "dispatch table dispatch-block-B128x128-NVIDIA_H100_80GB_HBM3.json: triton for M 1..8" in text
    assert "triton 9.0 us < cublas 12.0 us" in text and "chosen: cublas is slower here" in text
    big = select_kernel(problem(64), platform=h100)
    assert big.kernel == "cublas" and not big.rejected
    assert "chosen: dispatch table" in big.explain() and "cublas 10.0 us < triton 11.0 us" in big.explain()
    assert select_kernel(problem(100000), platform=h100).kernel == "cublas"
    assert select_kernel(problem(4), platform=h100, force="cublas").kernel == "cublas"
    other = select_kernel(problem(4, n=640, k=7168), platform=h100)  # not in the table: the heuristic
    assert other.kernel == "triton" and "heuristic" in other.explain()
    # a change of the file is seen after clear_caches()
    data["shapes"]["7168,2048"] = dispatch.table_json({1: {"triton": 20.0, "cublas": 10.0}})
    (tmp_path / dispatch.dispatch_filename("block", (128, 128), DEVICE)).write_text(json.dumps(data))
    assert select_kernel(problem(4), platform=h100).kernel == "triton"
    fp8_linear.clear_caches()
    assert select_kernel(problem(4), platform=h100).kernel == "cublas"


def test_shipped_dispatch_tables_parse():
    for path in tuned.CONFIG_DIR.glob("dispatch-*.json"):
        data = json.loads(path.read_text())
        assert path.name == dispatch.dispatch_filename(data["variant"], tuple(data["block_size"]), data["device"])
        tables = dispatch.load_dispatch(data["variant"], tuple(data["block_size"]), data["device"])
        assert tables
        for table in tables.values():
            assert table.ranges and table.ranges[0].m_min == 1 and table.ranges[-1].m_max is None
            for r0, r1 in zip(table.ranges, table.ranges[1:], strict=False):
                assert r0.m_max is not None and r1.m_min == r0.m_max + 1


def test_tuned_wgmma_config_is_explained(tmp_path, monkeypatch, fresh):
    """A tuned file choosing the Gluon engine reaches the choice, and explain() names it."""
    cfg = {"engine": "wgmma", "block_m": 128, "block_n": 128, "block_k": 128, "group_m": 16, "num_stages": 4}
    data = {"variant": "block", "n": 7168, "k": 2048, "block_size": [128, 128], "device": DEVICE,
            "configs": {"2048": cfg}, "timings_us": {"2048": {"triton": 50.0, "cublas": 60.0}}}
    (tmp_path / tuned.config_filename("block", 7168, 2048, (128, 128), DEVICE)).write_text(json.dumps(data))
    monkeypatch.setenv(tuned.ENV_CONFIG_DIR, str(tmp_path))
    fp8_linear.clear_caches()
    h100 = LinearPlatform.parse("cuda:9.0", triton=True, interpret=False, scaled_mm=ScaledMMApi.V2,
                                device_name=DEVICE)
    choice = select_kernel(problem(2048), platform=h100, force="triton")
    assert choice.config.engine is tuned.Engine.WGMMA and choice.config.group_m == 16
    assert "Gluon wgmma kernel" in choice.explain() and "stages 4 group_m 16 (tuned M=2048)" in choice.explain()
