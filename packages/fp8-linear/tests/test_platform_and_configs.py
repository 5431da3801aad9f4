"""LinearPlatform parsing and detection; tuned-config files, nearest-M lookup and the heuristic."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fp8_linear import VARIANTS, GemmConfig, Granularity, LinearPlatform, ScaledMMApi, to_fnuz, triton_options, tuned
from quantkeys import PlatformKind


@pytest.mark.parametrize(
    ("text", "kind", "cap", "arch", "fp8"),
    [
        ("cuda:9.0", PlatformKind.CUDA, (9, 0), None, torch.float8_e4m3fn),
        ("cuda:sm90", PlatformKind.CUDA, (9, 0), None, torch.float8_e4m3fn),
        ("CUDA:sm_89", PlatformKind.CUDA, (8, 9), None, torch.float8_e4m3fn),
        ("cuda:12.0", PlatformKind.CUDA, (12, 0), None, torch.float8_e4m3fn),
        ("rocm:gfx942", PlatformKind.ROCM, None, "gfx942", torch.float8_e4m3fnuz),
        ("rocm:gfx950", PlatformKind.ROCM, None, "gfx950", torch.float8_e4m3fn),
        ("rocm", PlatformKind.ROCM, None, None, torch.float8_e4m3fnuz),
        ("xpu:xe2", PlatformKind.XPU, None, "xe2", torch.float8_e4m3fn),
        ("cpu", PlatformKind.CPU, None, None, torch.float8_e4m3fn),
    ],
)
def test_parse(text, kind, cap, arch, fp8):
    p = LinearPlatform.parse(text)
    assert (p.kind, p.capability, p.arch, p.fp8_dtype) == (kind, cap, arch, fp8)
    assert LinearPlatform.parse(str(p)) == p


@pytest.mark.parametrize(("text", "match"), [("tpu", "unknown platform"), ("cuda", "compute capability"),
                                             ("cuda:ampere", "compute capability")])
def test_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        LinearPlatform.parse(text)
    with pytest.raises(ValueError, match="CUDA notion"):
        LinearPlatform(kind=PlatformKind.XPU, capability=(9, 0))


def test_detect_and_options():
    p = LinearPlatform.detect()
    assert p.kind is (PlatformKind.CUDA if torch.cuda.is_available() else PlatformKind.CPU)
    assert p.scaled_mm is ScaledMMApi.detect()
    xpu = triton_options(LinearPlatform.parse("xpu"))
    assert xpu.fp8_as_bytes and xpu.upcast_e8m0 and xpu.quant.value == "custom_op"
    rocm = triton_options(LinearPlatform.parse("rocm:gfx942"))
    assert not rocm.fp8_as_bytes and rocm.upcast_e8m0 and rocm.quant.value == "triton"
    h100 = triton_options(LinearPlatform.parse("cuda:9.0"))
    assert not h100.fp8_as_bytes and not h100.upcast_e8m0


def test_to_fnuz_is_exact_on_every_code():
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]  # no NaN codes
    w = codes.view(torch.float8_e4m3fn).reshape(2, -1)
    s = torch.tensor([[0.5], [3.0]])
    wz, sz = to_fnuz(w, s)
    assert wz.dtype == torch.float8_e4m3fnuz
    assert torch.equal(wz.to(torch.float64) * sz.to(torch.float64), w.to(torch.float64) * s.to(torch.float64))


def test_generated_variants_follow_the_spec():
    assert {g.value for g in Granularity} == {"block", "token_channel", "tensor", "mx"}
    assert VARIANTS[Granularity.BLOCK].schemes == ("fp8_block",)
    assert VARIANTS[Granularity.MX].block_size == (1, 32)
    assert VARIANTS[Granularity.BLOCK].scale_shapes(5, 300, 512, (128, 128)) == ((5, 4), (3, 4))


@pytest.mark.parametrize("m", [1, 3, 16, 64, 100, 128, 512, 1024, 4096, 8192])
@pytest.mark.parametrize(("n", "k"), [(24576, 1536), (576, 7168), (7168, 16384), (32768, 512), (2048, 4096)])
def test_heuristic_configs_are_valid(m, n, k):
    for granularity in Granularity:
        variant = VARIANTS[granularity]
        group_k = variant.block_size[1] if variant.block_size else None
        cfg, source = tuned.choose_config(variant, m=m, n=n, k=k, block_size=variant.block_size or (1, k),
                                          group_k=group_k, device_name=None)
        assert source == "heuristic"
        assert cfg.block_m >= 16 and cfg.block_n >= 16 and cfg.block_k >= 16
        assert all(v & (v - 1) == 0 for v in (cfg.block_m, cfg.block_n, cfg.block_k))
        if group_k is not None:
            assert group_k % cfg.block_k == 0
        assert 1 <= cfg.split_k <= math.ceil(k / cfg.block_k)
    small = tuned.heuristic_config(1, 576, 7168, group_k=128)
    assert small.split_k > 1  # 18 tiles cannot fill 132 SMs


def test_tuned_file_lookup(tmp_path, monkeypatch):
    name = tuned.config_filename("block", 576, 7168, (128, 128), "Some GPU")
    assert name == "block-N576-K7168-B128x128-Some_GPU.json"
    cfgs = {str(m): GemmConfig(block_m=bm, block_n=32, block_k=128).to_json() for m, bm in ((1, 16), (64, 64), (2048, 128))}
    (tmp_path / name).write_text(json.dumps({"configs": cfgs}))
    monkeypatch.setenv(tuned.ENV_CONFIG_DIR, str(tmp_path))
    tuned.load_table.cache_clear()
    try:
        variant = VARIANTS[Granularity.BLOCK]
        for m, bm in ((1, 16), (7, 16), (9, 64), (300, 64), (400, 128), (100000, 128)):
            cfg, source = tuned.choose_config(variant, m=m, n=576, k=7168, block_size=(128, 128), group_k=128,
                                              device_name="Some GPU")
            assert cfg.block_m == bm and source.startswith("tuned"), (m, cfg, source)
        assert tuned.tuned_timings("block", m=1, n=576, k=7168, block_size=(128, 128), device_name="Some GPU") is None
    finally:
        monkeypatch.delenv(tuned.ENV_CONFIG_DIR)
        tuned.load_table.cache_clear()


def test_shipped_config_files_parse():
    for path in tuned.CONFIG_DIR.glob("block-*.json"):
        data = json.loads(path.read_text())
        assert path.name == tuned.config_filename(data["variant"], data["n"], data["k"], tuple(data["block_size"]),
                                                  data["device"])
        for cfg in data["configs"].values():
            GemmConfig.from_json(cfg)


def test_shipped_dispatch_tables_parse_and_cover_the_tuned_shapes():
    from fp8_linear import dispatch

    tables = sorted(tuned.CONFIG_DIR.glob("dispatch-*.json"))
    configs = sorted(tuned.CONFIG_DIR.glob("block-*.json"))
    for path in tables:
        data = json.loads(path.read_text())
        assert path.name == dispatch.dispatch_filename(data["variant"], tuple(data["block_size"]), data["device"])
        shapes = dispatch.load_dispatch(data["variant"], tuple(data["block_size"]), data["device"])
        assert shapes, path.name
        for (n, k), table in shapes.items():
            assert n > 0 and k > 0 and table is not None
        tuned_shapes = {(json.loads(c.read_text())["n"], json.loads(c.read_text())["k"]) for c in configs
                        if json.loads(c.read_text())["device"] == data["device"]}
        assert tuned_shapes <= set(shapes), tuned_shapes - set(shapes)
