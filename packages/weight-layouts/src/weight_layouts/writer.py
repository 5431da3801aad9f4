"""Write small quantized MoE checkpoints: for `moe-oracle explain`, tests and demos.

``write_tiny_checkpoint(path, scheme=...)`` draws dense random experts (fixed seed), quantizes
them with weight-layouts' encoders into the scheme's real checkpoint format, and writes a real
checkpoint directory: ``config.json`` with the real ``quantization_config`` and sharded
safetensors with an index. The dense weights are returned, so tests can compare against them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .formats import encode
from .naming import NAMINGS, ExpertNaming

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


_CT_MXFP4 = {
    "quant_method": "compressed-tensors", "format": "mxfp4-pack-quantized", "ignore": ["lm_head", "re:.*mlp.gate$"],
    "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"type": "float", "num_bits": 4, "strategy": "group", "group_size": 32, "symmetric": True,
                    "dynamic": False, "scale_dtype": "torch.uint8"},
        "input_activations": None,
    }},
}
# Per-expert checkpoints of MXFP4 (Qwen3, Mixtral ...) come from llm-compressor: compressed-tensors'
# mxfp4-pack-quantized. GPT-OSS's own `mxfp4` method is fused (one tensor per layer) and written
# with the gpt_oss naming only.
_PER_EXPERT_RECIPES: Mapping[str, tuple[dict | None, str, dict[str, Any]]] = {
    "mxfp4_w4a16": (_CT_MXFP4, "ct-mxfp4", {}),
}


@dataclass(frozen=True, kw_only=True)
class DenseExperts:
    """One layer's dense experts in the canonical orientation (float, any float dtype).

    ``w13`` ``[E, 2I, H]`` (gate rows then up rows), ``w2`` ``[E, H, I]``, optional biases
    ``w13_bias`` ``[E, 2I]`` and ``w2_bias`` ``[E, H]``."""

    w13: torch.Tensor
    w2: torch.Tensor
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None


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


def scheme_recipe(scheme: str, *, naming: str | None = None) -> tuple[dict | None, str, dict[str, Any], str]:
    """``(quantization_config, format, encode params, naming)`` that write ``scheme`` for ``naming``."""
    if scheme not in SCHEME_CHECKPOINTS:
        raise ValueError(f"no checkpoint recipe for scheme {scheme!r}; recipes: {', '.join(SCHEME_CHECKPOINTS)}")
    quant_config, fmt, params, default_naming = SCHEME_CHECKPOINTS[scheme]
    naming = naming or default_naming
    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; expected one of {', '.join(NAMINGS)}")
    if default_naming == "gpt_oss" and naming != "gpt_oss":
        if scheme not in _PER_EXPERT_RECIPES:
            raise ValueError(f"scheme {scheme!r} is written GPT-OSS style only")
        quant_config, fmt, params = _PER_EXPERT_RECIPES[scheme]
    return quant_config, fmt, params, naming


def _keep_dense(quant_config: dict, patterns: Sequence[str]) -> dict:
    """``quant_config`` with the modules under ``patterns`` (module-name components such as
    ``self_attn``) excluded, in the config's own vocabulary."""
    q = json.loads(json.dumps(quant_config))  # deep copy
    if not patterns:
        return q
    method = q["quant_method"]
    if method == "compressed-tensors":
        q["ignore"] = [*q.get("ignore", []), *(f"re:.*\\.{p}\\..*" for p in patterns)]
    elif method == "gptq":
        q["dynamic"] = {**q.get("dynamic", {}), **{f"-:.*\\.{p}\\..*": {} for p in patterns}}
    elif method == "modelopt":
        q["exclude_modules"] = [*q.get("exclude_modules", []), *(f"model.layers.*.{p}" for p in patterns)]
    else:  # fp8 (FineGrainedFP8) and GPT-OSS mxfp4 match plain component names
        q["modules_to_not_convert"] = [*(q.get("modules_to_not_convert") or []),
                                       *(p for p in patterns if p not in (q.get("modules_to_not_convert") or []))]
    return q


