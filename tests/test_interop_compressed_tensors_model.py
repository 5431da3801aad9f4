"""A checkpoint written by the real compressed-tensors library, loaded and run (``interop``).

The tiny transformers Qwen3-MoE of the demo gets its experts quantized the way llm-compressor
saves a model: each expert projection is an ``nn.Linear`` under its checkpoint name,
compressed-tensors' ``apply_quantization_config`` attaches a preset scheme (W4A16, W8A8,
FP8_DYNAMIC, FP8_BLOCK, MXFP4A16), the weight scales are set by its ``calculate_qparams``,
``ModelCompressor.compress_model`` compresses them and ``update_config`` writes the
``quantization_config`` into config.json. Then our loader reads that directory, every expert
decodes to what compressed-tensors' own ``decompress_model`` gives, and the quantized model's
logits stay within the demo's bounds of the bf16 model.

llm-compressor itself is not installed: 0.14 pins transformers <= 5.17 and compressed-tensors
0.19 and pulls datasets, accelerate and auto-round; what it adds (calibration data, GPTQ) does
not change the checkpoint format read here.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

pytestmark = pytest.mark.interop
ct_quant = pytest.importorskip("compressed_tensors.quantization")
pytest.importorskip("transformers")

from compressed_tensors.compressors import ModelCompressor  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

import quantkeys as qk  # noqa: E402
import weight_layouts as wl  # noqa: E402
from moe_oracle import Platform  # noqa: E402
from moe_oracle.demo import build_demo_model, demo_tokens, rel_err, top1_agreement  # noqa: E402
from moe_oracle.hf import load_quantized_model  # noqa: E402

PRESETS = {  # compressed-tensors preset -> (our scheme name, logit bound vs bf16 as in the demo test)
    "W4A16": ("int4_w4a16", 0.26),
    "W8A8": ("int8_w8a8", 0.07),
    "FP8_DYNAMIC": ("fp8_channel", 0.10),
    "FP8_BLOCK": ("fp8_block", 0.10),
    "MXFP4A16": ("mxfp4_w4a16", 0.22),
}
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _put(root: nn.Module, dotted: str, module: nn.Module) -> None:
    *parents, leaf = dotted.split(".")
    node = root
    for name in parents:
        if not hasattr(node, name):
            node.add_module(name, nn.Module())
        node = getattr(node, name)
    node.add_module(leaf, module)


def _weight_views(w: torch.Tensor, args) -> torch.Tensor:
    """[groups..., elements] views of ``w`` [N, K] per compressed-tensors strategy, for min/max."""
    n, k = w.shape
    if args.strategy == "channel":
        return w.reshape(n, 1, k)
    if args.strategy == "group":
        return w.reshape(n, k // args.group_size, args.group_size)
    if args.strategy == "block":
        bn, bk = args.block_structure
        return w.reshape(n // bn, bn, k // bk, bk).transpose(1, 2).reshape(n // bn, k // bk, bn * bk)
    raise AssertionError(f"strategy {args.strategy} not covered")


def _write_with_compressed_tensors(model, path, preset):
    """The demo model's experts compressed by compressed-tensors into ``path`` (a checkpoint dir)."""
    box = nn.Module()
    linears = {}
    for index, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        inter = experts.down_proj.shape[-1]
        for e in range(experts.gate_up_proj.shape[0]):
            mats = (experts.gate_up_proj[e, :inter], experts.gate_up_proj[e, inter:], experts.down_proj[e])
            for proj, w in zip(PROJECTIONS, mats, strict=True):
                lin = nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
                with torch.no_grad():
                    lin.weight.copy_(w)
                name = f"model.layers.{index}.mlp.experts.{e}.{proj}"
                _put(box, name, lin)
                linears[name] = lin
    scheme = ct_quant.preset_name_to_scheme(preset, ["Linear"])
    config = ct_quant.QuantizationConfig(config_groups={"group_0": scheme},
                                         ignore=["lm_head", "re:.*mlp.gate$", "re:.*self_attn.*"])
    ct_quant.apply_quantization_config(box, config)
    for lin in linears.values():
        view = _weight_views(lin.weight.detach(), scheme.weights)
        scale, zp = calculate_qparams(view.amin(-1), view.amax(-1), scheme.weights)
        with torch.no_grad():
            lin.weight_scale.copy_(scale.reshape(lin.weight_scale.shape))
            lin.weight_zero_point.copy_(zp.reshape(lin.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(box)
    compressor.compress_model(box)
    tensors = {n: t.contiguous() for n, t in box.state_dict().items()}
    tensors.update({n: t.contiguous() for n, t in model.state_dict().items() if ".mlp.experts." not in n})
    names = sorted(tensors)
    path.mkdir()
    weight_map = {}
    for s, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-{s + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(path / file))
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(model.config.to_json_string(use_diff=False))
    compressor.update_config(str(path))
    compressor.decompress_model(box)  # compressed-tensors' own dequantization, for the comparison
    return {n: lin.weight.detach().float() for n, lin in linears.items()}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_compressed_tensors_checkpoint_loads_and_runs(tmp_path, preset):
    scheme, bound = PRESETS[preset]
    model = build_demo_model(seed=0)
    path = tmp_path / preset
    theirs = _write_with_compressed_tensors(model, path, preset)
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"

    for index in range(len(model.model.layers)):
        experts = wl.load_experts(path, index)
        assert qk.SCHEMES[scheme].serves(experts.weight_key, experts.activation_key)
        w13, w2 = experts.dequantize()
        inter = w2.shape[-1]
        for e in range(w13.shape[0]):
            for proj, ours in zip(PROJECTIONS, (w13[e, :inter], w13[e, inter:], w2[e]), strict=True):
                ref = theirs[f"model.layers.{index}.mlp.experts.{e}.{proj}"]
                # theirs is rounded to the model dtype (bf16); ours is exact float32
                torch.testing.assert_close(ours.to(torch.bfloat16).float(), ref, rtol=0, atol=0)

    qmodel = load_quantized_model(path, platform=Platform.parse("cpu"))
    assert {layer.mlp.backend for layer in qmodel.model.layers} == {"reference"}
    tokens = demo_tokens(vocab_size=model.config.vocab_size)
    with torch.inference_mode():
        got, ref = qmodel(tokens).logits.float(), model(tokens).logits.float()
    print(f"[{preset}: logits rel err {rel_err(got, ref):.4f}]")
    assert rel_err(got, ref) < bound
    assert top1_agreement(got, ref) >= 0.6  # near-tied logits of a random-weight model
