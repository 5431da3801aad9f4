"""Parse a checkpoint's ``quantization_config`` into per-module (weight key, activation key).

``parse_quant_config(config)`` takes a Hugging Face ``config.json`` dict (or only its
``quantization_config``) and returns a :class:`QuantConfig`. ``keys_for(module_name)`` gives
``(weight_key, activation_key)`` for a linear module, ``(None, None)`` when the module is not
quantized (ignored, excluded, or a protected module). ``resolve(module_name)`` adds the
weight-layouts format name and its parameters.

Methods: ``fp8`` (DeepSeek-V3, Qwen3-FP8; with or without ``weight_block_size``),
``compressed-tensors`` (float-/int-/pack-quantized), ``gptq``, ``awq``, ``modelopt`` (FP8,
MXFP8, NVFP4) and ``mxfp4`` (GPT-OSS).

Routers (``mlp.gate``, ``mlp.router``), embeddings and ``lm_head`` are never reported as
quantized by a pattern meant for other modules (a class name such as ``Linear``, a regex, a
glob, or a method's implicit "everything"); only a target equal to the module's full name (or
GPTQ's ``lm_head: true`` for the head) quantizes them.

An unknown method, an unsupported value or an inconsistent config raises ``ValueError`` naming
the offending key and value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import named as k
from .dtypes import QuantDType
from .group_shape import GroupShape
from .keys import QuantKey, ScaleDesc, ScaleKind
from .module_patterns import ModulePattern, is_protected_module, parse_patterns

__all__ = ["ModuleQuant", "QuantConfig", "QuantMethod", "is_router_module", "parse_quant_config"]

from .module_patterns import is_router_module


class QuantMethod(enum.Enum):
    NONE = "none"
    FP8 = "fp8"
    COMPRESSED_TENSORS = "compressed-tensors"
    GPTQ = "gptq"
    AWQ = "awq"
    MODELOPT = "modelopt"
    MXFP4 = "mxfp4"


_METHOD_ALIASES = {"compressed_tensors": "compressed-tensors"}


@dataclass(frozen=True, kw_only=True)
class ModuleQuant:
    """How one module is quantized: its keys and the weight-layouts format that stores it."""

    weight_key: QuantKey
    activation_key: QuantKey | None
    weight_format: str
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    @property
    def keys(self) -> tuple[QuantKey, QuantKey | None]:
        return (self.weight_key, self.activation_key)


@dataclass(frozen=True)
class _Rule:
    targets: tuple[ModulePattern, ...]
    quant: ModuleQuant
    name: str


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """A parsed quantization config. Use :meth:`keys_for` / :meth:`resolve` per module."""

    method: QuantMethod
    rules: tuple[_Rule, ...] = ()
    ignore: tuple[ModulePattern, ...] = ()
    skip_regexes: tuple[str, ...] = ()  # GPTQ `dynamic` "-:" rules
    overrides: tuple[tuple[str, ModuleQuant], ...] = ()  # GPTQ `dynamic` per-module overrides
    head_quantized: bool = False  # GPTQ `lm_head: true`
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def resolve(self, module_name: str) -> ModuleQuant | None:
        """The quantization of ``module_name``, or None if it is not quantized."""
        if self.method is QuantMethod.NONE:
            return None
        if any(p.matches(module_name) for p in self.ignore):
            return None
        if any(re.match(rx, module_name) for rx in self.skip_regexes):
            return None
        protected = is_protected_module(module_name)
        if protected and module_name.rsplit(".", 1)[-1] == "lm_head" and self.head_quantized and self.rules:
            return self.rules[0].quant
        best: tuple[int, int, _Rule] | None = None
        for order, rule in enumerate(self.rules):
            for pattern in rule.targets:
                if not pattern.matches(module_name):
                    continue
                if protected and not pattern.names_exactly(module_name):
                    continue
                candidate = (pattern.specificity, -order, rule)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
        if best is None:
            return None
        for regex, quant in self.overrides:
            if re.match(regex, module_name):
                return quant
        return best[2].quant

    def keys_for(self, module_name: str) -> tuple[QuantKey | None, QuantKey | None]:
        """``(weight_key, activation_key)`` of ``module_name``; ``(None, None)`` if not quantized."""
        quant = self.resolve(module_name)
        return (None, None) if quant is None else quant.keys

    def describe(self) -> str:
        lines = [f"method: {self.method.value}"]
        for rule in self.rules:
            targets = ", ".join(p.text for p in rule.targets)
            act = rule.quant.activation_key
            lines.append(
                f"  {rule.name}: targets [{targets}] -> weight {rule.quant.weight_key} | "
                f"activation {act if act is not None else 'none'} | format {rule.quant.weight_format}"
            )
        if self.ignore:
            lines.append("  ignore: " + ", ".join(p.text for p in self.ignore))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# entry point


def parse_quant_config(config: Mapping[str, Any]) -> QuantConfig:
    """Parse a ``config.json`` dict or its ``quantization_config`` (see the module docstring)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"expected a config dict, got {type(config).__name__}")
    if "quant_method" in config:
        qcfg: Mapping[str, Any] = config
    elif "quantization_config" in config or "compression_config" in config:
        qcfg = config.get("quantization_config") or config.get("compression_config")  # type: ignore[assignment]
        if not isinstance(qcfg, Mapping):
            raise ValueError(f"quantization_config must be a dict, got {type(qcfg).__name__} {qcfg!r}")
        if "quant_method" not in qcfg:
            raise ValueError("quantization_config has no 'quant_method' key")
    elif "model_type" in config or "architectures" in config:
        return QuantConfig(method=QuantMethod.NONE, raw=config)
    else:
        raise ValueError(
            "config has neither 'quant_method' nor 'quantization_config' nor 'model_type': pass a "
            "Hugging Face config.json dict or its quantization_config"
        )
    method_text = str(qcfg["quant_method"]).lower()
    method_text = _METHOD_ALIASES.get(method_text, method_text)
    try:
        method = QuantMethod(method_text)
    except ValueError:
        valid = ", ".join(m.value for m in QuantMethod if m is not QuantMethod.NONE)
        raise ValueError(f"unsupported quant_method {qcfg['quant_method']!r}; expected one of: {valid}") from None
    parser = _PARSERS[method]
    return parser(qcfg)


