"""quantkeys: the vocabulary of quantization schemes and the parser of checkpoint quant configs.

* :class:`QuantKey`, :class:`ScaleDesc`, :class:`GroupShape`, :class:`QuantDType`: frozen,
  hashable descriptions of a quantized tensor (``str(key)`` reads ``fp8e4m3 static 128x128 sym``).
* Named keys with vLLM's names (``kFp8Static128BlockSym``, ``kInt4Static`` ...), see
  :mod:`quantkeys.named`.
* The scheme table generated from codegen/spec.toml: :data:`SCHEMES`, :func:`find_scheme`.
* :func:`parse_quant_config`: a Hugging Face ``config.json`` -> per-module (weight, activation) keys.

Importing quantkeys does not import torch.
"""

from importlib.metadata import PackageNotFoundError, version

from . import named as _named
from .config_parser import ModuleQuant, QuantConfig, QuantMethod, is_router_module, parse_quant_config
from .dtypes import NumberKind, QuantDType
from .group_shape import PER_CHANNEL, PER_TENSOR, PER_TOKEN, Granularity, GroupShape
from .keys import QuantKey, ScaleDesc, ScaleKind, parse_key
from .named import *  # noqa: F403  (the named keys kFp8...)
from .named import NAMED_KEYS, get_key, int_weight_key, key_name
from .platforms import PlatformKind
from .schemes import (
    BACKENDS,
    PLATFORM_PRIORITY,
    SCHEMES,
    BackendInfo,
    BackendSupport,
    Scheme,
    find_scheme,
    get_scheme,
    priority_for,
)

try:
    __version__ = version("quantkeys")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "BACKENDS",
    "NAMED_KEYS",
    "PER_CHANNEL",
    "PER_TENSOR",
    "PER_TOKEN",
    "PLATFORM_PRIORITY",
    "SCHEMES",
    "BackendInfo",
    "BackendSupport",
    "Granularity",
    "GroupShape",
    "ModuleQuant",
    "NumberKind",
    "PlatformKind",
    "QuantConfig",
    "QuantDType",
    "QuantKey",
    "QuantMethod",
    "ScaleDesc",
    "ScaleKind",
    "Scheme",
    "find_scheme",
    "get_key",
    "get_scheme",
    "int_weight_key",
    "is_router_module",
    "key_name",
    "parse_key",
    "parse_quant_config",
    "priority_for",
]
__all__ += _named.__all__
