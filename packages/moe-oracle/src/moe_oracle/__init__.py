"""moe-oracle: the MoE data model, backend registry and selection with reasons, reference
experts for every scheme, the QuantizedMoE module and the `moe-oracle` CLI.

>>> sel = select_backend(weight_key=kFp8Static128BlockSym, activation_key=kFp8Dynamic128Sym,
...                      config=MoEConfig(num_experts=256, top_k=8, hidden_size=7168, intermediate_size=2048),
...                      platform=Platform.parse("cuda:9.0"))
>>> sel.backend, [str(r) for r in sel.rejected]
"""

from importlib.metadata import PackageNotFoundError, version

from .activations import Activation, apply_activation
from .config import ActivationFormat, MoEConfig, MoEQuantConfig, TensorQuant
from .experts_base import Capabilities, Experts, Rejection, RejectReason
from .kernel import LocalPrepareFinalize, MoEKernel, make_kernel
from .model_info import MoELayerInfo, RoutingKind, RoutingSpec, moe_layer_info
from .module import QuantizedMoE
from .parallel import ParallelConfig, PrepareFinalizeKind, PrepareFinalizeSelection, TokenLayout
from .platform import Platform
from .registry import ENTRY_POINT_GROUP, Backend, register_backend, registered_backends, unregister_backend
from .routing import TopK, grouped_topk, softmax_topk
from .selection import (
    ForcedBackendError,
    NoBackendError,
    Selection,
    SelectionError,
    UnknownBackendError,
    applicable_backends,
    priority_order,
    select_backend,
)
from .settings import Settings, settings

try:
    __version__ = version("moe-oracle")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Activation",
    "ActivationFormat",
    "Backend",
    "Capabilities",
    "Experts",
    "ForcedBackendError",
    "LocalPrepareFinalize",
    "MoEConfig",
    "MoEKernel",
    "MoELayerInfo",
    "MoEQuantConfig",
    "NoBackendError",
    "ParallelConfig",
    "Platform",
    "PrepareFinalizeKind",
    "PrepareFinalizeSelection",
    "QuantizedMoE",
    "RejectReason",
    "Rejection",
    "RoutingKind",
    "RoutingSpec",
    "Selection",
    "SelectionError",
    "Settings",
    "TensorQuant",
    "TokenLayout",
    "TopK",
    "UnknownBackendError",
    "applicable_backends",
    "apply_activation",
    "grouped_topk",
    "make_kernel",
    "moe_layer_info",
    "priority_order",
    "register_backend",
    "registered_backends",
    "select_backend",
    "settings",
    "softmax_topk",
    "unregister_backend",
]