# --------------------------------------------------------------------------------------------
# helpers

# The implicit target of methods that quantize every linear module.
_ALL = parse_patterns("Linear", where="implicit target")


def _key(
    dtype: QuantDType, kind: ScaleKind, shape: GroupShape, *, symmetric: bool = True,
    scale_dtype: QuantDType = QuantDType.FP32,
) -> QuantKey:
    return QuantKey(dtype=dtype, scale=ScaleDesc(dtype=scale_dtype, kind=kind, group_shape=shape), symmetric=symmetric)


def _get(cfg: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], *, where: str, default: Any = ...) -> Any:
    if key not in cfg or cfg[key] is None:
        if default is ...:
            raise ValueError(f"{where}: missing required key {key!r}")
        return default
    value = cfg[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ValueError(f"{where}: {key}={value!r} must be {kinds}")
    if not isinstance(value, kinds):
        raise ValueError(f"{where}: {key}={value!r} has type {type(value).__name__}, expected {kinds}")
    return value


def _choice(value: Any, valid: tuple[Any, ...], *, key: str, where: str) -> Any:
    if value not in valid:
        raise ValueError(f"{where}: unsupported {key}={value!r}; expected one of {list(valid)}")
    return value


def _ignore(q: Mapping[str, Any], *keys: str) -> tuple[ModulePattern, ...]:
    for key in keys:
        if q.get(key) is not None:
            return parse_patterns(q[key], where=key)
    return ()


# --------------------------------------------------------------------------------------------
# fp8 (DeepSeek-V3, Qwen3-FP8, HF FineGrainedFP8)


def _parse_fp8(q: Mapping[str, Any]) -> QuantConfig:
    where = "fp8 quantization_config"
    fmt = _get(q, "fmt", str, where=where, default="e4m3")
    _choice(fmt, ("e4m3", "float8_e4m3fn"), key="fmt", where=where)
    act = _choice(_get(q, "activation_scheme", str, where=where, default="dynamic"), ("dynamic", "static"),
                  key="activation_scheme", where=where)
    block = q.get("weight_block_size")
    if block is not None:
        if (not isinstance(block, (list, tuple)) or len(block) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
            raise ValueError(f"{where}: weight_block_size={block!r} must be two positive integers [rows, cols]")
        if act != "dynamic":
            raise ValueError(
                f"{where}: activation_scheme={act!r} with weight_block_size={list(block)}; block FP8 takes "
                "dynamic per-token-group activations only"
            )
        rows, cols = block
        quant = ModuleQuant(
            weight_key=_key(QuantDType.FP8_E4M3, ScaleKind.STATIC, GroupShape.block(rows, cols)),
            activation_key=_key(QuantDType.FP8_E4M3, ScaleKind.DYNAMIC, GroupShape.group(cols)),
            weight_format="fp8-block",
            params=(("block_size", (rows, cols)),),
        )
    else:
        quant = ModuleQuant(
            weight_key=k.kFp8StaticTensorSym,
            activation_key=k.kFp8StaticTensorSym if act == "static" else k.kFp8DynamicTensorSym,
            weight_format="fp8-tensor",
        )
    return QuantConfig(
        method=QuantMethod.FP8,
        rules=(_Rule(_ALL, quant, "fp8"),),
        ignore=_ignore(q, "ignored_layers", "modules_to_not_convert"),
        raw=q,
    )


# --------------------------------------------------------------------------------------------
# gptq / awq


def _int_bits(value: Any, *, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {key}={value!r} must be an integer")
    if value not in (4, 8):
        raise ValueError(f"{where}: unsupported {key}={value}; expected 4 or 8 (2- and 3-bit packings are not implemented)")
    return value


def _group(value: Any, *, key: str, where: str) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value == 0 or value < -1:
        raise ValueError(f"{where}: {key}={value!r} must be a positive group size or -1 (per channel)")
    return None if value == -1 else value


def _gptq_quant(q: Mapping[str, Any], *, where: str) -> ModuleQuant:
    bits = _int_bits(_get(q, "bits", int, where=where), key="bits", where=where)
    group_size = _group(_get(q, "group_size", int, where=where, default=128), key="group_size", where=where)
    sym = _get(q, "sym", bool, where=where, default=True)
    desc_act = _get(q, "desc_act", bool, where=where, default=False)
    fmt = _choice(_get(q, "checkpoint_format", str, where=where, default="gptq"), ("gptq", "gptq_v2"),
                  key="checkpoint_format", where=where)
    return ModuleQuant(
        weight_key=k.int_weight_key(bits=bits, group_size=group_size, symmetric=sym),
        activation_key=None,
        weight_format="gptq",
        params=(("bits", bits), ("group_size", group_size if group_size else -1), ("sym", sym),
                ("desc_act", desc_act), ("checkpoint_format", fmt)),
    )


def _parse_gptq(q: Mapping[str, Any]) -> QuantConfig:
    where = "gptq quantization_config"
    base = _gptq_quant(q, where=where)
    skips: list[str] = []
    overrides: list[tuple[str, ModuleQuant]] = []
    dynamic = q.get("dynamic") or {}
    if not isinstance(dynamic, Mapping):
        raise ValueError(f"{where}: dynamic={dynamic!r} must be a dict of regex -> overrides")
    for pattern, override in dynamic.items():
        regex = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"{where}: dynamic rule {pattern!r} is not a valid regex: {exc}") from None
        if pattern.startswith("-:"):
            skips.append(regex)
        else:
            if not isinstance(override, Mapping):
                raise ValueError(f"{where}: dynamic[{pattern!r}] must be a dict of overrides, got {override!r}")
            overrides.append((regex, _gptq_quant({**q, **override}, where=f"{where} dynamic[{pattern!r}]")))
    return QuantConfig(
        method=QuantMethod.GPTQ,
        rules=(_Rule(_ALL, base, "gptq"),),
        ignore=_ignore(q, "modules_to_not_convert"),
        skip_regexes=tuple(skips),
        overrides=tuple(overrides),
        head_quantized=_get(q, "lm_head", bool, where=where, default=False),
        raw=q,
    )


def _parse_awq(q: Mapping[str, Any]) -> QuantConfig:
    where = "awq quantization_config"
    bits = q.get("w_bit", q.get("bits"))
    if bits is None:
        raise ValueError(f"{where}: missing required key 'bits' (or 'w_bit')")
    if bits != 4:
        raise ValueError(f"{where}: unsupported bits={bits!r}; AWQ is 4-bit")
    group_size = _group(q.get("q_group_size", q.get("group_size", 128)), key="group_size", where=where)
    zero_point = _get(q, "zero_point", bool, where=where, default=True)
    _choice(str(q.get("version", "gemm")).lower(), ("gemm",), key="version", where=where)
    quant = ModuleQuant(
        weight_key=k.int_weight_key(bits=4, group_size=group_size, symmetric=not zero_point),
        activation_key=None,
        weight_format="awq",
        params=(("bits", 4), ("group_size", group_size or -1), ("zero_point", zero_point)),
    )
    return QuantConfig(method=QuantMethod.AWQ, rules=(_Rule(_ALL, quant, "awq"),),
                       ignore=_ignore(q, "modules_to_not_convert"), raw=q)


# --------------------------------------------------------------------------------------------
# compressed-tensors

_CT_STRATEGIES = ("tensor", "channel", "group", "block", "token", "tensor_group")


def _ct_block(args: Mapping[str, Any], *, where: str) -> tuple[int, int]:
    block = args.get("block_structure")
    if isinstance(block, str) and re.fullmatch(r"\d+x\d+", block):
        block = [int(x) for x in block.split("x")]
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and b > 0 for b in block)):
        raise ValueError(f"{where}: strategy 'block' needs block_structure [rows, cols], got {block!r}")
    return int(block[0]), int(block[1])


