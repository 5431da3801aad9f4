"""parse_quant_config on config.json fixtures modeled on public checkpoints, and on bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import quantkeys as qk
from quantkeys import QuantMethod, parse_quant_config

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


EXPERT = "model.layers.{L}.mlp.experts.{E}.{proj}"


def expert(layer=3, index=5, proj="gate_proj"):
    return EXPERT.format(L=layer, E=index, proj=proj)


def test_qwen3_fp8_block():
    cfg = parse_quant_config(load("qwen3-30b-a3b-fp8.json"))
    assert cfg.method is QuantMethod.FP8
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert cfg.keys_for(expert(proj=proj)) == (qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym)
    assert cfg.keys_for("model.layers.3.self_attn.q_proj") == (qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym)
    # routers: listed for layers 0-1 and protected by default elsewhere
    assert cfg.keys_for("model.layers.0.mlp.gate") == (None, None)
    assert cfg.keys_for("model.layers.40.mlp.gate") == (None, None)
    assert cfg.keys_for("lm_head") == (None, None)
    quant = cfg.resolve(expert())
    assert quant.weight_format == "fp8-block" and quant.param("block_size") == (128, 128)


def test_deepseek_v3():
    cfg = parse_quant_config(load("deepseek-v3.json"))
    assert cfg.keys_for(expert(layer=10, index=255)) == (qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym)
    assert cfg.keys_for("model.layers.10.mlp.shared_experts.down_proj") == (qk.kFp8Static128BlockSym,
                                                                             qk.kFp8Dynamic128Sym)
    assert cfg.keys_for("model.layers.10.mlp.gate") == (None, None)
    assert cfg.keys_for("lm_head") == (None, None)


def test_inner_quantization_config_accepted():
    full = load("deepseek-v3.json")
    assert parse_quant_config(full["quantization_config"]).keys_for(expert()) == parse_quant_config(full).keys_for(
        expert()
    )


@pytest.mark.parametrize(
    ("activation_scheme", "act_key"),
    [("dynamic", qk.kFp8DynamicTensorSym), ("static", qk.kFp8StaticTensorSym)],
)
def test_fp8_per_tensor(activation_scheme, act_key):
    cfg = parse_quant_config({"quant_method": "fp8", "activation_scheme": activation_scheme})
    assert cfg.keys_for(expert()) == (qk.kFp8StaticTensorSym, act_key)
    assert cfg.resolve(expert()).weight_format == "fp8-tensor"


def test_fp8_other_block_size_is_its_own_key():
    cfg = parse_quant_config({"quant_method": "fp8", "weight_block_size": [64, 32]})
    wk, ak = cfg.keys_for(expert())
    assert str(wk) == "fp8e4m3 static 64x32 sym" and str(ak) == "fp8e4m3 dynamic 1x32 sym"
    assert wk != qk.kFp8Static128BlockSym


def test_gptq_int4_moe():
    cfg = parse_quant_config(load("qwen3-30b-a3b-gptq-int4.json"))
    assert cfg.method is QuantMethod.GPTQ
    assert cfg.keys_for(expert(proj="down_proj")) == (qk.kInt4Static, None)
    assert cfg.keys_for("model.layers.0.mlp.gate") == (None, None)
    assert cfg.keys_for("lm_head") == (None, None)
    quant = cfg.resolve(expert())
    assert quant.weight_format == "gptq"
    assert dict(quant.params) == {"bits": 4, "group_size": 128, "sym": True, "desc_act": False,
                                  "checkpoint_format": "gptq"}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"group_size": 32}, qk.kInt4Static32),
        ({"group_size": -1}, qk.kInt4StaticChannel),
        ({"sym": False}, qk.kInt4StaticAsym),
        ({"bits": 8}, qk.kInt8Static),
        ({"bits": 8, "group_size": -1}, qk.kInt8StaticChannelSym),
        ({"desc_act": True}, qk.kInt4Static),
    ],
)
def test_gptq_variants(overrides, key):
    cfg = parse_quant_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, **overrides})
    assert cfg.keys_for(expert()) == (key, None)


def test_gptq_lm_head_and_dynamic_rules():
    cfg = parse_quant_config({
        "quant_method": "gptq", "bits": 4, "group_size": 128, "lm_head": True,
        "dynamic": {r"-:.*self_attn.*": {}, r"+:.*down_proj": {"bits": 8}},
    })
    assert cfg.keys_for("lm_head") == (qk.kInt4Static, None)
    assert cfg.keys_for("model.layers.0.self_attn.q_proj") == (None, None)
    assert cfg.keys_for(expert(proj="down_proj")) == (qk.kInt8Static, None)
    assert cfg.keys_for(expert(proj="up_proj")) == (qk.kInt4Static, None)


def test_compressed_tensors_w8a8_int8():
    cfg = parse_quant_config(load("qwen2-moe-ct-w8a8-int8.json"))
    assert cfg.method is QuantMethod.COMPRESSED_TENSORS
    assert cfg.keys_for(expert()) == (qk.kInt8StaticChannelSym, qk.kInt8DynamicTokenSym)
    assert cfg.resolve(expert()).weight_format == "int8-channel"
    assert cfg.keys_for("model.layers.2.mlp.gate") == (None, None)
    assert cfg.keys_for("model.layers.2.mlp.shared_expert_gate") == (None, None)
    assert cfg.keys_for("model.layers.2.mlp.shared_expert.gate_proj") == (qk.kInt8StaticChannelSym,
                                                                            qk.kInt8DynamicTokenSym)


def test_compressed_tensors_w4a16_pack_quantized():
    cfg = parse_quant_config(load("qwen3-moe-ct-w4a16.json"))
    quant = cfg.resolve(expert())
    assert quant.keys == (qk.kInt4Static, None)
    assert quant.weight_format == "ct-pack-quantized"
    assert quant.param("group_size") == 128


def test_compressed_tensors_fp8_dynamic_and_block():
    assert parse_quant_config(load("qwen3-moe-ct-fp8-dynamic.json")).keys_for(expert()) == (
        qk.kFp8StaticChannelSym, qk.kFp8DynamicTokenSym)
    assert parse_quant_config(load("qwen3-moe-ct-fp8-block.json")).keys_for(expert()) == (
        qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym)


def test_compressed_tensors_dynamic_per_tensor_is_per_tensor():
    # vLLM maps this to kFp8Dynamic128Sym (per-token-group); it is dynamic per-tensor.
    cfg = parse_quant_config({
        "quant_method": "compressed-tensors", "format": "float-quantized",
        "config_groups": {"g": {"targets": ["Linear"],
                                "weights": {"type": "float", "num_bits": 8, "strategy": "tensor"},
                                "input_activations": {"type": "float", "num_bits": 8, "strategy": "tensor",
                                                      "dynamic": True}}},
    })
    assert cfg.keys_for(expert()) == (qk.kFp8StaticTensorSym, qk.kFp8DynamicTensorSym)


def test_compressed_tensors_target_specificity_and_router_protection():
    cfg = parse_quant_config({
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {
            "experts": {"targets": ["re:.*mlp\\.experts\\..*"],
                        "weights": {"type": "int", "num_bits": 4, "strategy": "group", "group_size": 32}},
            "rest": {"targets": ["Linear"],
                     "weights": {"type": "int", "num_bits": 8, "strategy": "channel"}},
        },
        "ignore": ["lm_head"],
    })
    assert cfg.keys_for(expert()) == (qk.kInt4Static32, None)
    assert cfg.keys_for("model.layers.0.self_attn.o_proj") == (qk.kInt8StaticChannelSym, None)
    # no ignore entry for the router, still never quantized by "Linear"
    assert cfg.keys_for("model.layers.0.mlp.gate") == (None, None)
    # ... unless a target names it exactly
    named = parse_quant_config({
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"targets": ["model.layers.0.mlp.gate"],
                                "weights": {"type": "int", "num_bits": 8, "strategy": "channel"}}},
    })
    assert named.keys_for("model.layers.0.mlp.gate") == (qk.kInt8StaticChannelSym, None)
    assert named.keys_for("model.layers.1.mlp.gate") == (None, None)


def test_modelopt_mxfp8():
    cfg = parse_quant_config(load("qwen3-moe-modelopt-mxfp8.json"))
    assert cfg.method is QuantMethod.MODELOPT
    assert cfg.keys_for(expert()) == (qk.kMxfp8Static, qk.kMxfp8Dynamic)
    assert cfg.keys_for("model.layers.7.mlp.gate") == (None, None)
    assert cfg.resolve(expert()).weight_format == "mxfp8"


def test_modelopt_nvfp4_legacy_hf_quant_config():
    cfg = parse_quant_config(load("hf-quant-config-nvfp4.json"))
    assert cfg.keys_for(expert()) == (qk.kNvfp4Static, qk.kNvfp4Dynamic)
    assert cfg.keys_for("model.layers.1.mlp.gate") == (None, None)


def test_gpt_oss_mxfp4():
    cfg = parse_quant_config(load("gpt-oss-20b.json"))
    assert cfg.method is QuantMethod.MXFP4
    assert cfg.keys_for("model.layers.3.mlp.experts") == (qk.kMxfp4Static, None)
    assert cfg.keys_for("model.layers.3.self_attn.q_proj") == (None, None)
    assert cfg.keys_for("model.layers.3.mlp.router") == (None, None)
    assert cfg.keys_for("lm_head") == (None, None)


def test_unquantized_model():
    cfg = parse_quant_config(load("mixtral-8x7b-bf16.json"))
    assert cfg.method is QuantMethod.NONE
    assert cfg.keys_for("model.layers.0.block_sparse_moe.experts.0.w1") == (None, None)


def test_name_patterns_respect_component_boundaries():
    cfg = parse_quant_config({"quant_method": "fp8", "modules_to_not_convert": ["model.layers.1"]})
    assert cfg.keys_for("model.layers.1.mlp.experts.0.up_proj") == (None, None)
    assert cfg.keys_for("model.layers.10.mlp.experts.0.up_proj") != (None, None)


def test_mixtral_router_protected():
    cfg = parse_quant_config({"quant_method": "gptq", "bits": 4, "group_size": 128})
    assert cfg.keys_for("model.layers.0.block_sparse_moe.gate") == (None, None)
    assert cfg.keys_for("model.layers.0.block_sparse_moe.experts.3.w1") == (qk.kInt4Static, None)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"quant_method": "bitsandbytes"}, "unsupported quant_method 'bitsandbytes'"),
        ({"hello": 1}, "neither"),
        ({"model_type": "x", "quantization_config": {"bits": 4}}, "no 'quant_method'"),
        ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"},
         "activation_scheme='static'"),
        ({"quant_method": "fp8", "activation_scheme": "sometimes"}, "activation_scheme='sometimes'"),
        ({"quant_method": "fp8", "fmt": "e5m2"}, "fmt='e5m2'"),
        ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "bits=3"),
        ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "group_size=0"),
        ({"quant_method": "gptq", "group_size": 128}, "missing required key 'bits'"),
        ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format='marlin'"),
        ({"quant_method": "gptq", "bits": "4"}, "bits='4'"),
        ({"quant_method": "compressed-tensors", "config_groups": {}}, "config_groups"),
        ({"quant_method": "compressed-tensors",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"type": "int", "num_bits": 4,
                                                                     "strategy": "group"}}}},
         "group_size"),
        ({"quant_method": "compressed-tensors",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"type": "float", "num_bits": 8,
                                                                     "strategy": "block"}}}},
         "block_structure"),
        ({"quant_method": "compressed-tensors",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"type": "int", "num_bits": 4,
                                                                     "strategy": "rows"}}}},
         "strategy='rows'"),
        ({"quant_method": "compressed-tensors",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"type": "complex", "num_bits": 8}}}},
         "type='complex'"),
        ({"quant_method": "compressed-tensors", "format": "zip-quantized",
          "config_groups": {"g": {"targets": ["Linear"], "weights": {"type": "int", "num_bits": 8,
                                                                     "strategy": "channel"}}}},
         "format 'zip-quantized'"),
        ({"quant_method": "compressed-tensors",
          "config_groups": {"g": {"targets": [], "weights": {"type": "int", "num_bits": 8}}}},
         "targets is empty"),
        ({"quant_method": "compressed-tensors",
          "config_groups": {"g": {"targets": ["re:(unclosed"], "weights": {"type": "int", "num_bits": 8}}}},
         "invalid regex"),
        ({"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}, "quant_algo='W4A8_AWQ'"),
        ({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 32}, "group_size=32"),
        ({"quant_method": "awq", "bits": 8}, "bits=8"),
    ],
)
def test_bad_configs_name_the_offending_key(config, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("[", r"\[")):
        parse_quant_config(config)


def test_describe_mentions_keys():
    text = parse_quant_config(load("qwen3-30b-a3b-fp8.json")).describe()
    assert "fp8e4m3 static 128x128 sym" in text and "fp8-block" in text
