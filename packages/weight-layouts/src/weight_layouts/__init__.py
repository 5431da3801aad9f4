"""weight-layouts: quantized checkpoint formats, streaming expert loading, backend layouts.

* ``encode(fmt, weight, **params)`` / ``decode(fmt, tensors, **params)``: a dense ``[N, K]``
  weight <-> a checkpoint format's own tensors (``FORMATS`` lists the formats).
* ``load_experts(checkpoint_dir, layer)``: one MoE layer's experts, stacked, streamed from
  safetensors: ``w13`` ``[E, 2I, H]`` (gate rows, then up rows), ``w2`` ``[E, H, I]``.
* ``to_layout(experts, layout)``: idempotent conversion to a backend's layout.
* ``shard_experts_tp(experts, tp_rank=, tp_size=)`` / ``select_experts(experts, ids)``: a rank's
  tensor-parallel shard (intermediate dimension, exactly padded) / expert-parallel experts.
"""

from importlib.metadata import PackageNotFoundError, version

from .experts import CANONICAL, ExpertWeights, StackedWeight
from .formats import FORMATS, CheckpointFormat, FormatError, decode, encode, get_format, register_format
from .layouts import Layout, LayoutError, layouts, register_layout, to_layout
from .loading import CheckpointError, ShardIndex, load_experts, moe_dims, read_config
from .naming import DEEPSEEK, GPT_OSS, MIXTRAL, NAMINGS, QWEN_MOE, ExpertNaming
from .sharding import ShardingError, TPShardPlan, plan_tp_shard, select_experts, shard_experts_tp, tp_granularity

try:
    __version__ = version("weight-layouts")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "CANONICAL",
    "DEEPSEEK",
    "FORMATS",
    "GPT_OSS",
    "MIXTRAL",
    "NAMINGS",
    "QWEN_MOE",
    "CheckpointError",
    "CheckpointFormat",
    "ExpertNaming",
    "ExpertWeights",
    "FormatError",
    "Layout",
    "LayoutError",
    "ShardIndex",
    "ShardingError",
    "StackedWeight",
    "TPShardPlan",
    "decode",
    "encode",
    "get_format",
    "layouts",
    "load_experts",
    "moe_dims",
    "plan_tp_shard",
    "read_config",
    "register_format",
    "register_layout",
    "select_experts",
    "shard_experts_tp",
    "to_layout",
    "tp_granularity",
]