def _ct_group_size(args: Mapping[str, Any], *, where: str) -> int:
    g = args.get("group_size")
    if not isinstance(g, int) or isinstance(g, bool) or g <= 0:
        raise ValueError(f"{where}: strategy {args.get('strategy')!r} needs a positive group_size, got {g!r}")
    return g


def _ct_common(args: Mapping[str, Any], *, where: str) -> tuple[str, int, bool, str]:
    if not isinstance(args, Mapping):
        raise ValueError(f"{where} must be a dict of quantization args, got {args!r}")
    qtype = _choice(_get(args, "type", str, where=where, default="int"), ("int", "float"), key="type", where=where)
    bits = _get(args, "num_bits", int, where=where, default=8)
    sym = _get(args, "symmetric", bool, where=where, default=True)
    strategy = _choice(_get(args, "strategy", str, where=where, default="tensor"), _CT_STRATEGIES,
                       key="strategy", where=where)
    return qtype, bits, sym, strategy


def _ct_weight_key(args: Mapping[str, Any], *, where: str) -> QuantKey:
    qtype, bits, sym, strategy = _ct_common(args, where=where)
    if args.get("dynamic") not in (None, False):
        raise ValueError(f"{where}: dynamic={args.get('dynamic')!r}; weights must be statically quantized")
    if qtype == "float":
        if bits == 8:
            if not sym:
                raise ValueError(f"{where}: symmetric=False; FP8 weights are symmetric")
            if strategy == "tensor":
                return k.kFp8StaticTensorSym
            if strategy == "channel":
                return k.kFp8StaticChannelSym
            if strategy == "block":
                return _key(QuantDType.FP8_E4M3, ScaleKind.STATIC, GroupShape.block(*_ct_block(args, where=where)))
            if strategy == "group":
                return _key(QuantDType.FP8_E4M3, ScaleKind.STATIC, GroupShape.group(_ct_group_size(args, where=where)))
        if bits == 4:
            g = _ct_group_size(args, where=where)
            if strategy == "tensor_group" and g == 16:
                return k.kNvfp4Static
            if strategy == "group" and g == 32:
                return k.kMxfp4Static
        raise ValueError(f"{where}: unsupported float weights num_bits={bits} strategy={strategy!r}")
    bits = _int_bits(bits, key="num_bits", where=where)
    if strategy == "channel":
        return k.int_weight_key(bits=bits, group_size=None, symmetric=sym)
    if strategy == "group":
        return k.int_weight_key(bits=bits, group_size=_ct_group_size(args, where=where), symmetric=sym)
    if strategy == "tensor" and bits == 8:
        return k.kInt8StaticTensorSym if sym else k.kInt8StaticTensorAsym
    raise ValueError(f"{where}: unsupported int weights num_bits={bits} strategy={strategy!r}")


