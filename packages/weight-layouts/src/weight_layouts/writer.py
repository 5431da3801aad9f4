"""Write small quantized MoE checkpoints: for `moe-oracle explain`, tests and demos.

``write_tiny_checkpoint(path, scheme=...)`` draws dense random experts (fixed seed), quantizes
them with weight-layouts' encoders into the scheme's real checkpoint format, and writes a real
checkpoint directory: ``config.json`` with the real ``quantization_config`` and sharded
safetensors with an index. The dense weights are returned, so tests can compare against them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .formats import encode
from .naming import NAMINGS

# scheme -> (quantization_config or None, format, encode params, naming)
_GPTQ = {"quant_method": "gptq", "checkpoint_format": "gptq", "desc_act": False, "lm_head": False}
_CT_FP8_DYNAMIC = {
    "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head", "re:.*mlp.gate$"],
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"type": "float", "num_bits": 8, "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"type": "float", "num_bits": 8, "strategy": "token", "symmetric": True, "dynamic": True},
    }},
}
_CT_FP8_STATIC = {
    "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head", "re:.*mlp.gate$"],
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"type": "float", "num_bits": 8, "strategy": "tensor", "symmetric": True, "dynamic": False},
        "input_activations": {"type": "float", "num_bits": 8, "strategy": "tensor", "symmetric": True,
                              "dynamic": False},
    }},
}
_CT_W8A8 = {
    "quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head", "re:.*mlp.gate$"],
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"type": "int", "num_bits": 8, "strategy": "channel", "symmetric": True, "dynamic": False},
        "input_activations": {"type": "int", "num_bits": 8, "strategy": "token", "symmetric": True, "dynamic": True},
    }},
}
SCHEME_CHECKPOINTS: Mapping[str, tuple[dict | None, str, dict[str, Any], str]] = {
    "unquantized": (None, "dense", {}, "qwen_moe"),
    "fp8_block": ({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": [128, 128]}, "fp8-block", {"block_size": (128, 128)}, "qwen_moe"),
    "fp8_tensor_dynamic": ({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"},
                           "fp8-tensor", {}, "qwen_moe"),
    "fp8_tensor_static": (_CT_FP8_STATIC, "fp8-tensor", {}, "qwen_moe"),
    "fp8_channel": (_CT_FP8_DYNAMIC, "fp8-channel", {}, "qwen_moe"),
    "int8_w8a8": (_CT_W8A8, "int8-channel", {}, "qwen_moe"),
    "int4_w4a16": ({**_GPTQ, "bits": 4, "group_size": 128, "sym": True}, "gptq",
                   {"bits": 4, "group_size": 128, "sym": True}, "qwen_moe"),
    "int4_w4a16_asym": ({**_GPTQ, "bits": 4, "group_size": 128, "sym": False}, "gptq",
                        {"bits": 4, "group_size": 128, "sym": False}, "qwen_moe"),
    "int8_w8a16": ({**_GPTQ, "bits": 8, "group_size": 128, "sym": True}, "gptq",
                   {"bits": 8, "group_size": 128, "sym": True}, "qwen_moe"),
    "int8_w8a16_asym": ({**_GPTQ, "bits": 8, "group_size": 128, "sym": False}, "gptq",
                        {"bits": 8, "group_size": 128, "sym": False}, "qwen_moe"),
    "mxfp8": ({"quant_method": "modelopt", "quant_algo": "MXFP8", "kv_cache_quant_algo": None,
               "exclude_modules": ["lm_head", "model.layers.*.mlp.gate"]}, "mxfp8", {}, "qwen_moe"),
    "mxfp4_w4a16": ({"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
        "mxfp4", {}, "gpt_oss"),
}


@dataclass(frozen=True, kw_only=True)
class TinyCheckpoint:
    """A written checkpoint and the dense float32 experts it was quantized from (per layer)."""

    path: Path
    scheme: str
    w13: list[torch.Tensor]  # per layer [E, 2I, H], gate rows then up rows
    w2: list[torch.Tensor]  # per layer [E, H, I]
    w13_bias: list[torch.Tensor] | None = None
    w2_bias: list[torch.Tensor] | None = None
    router: list[torch.Tensor] | None = None  # per layer [E, H] bf16


def write_tiny_checkpoint(
    path: str | Path,
    *,
    scheme: str,
    num_experts: int = 8,
    top_k: int = 2,
    hidden_size: int = 256,
    intermediate_size: int = 128,
    num_layers: int = 1,
    seed: int = 0,
    shards: int = 2,
    naming: str | None = None,
    bias: bool = False,
) -> TinyCheckpoint:
    """Write a tiny checkpoint of ``scheme`` (a name of the spec table) to ``path``.

    ``naming``: ``qwen_moe`` (default), ``mixtral`` or ``deepseek`` for per-expert tensors;
    mxfp4 is always written GPT-OSS style (all experts fused, gate/up interleaved, with biases).
    ``bias`` adds per-expert ``.bias`` tensors (bf16) to per-expert checkpoints.
    """
    if scheme not in SCHEME_CHECKPOINTS:
        raise ValueError(f"no checkpoint recipe for scheme {scheme!r}; recipes: {', '.join(SCHEME_CHECKPOINTS)}")
    quant_config, fmt, params, default_naming = SCHEME_CHECKPOINTS[scheme]
    if default_naming == "gpt_oss" and naming not in (None, "gpt_oss"):
        raise ValueError(f"scheme {scheme!r} is written GPT-OSS style only")
    naming = naming or default_naming
    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; expected one of {', '.join(NAMINGS)}")
    pattern = NAMINGS[naming]
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    e, h, i = num_experts, hidden_size, intermediate_size
    tensors: dict[str, torch.Tensor] = {}
    dense13, dense2, bias13, bias2, routers = [], [], [], [], []
    gpt_oss = naming == "gpt_oss"
    for layer in range(num_layers):
        w13 = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
        w2 = torch.randn(e, h, i, generator=gen) / i**0.5
        if fmt == "dense":
            w13, w2 = w13.to(torch.bfloat16).float(), w2.to(torch.bfloat16).float()
        dense13.append(w13)
        dense2.append(w2)
        router = (torch.randn(e, h, generator=gen) / h**0.5).to(torch.bfloat16)
        routers.append(router)
        if gpt_oss:
            prefix = f"model.layers.{layer}.mlp."
            b13 = (torch.randn(e, 2 * i, generator=gen) * 0.1).to(torch.bfloat16)
            b2 = (torch.randn(e, h, generator=gen) * 0.1).to(torch.bfloat16)
            bias13.append(b13.float())
            bias2.append(b2.float())
            interleaved = torch.stack([w13[:, :i], w13[:, i:]], dim=2).reshape(e, 2 * i, h)
            for name, t in encode(fmt, interleaved, **params).items():
                tensors[f"{prefix}experts.gate_up_proj_{name}"] = t
            for name, t in encode(fmt, w2, **params).items():
                tensors[f"{prefix}experts.down_proj_{name}"] = t
            tensors[f"{prefix}experts.gate_up_proj_bias"] = torch.stack([b13[:, :i], b13[:, i:]], dim=2).reshape(e, 2 * i)
            tensors[f"{prefix}experts.down_proj_bias"] = b2
            tensors[f"{prefix}router.weight"] = router
            tensors[f"{prefix}router.bias"] = torch.zeros(e, dtype=torch.bfloat16)
            continue
        b13 = (torch.randn(e, 2 * i, generator=gen) * 0.1).to(torch.bfloat16) if bias else None
        b2 = (torch.randn(e, h, generator=gen) * 0.1).to(torch.bfloat16) if bias else None
        if bias:
            bias13.append(b13.float())
            bias2.append(b2.float())
        static_scales = _calibrate(w13, w2, gen) if quant_config is _CT_FP8_STATIC else None
        for expert in range(e):
            if static_scales is not None:
                for proj, value in ((pattern.gate, static_scales[0]), (pattern.up, static_scales[0]),
                                    (pattern.down, static_scales[1][expert])):
                    name = pattern.tensor(layer=layer, expert=expert, projection=proj, tensor_name="input_scale")
                    tensors[name] = value.reshape(1).to(torch.float32).clone()
            mats = {pattern.gate: (w13[expert, :i], None if b13 is None else b13[expert, :i]),
                    pattern.up: (w13[expert, i:], None if b13 is None else b13[expert, i:]),
                    pattern.down: (w2[expert], None if b2 is None else b2[expert])}
            for proj, (w, b) in mats.items():
                encoded = encode(fmt, w.to(torch.bfloat16) if fmt == "dense" else w, **params)
                for name, t in encoded.items():
                    tensors[pattern.tensor(layer=layer, expert=expert, projection=proj, tensor_name=name)] = t
                if b is not None:
                    tensors[pattern.tensor(layer=layer, expert=expert, projection=proj, tensor_name="bias")] = b
        router_prefix = pattern.expert_prefix.split("experts.")[0].format(layer=layer)
        tensors[f"{router_prefix}gate.weight"] = router
        if naming == "deepseek":
            tensors[f"{router_prefix}gate.e_score_correction_bias"] = torch.randn(e, generator=gen) * 0.1
    _save_sharded(root, tensors, shards=shards)
    config = _model_config(naming=naming, e=e, k=top_k, h=h, i=i, layers=num_layers)
    if quant_config is not None:
        config["quantization_config"] = quant_config
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return TinyCheckpoint(path=root, scheme=scheme, w13=dense13, w2=dense2,
                          w13_bias=bias13 or None, w2_bias=bias2 or None, router=routers)


def _calibrate(w13: torch.Tensor, w2: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Static FP8 input scales from 256 standard-normal calibration tokens: ``amax / 448`` of GEMM1's
    input (shared by all experts) and, per expert, of its SiLU-gated GEMM2 input."""
    x = torch.randn(256, w13.shape[-1], generator=gen)
    inter = w2.shape[-1]
    h = torch.einsum("th,enh->etn", x, w13)
    act = torch.nn.functional.silu(h[..., :inter]) * h[..., inter:]
    return x.abs().max() / 448.0, act.abs().amax(dim=(1, 2)) / 448.0


