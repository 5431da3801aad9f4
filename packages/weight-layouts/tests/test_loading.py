"""load_experts: real checkpoint directories written by the encoders, read back stacked and streamed.

References: (1) the dense float32 weights the checkpoint was quantized from (error within the
format's quantization bound); (2) an independent per-expert decode of the raw safetensors files
(exact, except per-tensor FP8 whose gate/up halves are re-scaled to one scale at load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file

import quantkeys as qk
import weight_layouts as wl
from weight_layouts import loading
from weight_layouts.writer import SCHEME_CHECKPOINTS, write_tiny_checkpoint

# Relative Frobenius error of the dequantized experts against the dense originals (random normal
# weights): 8-bit formats keep ~2-4% (fp8 e4m3: 3 mantissa bits, 2^-4 relative step / sqrt(3) ≈ 3.6%
# worst-case RMS), int8 < 1%, 4-bit formats ~12% (16 levels over +-2.7 sigma). Bounds with margin:
BOUND = {
    "unquantized": 0.0, "fp8_block": 0.04, "fp8_tensor_dynamic": 0.05, "fp8_tensor_static": 0.05, "fp8_channel": 0.04, "int8_w8a8": 0.01,
    "int4_w4a16": 0.15, "int4_w4a16_asym": 0.15, "int8_w8a16": 0.01, "int8_w8a16_asym": 0.01, "mxfp8": 0.05,
    "mxfp4_w4a16": 0.15,
}
KEYS = {
    "unquantized": (None, None), "fp8_block": (qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym),
    "fp8_tensor_dynamic": (qk.kFp8StaticTensorSym, qk.kFp8DynamicTensorSym),
    "fp8_tensor_static": (qk.kFp8StaticTensorSym, qk.kFp8StaticTensorSym),
    "fp8_channel": (qk.kFp8StaticChannelSym, qk.kFp8DynamicTokenSym),
    "int8_w8a8": (qk.kInt8StaticChannelSym, qk.kInt8DynamicTokenSym), "int4_w4a16": (qk.kInt4Static, None),
    "int4_w4a16_asym": (qk.kInt4StaticAsym, None), "int8_w8a16": (qk.kInt8Static, None),
    "int8_w8a16_asym": (qk.kInt8StaticAsym, None), "mxfp8": (qk.kMxfp8Static, qk.kMxfp8Dynamic),
    "mxfp4_w4a16": (qk.kMxfp4Static, None),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_recipes_cover_the_table():
    assert set(BOUND) == set(SCHEME_CHECKPOINTS) == set(KEYS)


def _raw(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _independent_w13(raw, fmt, params, *, layer, experts, naming) -> torch.Tensor:
    rows = []
    for e in range(experts):
        halves = []
        for proj in (naming.gate, naming.up):
            prefix = naming.tensor(layer=layer, expert=e, projection=proj, tensor_name="")
            tensors = {k[len(prefix):]: v for k, v in raw.items()
                       if k.startswith(prefix) and k[len(prefix):] not in ("bias", "input_scale")}
            halves.append(wl.decode(fmt, tensors, **params))
        rows.append(torch.cat(halves, dim=0))
    return torch.stack(rows)


@pytest.mark.parametrize("scheme", list(SCHEME_CHECKPOINTS))
def test_load_every_scheme(tmp_path, scheme):
    ckpt = write_tiny_checkpoint(tmp_path / scheme, scheme=scheme, num_experts=4, hidden_size=256,
                                 intermediate_size=128, num_layers=2, seed=7)
    for layer in (0, 1):
        experts = wl.load_experts(ckpt.path, layer)
        assert experts.layout == wl.CANONICAL
        assert (experts.weight_key, experts.activation_key) == KEYS[scheme]
        assert (experts.num_experts, experts.hidden_size, experts.intermediate_size) == (4, 256, 128)
        w13, w2 = experts.dequantize()
        assert w13.shape == (4, 256, 256) and w2.shape == (4, 256, 128)
        assert rel(w13, ckpt.w13[layer]) <= BOUND[scheme] + 1e-7
        assert rel(w2, ckpt.w2[layer]) <= BOUND[scheme] + 1e-7
        if scheme != "unquantized":
            assert rel(w13, ckpt.w13[layer]) > 0  # the quantization really happened
        if ckpt.w13_bias is not None:
            torch.testing.assert_close(experts.w13_bias.float(), ckpt.w13_bias[layer], rtol=0, atol=0)
            torch.testing.assert_close(experts.w2_bias.float(), ckpt.w2_bias[layer], rtol=0, atol=0)


@pytest.mark.parametrize("scheme", [s for s in SCHEME_CHECKPOINTS if s != "mxfp4_w4a16"])
@pytest.mark.parametrize("naming", ["qwen_moe", "mixtral", "deepseek"])
def test_stacking_matches_independent_per_expert_decode(tmp_path, scheme, naming):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme=scheme, naming=naming, num_experts=3, hidden_size=128,
                                 intermediate_size=128, seed=3, bias=True)
    experts = wl.load_experts(ckpt.path, 0)
    _, fmt, params, _ = SCHEME_CHECKPOINTS[scheme]
    pattern = wl.NAMINGS[naming]
    expected = _independent_w13(_raw(ckpt.path), fmt, params, layer=0, experts=3, naming=pattern)
    got = experts.w13.dequantize()
    if fmt == "fp8-tensor":
        # gate and up re-scaled to max(s_gate, s_up): one extra e4m3 rounding of the smaller half,
        # at most half an e4m3 step (2^-4 relative) of each element, plus the scale ratio's rounding.
        assert torch.all((got - expected).abs() <= expected.abs() * 2**-4 + 1e-6)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(experts.w13_bias.float(), ckpt.w13_bias[0], rtol=0, atol=0)


@pytest.mark.parametrize("naming", ["qwen_moe", "mixtral"])
def test_per_expert_mxfp4_is_compressed_tensors_and_loads_as_mxfp4(tmp_path, naming):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="mxfp4_w4a16", naming=naming, num_experts=3,
                                 hidden_size=128, intermediate_size=64, seed=5)
    config = json.loads((ckpt.path / "config.json").read_text())
    assert config["quantization_config"]["format"] == "mxfp4-pack-quantized"
    experts = wl.load_experts(ckpt.path, 0)
    assert experts.w13.format == experts.w2.format == "mxfp4"  # the canonical MXFP4 layout for backends
    assert (experts.weight_key, experts.activation_key) == KEYS["mxfp4_w4a16"]
    pattern = wl.NAMINGS[naming]
    expected = _independent_w13(_raw(ckpt.path), "ct-mxfp4", {}, layer=0, experts=3, naming=pattern)
    torch.testing.assert_close(experts.w13.dequantize(), expected, rtol=0, atol=0)
    assert rel(experts.w2.dequantize(), ckpt.w2[0]) <= BOUND["mxfp4_w4a16"]


def test_gate_rows_come_first(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="unquantized", num_experts=2, hidden_size=64,
                                 intermediate_size=32)
    w13 = wl.load_experts(ckpt.path, 0).w13.dequantize()
    raw = _raw(ckpt.path)
    torch.testing.assert_close(w13[1, :32], raw["model.layers.0.mlp.experts.1.gate_proj.weight"].float())
    torch.testing.assert_close(w13[1, 32:], raw["model.layers.0.mlp.experts.1.up_proj.weight"].float())


def test_gpt_oss_is_de_interleaved(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="mxfp4_w4a16", num_experts=2, hidden_size=64,
                                 intermediate_size=64)
    raw = _raw(ckpt.path)
    blocks = raw["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    scales = raw["model.layers.0.mlp.experts.gate_up_proj_scales"]
    fused = wl.decode("mxfp4", {"blocks": blocks, "scales": scales})  # [E, 2I, H] interleaved
    w13 = wl.load_experts(ckpt.path, 0).w13.dequantize()
    torch.testing.assert_close(w13[:, :64], fused[:, 0::2], rtol=0, atol=0)
    torch.testing.assert_close(w13[:, 64:], fused[:, 1::2], rtol=0, atol=0)


class _CountingFile(loading.SafetensorsFile):
    """Counts shard opens and tensor reads, and where each read landed."""

    opens: ClassVar[list[str]] = []
    reads: ClassVar[list[str]] = []
    copies: ClassVar[list[str]] = []  # reads that needed a temporary tensor

    def __init__(self, path):
        super().__init__(path)
        type(self).opens.append(Path(path).name)

    def read_into(self, name, out):
        type(self).reads.append(name)
        super().read_into(name, out)

    def read(self, name):
        type(self).copies.append(name)
        return super().read(name)


@pytest.mark.parametrize(("scheme", "direct"), [("fp8_block", True), ("int4_w4a16", False)])
def test_streams_each_shard_once_and_reads_only_the_layer(tmp_path, monkeypatch, scheme, direct):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme=scheme, num_experts=4, hidden_size=128,
                                 intermediate_size=128, num_layers=3, shards=3)
    _CountingFile.opens, _CountingFile.reads, _CountingFile.copies = [], [], []
    monkeypatch.setattr(loading, "SafetensorsFile", _CountingFile)
    experts = wl.load_experts(ckpt.path, 1)
    assert len(_CountingFile.opens) == len(set(_CountingFile.opens))  # each shard opened once
    per_expert = len(experts.w13.tensors) if scheme == "fp8_block" else 4  # qweight qzeros scales g_idx
    assert len(_CountingFile.reads) == len(set(_CountingFile.reads)) == 4 * 3 * per_expert
    assert all(name.startswith("model.layers.1.mlp.experts.") for name in _CountingFile.reads)
    if direct:  # row-stacked formats read every tensor straight into the output, no temporary
        assert _CountingFile.copies == []
    else:  # GPTQ stacks w13 along columns (qweight [K/8, 2N]): gate/up halves go through one temporary each
        assert set(_CountingFile.copies) <= {n for n in _CountingFile.reads if ".gate_proj." in n or ".up_proj." in n}


def test_custom_naming(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="int8_w8a8", naming="mixtral", num_experts=2,
                                 hidden_size=64, intermediate_size=64)
    config = json.loads((ckpt.path / "config.json").read_text())
    config["model_type"] = "my_moe"
    (ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(wl.CheckpointError, match="no built-in expert naming for model_type='my_moe'"):
        wl.load_experts(ckpt.path, 0)
    custom = wl.ExpertNaming(name="mine", expert_prefix="model.layers.{layer}.block_sparse_moe.experts.{expert}.",
                             gate="w1", up="w3", down="w2")
    assert wl.load_experts(ckpt.path, 0, naming=custom).num_experts == 2
    assert wl.load_experts(ckpt.path, 0, naming="mixtral").num_experts == 2


# -- bad input ------------------------------------------------------------------------------


def _shard_with(path: Path, name: str) -> Path:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / index["weight_map"][name]


def _rewrite(shard: Path, edit) -> None:
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))


@pytest.fixture
def block_ckpt(tmp_path):
    return write_tiny_checkpoint(tmp_path / "c", scheme="fp8_block", num_experts=3, hidden_size=128,
                                 intermediate_size=128)


def test_missing_tensor_names_tensor_and_file(block_ckpt):
    name = "model.layers.0.mlp.experts.2.up_proj.weight_scale_inv"
    shard = _shard_with(block_ckpt.path, name)
    _rewrite(shard, lambda t: t.pop(name))
    with pytest.raises(wl.CheckpointError, match=rf"missing tensor '{name}' in .*{shard.name}"):
        wl.load_experts(block_ckpt.path, 0)


def test_tensor_absent_from_index(block_ckpt):
    index_path = block_ckpt.path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.0.mlp.experts.1.down_proj.weight"
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(wl.CheckpointError, match=rf"missing tensor '{name}': not listed in"):
        wl.load_experts(block_ckpt.path, 0)


def test_shape_mismatch_between_experts(block_ckpt):
    name = "model.layers.0.mlp.experts.1.gate_proj.weight"
    _rewrite(_shard_with(block_ckpt.path, name), lambda t: t.__setitem__(name, t[name][:64].contiguous()))
    with pytest.raises(wl.CheckpointError, match=r"shape \[64, 128\].*other experts have shape \[128, 128\]"):
        wl.load_experts(block_ckpt.path, 0)


def test_dtype_mismatch(block_ckpt):
    name = "model.layers.0.mlp.experts.0.gate_proj.weight"
    _rewrite(_shard_with(block_ckpt.path, name), lambda t: t.__setitem__(name, t[name].float()))
    with pytest.raises(wl.CheckpointError, match=r"float32|dtype"):
        wl.load_experts(block_ckpt.path, 0)


@pytest.mark.parametrize("bad", [float("nan"), 0.0, float("inf")])
def test_bad_scales_are_rejected(block_ckpt, bad):
    name = "model.layers.0.mlp.experts.1.down_proj.weight_scale_inv"

    def poison(t):
        t[name] = t[name].clone()
        t[name][0, 0] = bad

    _rewrite(_shard_with(block_ckpt.path, name), poison)
    with pytest.raises(wl.CheckpointError, match="w2: fp8-block"):
        wl.load_experts(block_ckpt.path, 0)


def test_truncated_shard(block_ckpt):
    shard = sorted(block_ckpt.path.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(wl.CheckpointError, match="safetensors"):
        wl.load_experts(block_ckpt.path, 0)


def test_garbage_shard(block_ckpt):
    shard = sorted(block_ckpt.path.glob("*.safetensors"))[0]
    shard.write_bytes(b"\xff" * 64)
    with pytest.raises(wl.CheckpointError, match="not a readable safetensors file"):
        wl.load_experts(block_ckpt.path, 0)


def test_pickle_checkpoints_are_never_loaded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_experts": 2,
                                                      "hidden_size": 8, "moe_intermediate_size": 8}))
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(wl.CheckpointError, match="pickle checkpoints are never loaded"):
        wl.load_experts(tmp_path, 0)


def test_layer_out_of_range_and_dense_layers(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="fp8_block", naming="deepseek", num_experts=2,
                                 hidden_size=128, intermediate_size=128, num_layers=2)
    with pytest.raises(wl.CheckpointError, match="layer 5 out of range"):
        wl.load_experts(ckpt.path, 5)
    config = json.loads((ckpt.path / "config.json").read_text())
    config["first_k_dense_replace"] = 1
    (ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(wl.CheckpointError, match="dense MLP layer"):
        wl.load_experts(ckpt.path, 0)
    assert wl.load_experts(ckpt.path, 1).num_experts == 2


def test_block_misaligned_intermediate_is_explained(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="fp8_block", num_experts=2, hidden_size=128,
                                 intermediate_size=192)
    with pytest.raises(wl.CheckpointError, match="intermediate size 192 is not a multiple of the 128-row"):
        wl.load_experts(ckpt.path, 0)


def test_config_dims_are_checked(block_ckpt):
    config = json.loads((block_ckpt.path / "config.json").read_text())
    config["hidden_size"] = 256
    (block_ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(wl.CheckpointError, match=r"K \(input features\) = 128, expected cols=256"):
        wl.load_experts(block_ckpt.path, 0)


def test_static_activation_scales(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="fp8_tensor_static", num_experts=3, hidden_size=128,
                                 intermediate_size=128)
    raw = _raw(ckpt.path)
    experts = wl.load_experts(ckpt.path, 0)
    def scales(proj):
        return torch.stack([raw[f"model.layers.0.mlp.experts.{e}.{proj}.input_scale"] for e in range(3)])

    assert torch.equal(experts.a13_scale, torch.cat([scales("gate_proj"), scales("up_proj")]).max().reshape(1))
    assert torch.equal(experts.a2_scale, scales("down_proj").max().reshape(1))
    name = "model.layers.0.mlp.experts.1.down_proj.input_scale"
    _rewrite(_shard_with(ckpt.path, name), lambda t: t.pop(name))
    index_path = ckpt.path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(wl.CheckpointError, match="activation scheme is static but 1 input_scale"):
        wl.load_experts(ckpt.path, 0)