def _ct_activation_key(args: Mapping[str, Any] | None, *, where: str) -> QuantKey | None:
    if args is None:
        return None
    qtype, bits, sym, strategy = _ct_common(args, where=where)
    dynamic = args.get("dynamic", False)
    kind = ScaleKind.STATIC if dynamic is False else ScaleKind.DYNAMIC
    if dynamic not in (True, False, "local"):
        raise ValueError(f"{where}: dynamic={dynamic!r}; expected true, false or 'local'")
    if qtype == "float" and bits == 4:
        g = args.get("group_size")
        if strategy == "tensor_group" and g == 16:
            return k.kNvfp4Dynamic
        if strategy == "group" and g == 32 and kind is ScaleKind.DYNAMIC:
            return k.kMxfp4Dynamic
        raise ValueError(f"{where}: unsupported fp4 activations strategy={strategy!r} group_size={g!r}")
    if qtype == "float":
        if bits != 8 or not sym:
            raise ValueError(f"{where}: unsupported float activations num_bits={bits} symmetric={sym}")
        dtype = QuantDType.FP8_E4M3
    else:
        _int_bits(bits, key="num_bits", where=where)
        if bits != 8:
            raise ValueError(f"{where}: integer activations are 8-bit, got num_bits={bits}")
        dtype = QuantDType.INT8 if sym else QuantDType.UINT8
    if strategy == "tensor":
        shape = GroupShape.per_tensor()
    elif strategy == "token":
        shape = GroupShape.per_token()
    elif strategy == "group":
        shape = GroupShape.group(_ct_group_size(args, where=where))
    else:
        raise ValueError(f"{where}: unsupported activation strategy {strategy!r}")
    return _key(dtype, kind, shape, symmetric=sym)


