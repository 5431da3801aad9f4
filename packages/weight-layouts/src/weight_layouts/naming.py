"""How checkpoints name a MoE layer's expert tensors.

Built in: Qwen2/Qwen3-MoE and DeepSeek-V2/V3 (``mlp.experts.{e}.{gate,up,down}_proj``),
Mixtral (``block_sparse_moe.experts.{e}.{w1,w3,w2}``) and GPT-OSS (all experts of a layer in
one tensor per projection: ``mlp.experts.gate_up_proj_blocks`` with gate/up rows interleaved).
Pass your own :class:`ExpertNaming` for other checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, kw_only=True)
class ExpertNaming:
    """Tensor-name templates for one layer's experts.

    Per-expert checkpoints (``fused=False``): a tensor is
    ``expert_prefix.format(layer=L, expert=E) + projection + "." + tensor_name`` and the module
    name is the same without the tensor name.

    Fused checkpoints (``fused=True``, GPT-OSS): a tensor is
    ``layer_prefix.format(layer=L) + projection + "_" + tensor_name`` and holds every expert
    (leading dim E); ``up`` equals ``gate`` and ``interleaved`` says gate rows are the even rows
    and up rows the odd rows. Biases are ``... + projection + "_bias"`` then.
    """

    name: str
    expert_prefix: str = ""
    layer_prefix: str = ""
    gate: str
    up: str
    down: str
    fused: bool = False
    interleaved: bool = False

    def module(self, *, layer: int, expert: int, projection: str) -> str:
        if self.fused:
            return f"{self.layer_prefix.format(layer=layer)}{projection}".rstrip(".")
        return f"{self.expert_prefix.format(layer=layer, expert=expert)}{projection}"

    def tensor(self, *, layer: int, expert: int, projection: str, tensor_name: str) -> str:
        if self.fused:
            return f"{self.layer_prefix.format(layer=layer)}{projection}_{tensor_name}"
        return f"{self.module(layer=layer, expert=expert, projection=projection)}.{tensor_name}"


QWEN_MOE = ExpertNaming(
    name="qwen_moe", expert_prefix="model.layers.{layer}.mlp.experts.{expert}.",
    gate="gate_proj", up="up_proj", down="down_proj",
)
DEEPSEEK = ExpertNaming(
    name="deepseek", expert_prefix="model.layers.{layer}.mlp.experts.{expert}.",
    gate="gate_proj", up="up_proj", down="down_proj",
)
MIXTRAL = ExpertNaming(
    name="mixtral", expert_prefix="model.layers.{layer}.block_sparse_moe.experts.{expert}.",
    gate="w1", up="w3", down="w2",
)
GPT_OSS = ExpertNaming(
    name="gpt_oss", layer_prefix="model.layers.{layer}.mlp.experts.",
    gate="gate_up_proj", up="gate_up_proj", down="down_proj", fused=True, interleaved=True,
)

NAMINGS: Mapping[str, ExpertNaming] = MappingProxyType(
    {n.name: n for n in (QWEN_MOE, DEEPSEEK, MIXTRAL, GPT_OSS)}
)
BY_MODEL_TYPE: Mapping[str, ExpertNaming] = MappingProxyType({
    "qwen2_moe": QWEN_MOE,
    "qwen3_moe": QWEN_MOE,
    "deepseek_v2": DEEPSEEK,
    "deepseek_v3": DEEPSEEK,
    "mixtral": MIXTRAL,
    "gpt_oss": GPT_OSS,
})