def write_quantized_checkpoint(
    path: str | Path,
    *,
    scheme: str,
    experts: Mapping[int, DenseExperts],
    model_config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor] | None = None,
    keep_dense: Sequence[str] = (),
    naming: str | None = None,
    shards: int = 2,
    static_input_scales: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = False,
) -> Path:
    """Quantize dense experts into ``scheme``'s real checkpoint format and write a checkpoint dir.

    ``experts`` maps a layer index to its dense experts; ``model_config`` is config.json without
    ``quantization_config`` (this adds the scheme's); ``tensors`` are the model's other tensors,
    written as given (routers, attention, norms, embeddings); ``keep_dense`` names module-name
    components (``self_attn``) whose linears stay dense and are excluded in the config, so the
    checkpoint says truthfully which modules are quantized (checked: every 2-D ``.weight`` in
    ``tensors`` must resolve to "not quantized"). ``naming`` is a weight-layouts naming (default:
    the scheme's). Static-activation schemes take ``static_input_scales[layer] = (gemm1 scalar,
    gemm2 [E])``. Returns the directory.
    """
    from quantkeys import parse_quant_config

    quant_config, fmt, params, naming = scheme_recipe(scheme, naming=naming)
    pattern = NAMINGS[naming]
    if quant_config is _CT_FP8_STATIC and static_input_scales is None:
        raise ValueError(f"scheme {scheme!r} has static activation scales: pass static_input_scales")
    config = dict(model_config)
    config.pop("quantization_config", None)
    if quant_config is not None:
        config["quantization_config"] = _keep_dense(quant_config, keep_dense)
    parsed = parse_quant_config(config)
    out: dict[str, torch.Tensor] = {}
    for name, t in (tensors or {}).items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and t.dim() == 2 and parsed.resolve(module) is not None:
            raise ValueError(
                f"tensor {name!r} is written dense, but the {scheme} quantization_config would read module "
                f"{module!r} as quantized; add its component to keep_dense"
            )
        out[name] = t
    items = sorted(experts.items())
    bar = _progress_bar(len(items), enabled=progress, desc=f"quantize experts ({scheme})")
    for layer, dense in items:
        for name, t in _encode_layer(dense, layer=layer, pattern=pattern, fmt=fmt, params=params,
                                     static=None if static_input_scales is None else static_input_scales[layer]).items():
            if name in out:
                raise ValueError(f"tensor {name!r} is both an expert tensor and in tensors")
            out[name] = t
        bar.update(1)
    bar.close()
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    _save_sharded(root, out, shards=shards)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root