_CT_FORMATS = {
    "float-quantized", "int-quantized", "pack-quantized", "naive-quantized", "nvfp4-pack-quantized",
    "mxfp4-pack-quantized", "mixed-precision", "dense",
}


def _ct_weight_format(ct_format: str | None, key: QuantKey, *, where: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    if ct_format is not None and ct_format not in _CT_FORMATS:
        raise ValueError(f"{where}: unsupported format {ct_format!r}; expected one of {sorted(_CT_FORMATS)}")
    shape = key.group_shape
    if key.dtype is QuantDType.FP8_E4M3:
        if shape.granularity.value == "tensor":
            return "fp8-tensor", ()
        if shape.granularity.value == "channel":
            return "fp8-channel", ()
        # compressed-tensors names the block scale `weight_scale` (DeepSeek/HF: `weight_scale_inv`)
        return "ct-fp8-block", (("block_size", (shape.rows, shape.cols)),)
    if key.dtype is QuantDType.FP4_E2M1:
        if key.scale2 is not None:
            return "nvfp4", ()
        return ("ct-mxfp4" if ct_format == "mxfp4-pack-quantized" else "mxfp4"), ()
    if (ct_format in ("pack-quantized", None) and key.dtype.bits == 4) or ct_format == "pack-quantized":
        params = (("bits", key.dtype.bits), ("group_size", shape.group_size or -1), ("symmetric", key.symmetric))
        return "ct-pack-quantized", params
    if key.dtype in (QuantDType.INT8, QuantDType.UINT8) and shape.granularity.value == "channel":
        return "int8-channel", ()
    return f"ct-{ct_format or 'int-quantized'}", (("group_size", shape.group_size or -1),)


def _parse_compressed_tensors(q: Mapping[str, Any]) -> QuantConfig:
    where = "compressed-tensors quantization_config"
    groups = q.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"{where}: config_groups={groups!r} must be a non-empty dict of schemes")
    global_format = q.get("format")
    rules = []
    for name, group in groups.items():
        gwhere = f"{where}: config_groups[{name!r}]"
        if not isinstance(group, Mapping):
            raise ValueError(f"{gwhere} must be a dict, got {group!r}")
        targets = parse_patterns(group.get("targets"), where=f"{gwhere}.targets")
        if not targets:
            raise ValueError(f"{gwhere}.targets is empty")
        weights = group.get("weights")
        if weights is None:
            raise ValueError(f"{gwhere}: weights=None; activation-only quantization is not supported")
        wkey = _ct_weight_key(weights, where=f"{gwhere}.weights")
        akey = _ct_activation_key(group.get("input_activations"), where=f"{gwhere}.input_activations")
        fmt, params = _ct_weight_format(group.get("format") or global_format, wkey, where=gwhere)
        rules.append(_Rule(targets, ModuleQuant(weight_key=wkey, activation_key=akey, weight_format=fmt,
                                                params=params), str(name)))
    return QuantConfig(method=QuantMethod.COMPRESSED_TENSORS, rules=tuple(rules), ignore=_ignore(q, "ignore"), raw=q)


