"""Layout tags make conversion idempotent; the weight-layouts CLI inspects and converts checkpoints."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from safetensors import safe_open

import weight_layouts as wl
from weight_layouts.cli import main
from weight_layouts.writer import write_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "c", scheme="int4_w4a16", num_experts=2,
                                 hidden_size=128, intermediate_size=128, num_layers=2)


def test_to_layout_is_idempotent(ckpt):
    experts = wl.load_experts(ckpt.path, 0)
    ref = wl.to_layout(experts, "reference")
    assert ref.layout == "reference" and ref is not experts
    assert wl.to_layout(ref, "reference") is ref  # converting to the layout it has is a no-op
    assert wl.to_layout(experts, wl.CANONICAL) is experts


def test_impossible_conversions_raise(ckpt):
    experts = wl.load_experts(ckpt.path, 0)
    ref = wl.to_layout(experts, "reference")
    with pytest.raises(wl.LayoutError, match="back to canonical"):
        wl.to_layout(ref, wl.CANONICAL)
    with pytest.raises(wl.LayoutError, match="unknown layout 'marlin'"):
        wl.to_layout(experts, "marlin")
    wl.register_layout("test-only", description="test", convert_from={wl.CANONICAL: replace})
    with pytest.raises(wl.LayoutError, match="cannot convert from layout 'reference' to 'test-only'"):
        wl.to_layout(ref, "test-only")


def test_register_layout_conflicts():
    def conv(e):
        return replace(e)

    wl.register_layout("test-conflict", description="x", convert_from={wl.CANONICAL: conv})
    wl.register_layout("test-conflict", description="x", convert_from={wl.CANONICAL: conv})  # same: no-op
    with pytest.raises(wl.LayoutError, match="already registered"):
        wl.register_layout("test-conflict", description="x", convert_from={wl.CANONICAL: replace})
    with pytest.raises(wl.LayoutError, match="built in"):
        wl.register_layout(wl.CANONICAL, description="x", convert_from={})


def test_converter_must_return_new_experts(ckpt):
    wl.register_layout("test-identity", description="broken", convert_from={wl.CANONICAL: lambda e: e})
    with pytest.raises(wl.LayoutError, match="returned its input"):
        wl.to_layout(wl.load_experts(ckpt.path, 0), "test-identity")


def test_cli_inspect(ckpt, capsys):
    assert main(["inspect", str(ckpt.path)]) == 0
    out = capsys.readouterr().out
    assert "quant method: gptq" in out
    assert "model.layers.*.mlp.experts.*.gate_proj  gptq: weight int4 static 1x128 sym (kInt4Static)" in out
    assert re.search(r"model\.layers\.\*\.mlp\.gate +not quantized", out)
    assert "MoE: 2 experts, hidden 128, intermediate 128" in out


def test_cli_convert(ckpt, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["convert", "--to", "reference", "--no-progress", str(ckpt.path), str(out_dir)]) == 0
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["layer-0.safetensors", "layer-1.safetensors"]
    with safe_open(str(out_dir / "layer-1.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert meta["layout"] == "reference" and meta["format"] == "gptq"
        assert set(f.keys()) == {"w13.qweight", "w13.qzeros", "w13.scales", "w13.g_idx", "w2.qweight", "w2.qzeros",
                                 "w2.scales", "w2.g_idx"}
        assert tuple(f.get_tensor("w13.qweight").shape) == (2, 16, 256)


def test_cli_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