def _model_config(*, naming: str, e: int, k: int, h: int, i: int, layers: int) -> dict[str, Any]:
    if naming == "mixtral":
        return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": h,
                "intermediate_size": i, "num_local_experts": e, "num_experts_per_tok": k,
                "num_hidden_layers": layers, "hidden_act": "silu", "torch_dtype": "bfloat16"}
    if naming == "deepseek":
        return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": h,
                "moe_intermediate_size": i, "n_routed_experts": e, "num_experts_per_tok": k,
                "num_hidden_layers": layers, "first_k_dense_replace": 0, "n_group": 2 if e % 2 == 0 else 1,
                "topk_group": 1, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                "routed_scaling_factor": 2.5, "hidden_act": "silu", "torch_dtype": "bfloat16"}
    if naming == "gpt_oss":
        return {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": h,
                "intermediate_size": i, "num_local_experts": e, "num_experts_per_tok": k,
                "num_hidden_layers": layers, "swiglu_limit": 7.0, "torch_dtype": "bfloat16"}
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": h,
            "moe_intermediate_size": i, "num_experts": e, "num_experts_per_tok": k, "num_hidden_layers": layers,
            "norm_topk_prob": True, "hidden_act": "silu", "torch_dtype": "bfloat16"}


def _save_sharded(root: Path, tensors: dict[str, torch.Tensor], *, shards: int) -> None:
    names = sorted(tensors)
    shards = max(1, min(shards, len(names)))
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for s in range(shards):
        part = {n: tensors[n].contiguous() for n in names[s * per:(s + 1) * per]}
        if not part:
            continue
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(root / file))
        weight_map.update(dict.fromkeys(part, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