# --------------------------------------------------------------------------------------------
# modelopt and mxfp4


def _parse_modelopt(q: Mapping[str, Any]) -> QuantConfig:
    legacy = q.get("quantization")  # hf_quant_config.json nests the fields under "quantization"
    inner: Mapping[str, Any] = legacy if isinstance(legacy, Mapping) else q
    where = "modelopt quantization_config"
    algo = _get(inner, "quant_algo", str, where=where).upper()
    if algo == "FP8":
        quant = ModuleQuant(weight_key=k.kFp8StaticTensorSym, activation_key=k.kFp8StaticTensorSym,
                            weight_format="fp8-tensor")
    elif algo == "MXFP8":
        quant = ModuleQuant(weight_key=k.kMxfp8Static, activation_key=k.kMxfp8Dynamic, weight_format="mxfp8")
    elif algo == "NVFP4":
        group = inner.get("group_size", 16)
        if group != 16:
            raise ValueError(f"{where}: NVFP4 group_size={group!r}; NVFP4 uses groups of 16")
        quant = ModuleQuant(weight_key=k.kNvfp4Static, activation_key=k.kNvfp4Dynamic, weight_format="nvfp4")
    else:
        raise ValueError(f"{where}: unsupported quant_algo={inner['quant_algo']!r}; expected FP8, MXFP8 or NVFP4")
    return QuantConfig(method=QuantMethod.MODELOPT, rules=(_Rule(_ALL, quant, algo.lower()),),
                       ignore=_ignore(inner, "exclude_modules", "ignore"), raw=q)


def _parse_mxfp4(q: Mapping[str, Any]) -> QuantConfig:
    quant = ModuleQuant(weight_key=k.kMxfp4Static, activation_key=None, weight_format="mxfp4")
    return QuantConfig(method=QuantMethod.MXFP4, rules=(_Rule(_ALL, quant, "mxfp4"),),
                       ignore=_ignore(q, "modules_to_not_convert"), raw=q)


_PARSERS = {
    QuantMethod.FP8: _parse_fp8,
    QuantMethod.GPTQ: _parse_gptq,
    QuantMethod.AWQ: _parse_awq,
    QuantMethod.COMPRESSED_TENSORS: _parse_compressed_tensors,
    QuantMethod.MODELOPT: _parse_modelopt,
    QuantMethod.MXFP4: _parse_mxfp4,
}