def _encode_layer(dense: DenseExperts, *, layer: int, pattern: ExpertNaming, fmt: str, params: dict[str, Any],
                  static: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    w13, w2, b13, b2 = dense.w13, dense.w2, dense.w13_bias, dense.w2_bias
    e, i = int(w13.shape[0]), int(w2.shape[-1])
    if tuple(w13.shape[:2]) != (e, 2 * i) or w2.shape[0] != e or w2.shape[1] != w13.shape[2]:
        raise ValueError(f"layer {layer}: w13 {list(w13.shape)} and w2 {list(w2.shape)} are not [E, 2I, H] and [E, H, I]")
    tensors: dict[str, torch.Tensor] = {}
    if pattern.fused:
        prefix = pattern.layer_prefix.format(layer=layer)
        interleaved = torch.stack([w13[:, :i], w13[:, i:]], dim=2).reshape(e, 2 * i, -1)
        for name, t in encode(fmt, interleaved.float(), **params).items():
            tensors[f"{prefix}{pattern.gate}_{name}"] = t
        for name, t in encode(fmt, w2.float(), **params).items():
            tensors[f"{prefix}{pattern.down}_{name}"] = t
        if b13 is not None:
            tensors[f"{prefix}{pattern.gate}_bias"] = torch.stack([b13[:, :i], b13[:, i:]], dim=2).reshape(e, 2 * i)
        if b2 is not None:
            tensors[f"{prefix}{pattern.down}_bias"] = b2
        return tensors
    for expert in range(e):
        if static is not None:
            for proj, value in ((pattern.gate, static[0]), (pattern.up, static[0]), (pattern.down, static[1][expert])):
                name = pattern.tensor(layer=layer, expert=expert, projection=proj, tensor_name="input_scale")
                tensors[name] = value.reshape(1).to(torch.float32).clone()
        mats = {pattern.gate: (w13[expert, :i], None if b13 is None else b13[expert, :i]),
                pattern.up: (w13[expert, i:], None if b13 is None else b13[expert, i:]),
                pattern.down: (w2[expert], None if b2 is None else b2[expert])}
        for proj, (w, b) in mats.items():
            encoded = encode(fmt, w.to(torch.bfloat16) if fmt == "dense" else w.float(), **params)
            for name, t in encoded.items():
                tensors[pattern.tensor(layer=layer, expert=expert, projection=proj, tensor_name=name)] = t
            if b is not None:
                tensors[pattern.tensor(layer=layer, expert=expert, projection=proj, tensor_name="bias")] = b
    return tensors


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
    """Write a tiny checkpoint of ``scheme`` (a name of the spec table) with random experts to ``path``.

    ``naming``: ``qwen_moe`` (default), ``mixtral`` or ``deepseek`` for per-expert tensors;
    mxfp4 is written GPT-OSS style by default (all experts fused, gate/up interleaved, with
    biases), or compressed-tensors' mxfp4-pack-quantized with a per-expert naming.
    ``bias`` adds per-expert ``.bias`` tensors (bf16) to per-expert checkpoints.
    """
    quant_config, fmt, _, naming = scheme_recipe(scheme, naming=naming)
    pattern = NAMINGS[naming]
    gen = torch.Generator().manual_seed(seed)
    e, h, i = num_experts, hidden_size, intermediate_size
    others: dict[str, torch.Tensor] = {}
    layers: dict[int, DenseExperts] = {}
    statics: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    dense13, dense2, bias13, bias2, routers = [], [], [], [], []
    for layer in range(num_layers):
        w13 = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
        w2 = torch.randn(e, h, i, generator=gen) / i**0.5
        if fmt == "dense":
            w13, w2 = w13.to(torch.bfloat16).float(), w2.to(torch.bfloat16).float()
        dense13.append(w13)
        dense2.append(w2)
        router = (torch.randn(e, h, generator=gen) / h**0.5).to(torch.bfloat16)
        routers.append(router)
        b13 = b2 = None
        if pattern.fused or bias:
            b13 = (torch.randn(e, 2 * i, generator=gen) * 0.1).to(torch.bfloat16)
            b2 = (torch.randn(e, h, generator=gen) * 0.1).to(torch.bfloat16)
            bias13.append(b13.float())
            bias2.append(b2.float())
        layers[layer] = DenseExperts(w13=w13, w2=w2, w13_bias=b13, w2_bias=b2)
        if quant_config is _CT_FP8_STATIC:
            statics[layer] = _calibrate(w13, w2, gen)
        if pattern.fused:
            prefix = f"model.layers.{layer}.mlp."
            others[f"{prefix}router.weight"] = router
            others[f"{prefix}router.bias"] = torch.zeros(e, dtype=torch.bfloat16)
            continue
        router_prefix = pattern.expert_prefix.split("experts.")[0].format(layer=layer)
        others[f"{router_prefix}gate.weight"] = router
        if naming == "deepseek":
            others[f"{router_prefix}gate.e_score_correction_bias"] = torch.randn(e, generator=gen) * 0.1
    root = write_quantized_checkpoint(
        path, scheme=scheme, experts=layers, tensors=others, naming=naming, shards=shards,
        model_config=_model_config(naming=naming, e=e, k=top_k, h=h, i=i, layers=num_layers),
        static_input_scales=statics or None)
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


def _progress_bar(total: int, *, enabled: bool, desc: str) -> Any:
    from .loading import _progress

    return _progress(total, enabled=enabled, desc=desc, unit="layer")
