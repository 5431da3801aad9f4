"""Hugging Face transformers integration: run a transformers MoE model with quantized experts.

* :func:`swap_moe_blocks` replaces every MoE block of a built transformers model (Qwen3-MoE,
  Mixtral) with a :class:`QuantizedMoEBlock`: the model's own router (full precision, never
  quantized) computes the logits, and a :class:`~moe_oracle.module.QuantizedMoE` loaded from a
  quantized checkpoint routes and runs the experts on the backend the oracle selects.
* :func:`load_quantized_model` builds the model from a checkpoint's ``config.json``, loads its
  non-expert tensors (dense) and swaps the MoE blocks.
* :func:`export_quantized_checkpoint` writes a model's dense experts, quantized into a scheme's
  real checkpoint format, beside its other tensors: a checkpoint directory that the two functions
  above (and other loaders of that format) read.

transformers >= 5 is needed (``pip install "moe-oracle[transformers]"``); it is imported lazily.
Shapes: a block takes and returns hidden states ``[batch, seq, hidden]`` in the model dtype.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weight_layouts.loading import ShardIndex, read_config
from weight_layouts.naming import NAMINGS
from weight_layouts.writer import DenseExperts, write_quantized_checkpoint

from .module import QuantizedMoE
from .platform import Platform


class IntegrationError(ValueError):
    """A model or checkpoint the transformers integration cannot use, and why."""


@dataclass(frozen=True, kw_only=True)
class MoEArchitecture:
    """How one transformers model family holds its MoE blocks.

    ``block_class``: the class name of the sparse MoE block (``model.model.layers[i].mlp``);
    ``router_attr`` / ``experts_attr``: its router and experts submodules; ``naming``: the
    weight-layouts naming of the experts in checkpoints; ``checkpoint_renames``: ``(in the
    checkpoint, in the model's state_dict)`` substrings for the other tensors.
    """

    model_type: str
    block_class: str
    naming: str
    router_attr: str = "gate"
    experts_attr: str = "experts"
    checkpoint_renames: tuple[tuple[str, str], ...] = ()
    keep_dense: tuple[str, ...] = ("self_attn",)

    def to_model_name(self, name: str) -> str:
        for ckpt, model in self.checkpoint_renames:
            name = name.replace(ckpt, model)
        return name

    def to_checkpoint_name(self, name: str) -> str:
        for ckpt, model in self.checkpoint_renames:
            name = name.replace(model, ckpt)
        return name


ARCHITECTURES: Mapping[str, MoEArchitecture] = {
    "qwen3_moe": MoEArchitecture(model_type="qwen3_moe", block_class="Qwen3MoeSparseMoeBlock", naming="qwen_moe"),
    "mixtral": MoEArchitecture(model_type="mixtral", block_class="MixtralSparseMoeBlock", naming="mixtral",
                               checkpoint_renames=((".block_sparse_moe.", ".mlp."),)),
}


def architecture_of(config: Mapping[str, Any] | Any) -> MoEArchitecture:
    """The :class:`MoEArchitecture` of a config dict or a transformers config object."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise IntegrationError(f"model_type {model_type!r} is not supported by the transformers integration; "
                               f"supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


class QuantizedMoEBlock(nn.Module):
    """Drop-in for a transformers sparse MoE block: the model's router + quantized experts.

    ``forward(hidden_states [B, S, H]) -> [B, S, H]``. The router is the original module, in the
    model dtype (never quantized); its logits ``[B*S, E]`` go to ``moe`` for routing.
    """

    def __init__(self, *, router: nn.Module, moe: QuantizedMoE, router_attr: str = "gate") -> None:
        super().__init__()
        self.router_attr = router_attr
        setattr(self, router_attr, router)  # the same state_dict name as in the original block
        self.moe = moe

    @property
    def router(self) -> nn.Module:
        module: nn.Module = getattr(self, self.router_attr)
        return module

    @property
    def backend(self) -> str:
        return self.moe.backend

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        out = self.router(flat)
        logits = out[0] if isinstance(out, tuple) else out  # transformers 5 routers return (logits, ...)
        return self.moe(flat, logits).reshape(shape)


def moe_blocks(model: nn.Module) -> dict[int, nn.Module]:
    """``{layer index: MoE block}`` of a transformers model of a supported architecture."""
    arch = architecture_of(model.config)
    layers = _decoder_layers(model)
    found = {i: layer.mlp for i, layer in enumerate(layers)
             if type(getattr(layer, "mlp", None)).__name__ in (arch.block_class, QuantizedMoEBlock.__name__)}
    if not found:
        raise IntegrationError(f"no {arch.block_class} found in the model's decoder layers")
    return found


def swap_moe_blocks(
    model: nn.Module,
    checkpoint_dir: str | Path,
    *,
    platform: Platform | None = None,
    force: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[int, str]:
    """Replace every MoE block of ``model`` with a :class:`QuantizedMoEBlock` whose experts come
    from ``checkpoint_dir``; returns ``{layer: backend name}``.

    The model's and the checkpoint's MoE dimensions must agree. ``platform`` / ``force`` go to the
    oracle (default: this machine, automatic choice). The experts run in the model's dtype on
    ``device`` (default: where the router is). The dense expert parameters are released.
    """
    arch = architecture_of(model.config)
    ckpt_config = read_config(checkpoint_dir)
    _check_same_moe(arch, model.config, ckpt_config)
    chosen: dict[int, str] = {}
    layers = _decoder_layers(model)
    for index, block in moe_blocks(model).items():
        router = block.router if isinstance(block, QuantizedMoEBlock) else getattr(block, arch.router_attr)
        weight = next(router.parameters())
        moe = QuantizedMoE.from_checkpoint(checkpoint_dir, index, dtype=weight.dtype, platform=platform, force=force,
                                           device=device if device is not None else weight.device, progress=progress)
        layers[index].mlp = QuantizedMoEBlock(router=router, moe=moe, router_attr=arch.router_attr)
        chosen[index] = moe.backend
    return chosen


def load_quantized_model(
    checkpoint_dir: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    platform: Platform | None = None,
    force: str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> nn.Module:
    """Build the transformers causal LM of ``checkpoint_dir`` with quantized experts.

    The model is built from config.json (``quantization_config`` set aside: transformers does not
    load these experts, this package does) on the meta device, so its dense experts are never
    allocated; its MoE blocks are swapped (:func:`swap_moe_blocks`, experts straight onto
    ``device``, default cpu), then every other parameter and persistent buffer is allocated on
    ``device`` and loaded from the checkpoint (every one must be there, dense), and non-persistent
    buffers (rotary tables) are recomputed by building their module again. Peak memory: the
    quantized experts plus the dense rest of the model.
    """
    from transformers import AutoModelForCausalLM

    raw = dict(read_config(checkpoint_dir))
    arch = architecture_of(raw)
    config = _transformers_config(raw)
    target = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    swap_moe_blocks(model, checkpoint_dir, platform=platform, force=force, device=target, progress=progress)
    _materialize(model, config, device=target)
    _load_dense_tensors(model, arch, checkpoint_dir)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def _transformers_config(raw: Mapping[str, Any]) -> Any:
    from transformers import AutoConfig

    kwargs = dict(raw)
    kwargs.pop("quantization_config", None)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def _materialize(model: nn.Module, config: Any, *, device: torch.device) -> None:
    """Allocate every meta tensor of ``model`` on ``device``: parameters and persistent buffers
    uninitialized (the checkpoint fills them next), non-persistent buffers by building their module
    again from ``config``; tensors that already hold data (the swapped experts) are kept."""
    kept = {(id(m), n): t for m in model.modules() for n, t in [*m._parameters.items(), *m._buffers.items()]
            if t is not None and not t.is_meta}
    rebuild = [m for m in model.modules()
               if any(n in m._non_persistent_buffers_set and t is not None and t.is_meta for n, t in m._buffers.items())]
    model.to_empty(device=device)
    for m in model.modules():
        for store in (m._parameters, m._buffers):
            for n in list(store):
                if (id(m), n) in kept:
                    store[n] = kept[(id(m), n)]
    for m in rebuild:
        try:
            fresh = type(m)(config)
        except Exception as exc:  # any failure means the buffers cannot be recomputed
            names = sorted(m._non_persistent_buffers_set)
            raise IntegrationError(f"cannot recompute the non-persistent buffers {names} of {type(m).__name__} "
                                   f"(building it from the config failed: {exc})") from None
        for n in m._non_persistent_buffers_set:
            if n in fresh._buffers and fresh._buffers[n] is not None:
                m._buffers[n] = fresh._buffers[n].to(device)


def load_dequantized_model(
    checkpoint_dir: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The checkpoint's model with its experts *dequantized* (weight-layouts' decoders) into the
    model's own dense expert parameters, run by transformers' own code: the independent reference
    of :func:`load_quantized_model` (it differs by activation quantization and kernel rounding)."""
    from transformers import AutoModelForCausalLM

    from weight_layouts import load_experts

    raw = dict(read_config(checkpoint_dir))
    arch = architecture_of(raw)
    config = _transformers_config(raw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    blocks = moe_blocks(model)
    prefixes = set()
    for index, block in blocks.items():
        experts = getattr(block, arch.experts_attr)
        dense_experts(block, arch=arch)  # checks the fused [E, 2I, H] / [E, H, I] layout
        w13, w2 = load_experts(checkpoint_dir, index).dequantize()
        with torch.no_grad():
            experts.gate_up_proj.copy_(w13)
            experts.down_proj.copy_(w2)
        prefixes.add(f"{_prefix_of(model, block)}{arch.experts_attr}.")
    _load_dense_tensors(model, arch, checkpoint_dir, skip=tuple(prefixes))
    return model.eval()


def dense_experts(block: nn.Module, *, arch: MoEArchitecture) -> DenseExperts:
    """The dense experts of a transformers (>= 5) MoE block as ``w13 [E, 2I, H]`` (gate rows, then
    up) and ``w2 [E, H, I]``: its fused ``gate_up_proj`` / ``down_proj`` parameters."""
    experts = getattr(block, arch.experts_attr)
    if not hasattr(experts, "gate_up_proj"):
        raise IntegrationError("the transformers integration needs fused experts (gate_up_proj / down_proj, "
                               "transformers >= 5)")
    w13, w2 = experts.gate_up_proj.detach(), experts.down_proj.detach()
    e, h = w13.shape[0], w2.shape[1]
    if w13.dim() != 3 or w2.dim() != 3 or w13.shape[2] != h or w13.shape[1] != 2 * w2.shape[2] or w2.shape[0] != e:
        raise IntegrationError(f"expert weights gate_up {list(w13.shape)} / down {list(w2.shape)} are not "
                               "[E, 2I, H] / [E, H, I]")
    return DenseExperts(w13=w13, w2=w2)


def export_quantized_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    scheme: str,
    shards: int = 2,
    progress: bool = False,
) -> Path:
    """Write ``model`` as a checkpoint directory whose experts are quantized into ``scheme``'s real
    format (a scheme name of the spec table: ``fp8_block``, ``int4_w4a16`` (GPTQ), ``int8_w8a8``,
    ``mxfp8``, ``mxfp4_w4a16`` ...). Everything else (attention, routers, norms, embeddings, head)
    is written as it is, and the ``quantization_config`` excludes it. Returns the directory."""
    arch = architecture_of(model.config)
    blocks = moe_blocks(model)
    if any(isinstance(b, QuantizedMoEBlock) for b in blocks.values()):
        raise IntegrationError("the model's experts are already quantized; export a model with dense experts")
    experts = {i: dense_experts(b, arch=arch) for i, b in blocks.items()}
    expert_params = {f"{_prefix_of(model, b)}{arch.experts_attr}." for b in blocks.values()}
    others = {arch.to_checkpoint_name(name): t.detach().contiguous()
              for name, t in model.state_dict().items() if not any(name.startswith(p) for p in expert_params)}
    config = json.loads(model.config.to_json_string(use_diff=False))
    return write_quantized_checkpoint(path, scheme=scheme, experts=experts, model_config=config, tensors=others,
                                      keep_dense=arch.keep_dense, naming=arch.naming, shards=shards, progress=progress)


# ------------------------------------------------------------------------------------------------


def _decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise IntegrationError(f"{type(model).__name__} has no .model.layers: not a supported causal LM")
    return layers


def _prefix_of(model: nn.Module, block: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is block:
            return f"{name}."
    raise IntegrationError("MoE block not found in the model")


def _check_same_moe(arch: MoEArchitecture, model_config: Any, ckpt: Mapping[str, Any]) -> None:
    from weight_layouts.loading import moe_dims

    if ckpt.get("model_type") != arch.model_type:
        raise IntegrationError(f"the checkpoint is a {ckpt.get('model_type')!r} model, the model a {arch.model_type!r}")
    dims = moe_dims(ckpt)
    model_dims = moe_dims(json.loads(model_config.to_json_string(use_diff=False)))
    for what in ("num_experts", "hidden_size", "intermediate_size"):
        if getattr(dims, what) != getattr(model_dims, what):
            raise IntegrationError(f"{what}: the checkpoint has {getattr(dims, what)}, the model "
                                   f"{getattr(model_dims, what)}")


def _load_dense_tensors(model: nn.Module, arch: MoEArchitecture, checkpoint_dir: str | Path,
                        *, skip: tuple[str, ...] = ()) -> None:
    """Load every tensor of ``model``'s state_dict (but the experts, swapped or under ``skip``) from
    the checkpoint; a missing tensor, a shape or dtype mismatch, or an unused non-expert tensor raises."""
    index = ShardIndex(checkpoint_dir)
    wanted = {arch.to_checkpoint_name(name): name for name in model.state_dict()
              if not (skip and name.startswith(skip))}
    missing = sorted(c for c in wanted if c not in index)
    if missing:
        raise IntegrationError(f"{checkpoint_dir}: the checkpoint lacks {len(missing)} tensor(s) the model needs, "
                               f"e.g. {missing[:3]}")
    naming = NAMINGS[arch.naming]
    expert_prefixes = tuple(naming.expert_prefix.split("{expert}")[0].format(layer=i)
                            for i in range(len(_decoder_layers(model))))
    unused = sorted(n for n in index.files if n not in wanted and not n.startswith(expert_prefixes))
    if unused:
        raise IntegrationError(f"{checkpoint_dir}: {len(unused)} tensor(s) are neither experts nor parameters of "
                               f"the model, e.g. {unused[:3]} (quantized attention is not supported here)")
    loaded = index.load(list(wanted))
    state = model.state_dict()
    for ckpt_name, tensor in loaded.items():
        target = state[wanted[ckpt_name]]
        if tensor.shape != target.shape:
            raise IntegrationError(f"{ckpt_name}: shape {list(tensor.shape)}, the model expects {list(target.shape)}")
        if tensor.dtype != target.dtype and not tensor.dtype.is_floating_point:
            raise IntegrationError(f"{ckpt_name}: dtype {tensor.dtype}, the model expects {target.dtype}")
        with torch.no_grad():
            target.copy_(tensor)
