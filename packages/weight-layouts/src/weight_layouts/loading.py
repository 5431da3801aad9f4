"""Stream one MoE layer's experts out of a safetensors checkpoint into stacked tensors.

``load_experts(checkpoint_dir, layer)`` reads ``config.json`` (dimensions and the
``quantization_config``, parsed by quantkeys), the safetensors index (or a single
``model.safetensors``) and the shards, and returns a :class:`~weight_layouts.ExpertWeights` in the
canonical layout: ``w13`` = gate rows then up rows ``[E, 2I, H]``, ``w2`` ``[E, H, I]``, each
in the checkpoint's format with a leading expert dim.

Memory: the stacked outputs are allocated once and filled shard by shard (each shard opened
once), each tensor's bytes read straight into its place in the output (see
:mod:`weight_layouts.safetensors_io`; no memory map), so the peak beyond the returned tensors is
zero where the destination is contiguous and one expert's tensor where it is not (GPTQ's
column-concatenated w13). Per-tensor FP8 re-scales w13 halves one expert at a time. Fused
checkpoints (GPT-OSS) hold a layer's experts in one tensor per projection, so there the peak is
that tensor. Only safetensors are read; pickle never.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quantkeys import parse_quant_config

from .experts import ExpertWeights, StackedWeight
from .formats import FORMATS, get_format
from .fusion import FusionRule, check_fusable, fusion_rules, merge_fp8_tensor_scales
from .naming import BY_MODEL_TYPE, NAMINGS, ExpertNaming
from .safetensors_io import SafetensorsError, SafetensorsFile

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing something, is inconsistent, or is not readable safetensors."""


@dataclass(frozen=True, kw_only=True)
class MoEDims:
    """MoE dimensions read from config.json."""

    num_experts: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    top_k: int | None
    first_moe_layer: int


def read_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def _first(config: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    raise CheckpointError(f"config.json has none of {list(keys)}")


def moe_dims(config: Mapping[str, Any]) -> MoEDims:
    """Experts, hidden and intermediate sizes from a Qwen-MoE / DeepSeek / Mixtral / GPT-OSS config."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "hidden_size" not in config:
        config = text
    return MoEDims(
        num_experts=int(_first(config, "num_experts", "n_routed_experts", "num_local_experts")),
        hidden_size=int(_first(config, "hidden_size")),
        intermediate_size=int(_first(config, "moe_intermediate_size", "intermediate_size")),
        num_layers=int(config.get("num_hidden_layers", 0)) or 1 << 30,
        top_k=config.get("num_experts_per_tok"),
        first_moe_layer=int(config.get("first_k_dense_replace", 0) or 0),
    )


def resolve_naming(config: Mapping[str, Any], naming: ExpertNaming | str | None) -> ExpertNaming:
    if isinstance(naming, ExpertNaming):
        return naming
    if isinstance(naming, str):
        try:
            return NAMINGS[naming]
        except KeyError:
            raise CheckpointError(f"unknown naming {naming!r}; built in: {', '.join(NAMINGS)}") from None
    model_type = config.get("model_type")
    if model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type]
    raise CheckpointError(
        f"no built-in expert naming for model_type={model_type!r} (known: {', '.join(BY_MODEL_TYPE)}); "
        "pass naming=ExpertNaming(...)"
    )


class ShardIndex:
    """Which shard file holds each tensor; opens shards one at a time, never unpickles."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.root = Path(checkpoint_dir)
        index = self.root / INDEX_NAME
        single = self.root / SINGLE_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index (no weight_map): {exc}") from None
            self.files: dict[str, str] = dict(weight_map)
        elif single.is_file():
            with self._open(single) as handle:
                self.files = dict.fromkeys(handle.keys(), SINGLE_NAME)
        else:
            pickles = sorted(p.name for p in self.root.glob("*.bin")) + sorted(p.name for p in self.root.glob("*.pt"))
            hint = f" (found {pickles}: pickle checkpoints are never loaded; convert them to safetensors)" if pickles else ""
            raise CheckpointError(f"{self.root}: neither {INDEX_NAME} nor {SINGLE_NAME}{hint}")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def file_of(self, name: str) -> str:
        try:
            return self.files[name]
        except KeyError:
            where = INDEX_NAME if (self.root / INDEX_NAME).is_file() else SINGLE_NAME
            raise CheckpointError(f"missing tensor {name!r}: not listed in {self.root / where}") from None

    def _open(self, path: Path) -> SafetensorsFile:
        if not path.is_file():
            raise CheckpointError(f"shard {path} listed in the index does not exist")
        try:
            return SafetensorsFile(path)
        except SafetensorsError as exc:
            raise CheckpointError(f"not a readable safetensors file: {exc}") from None

    def read(self, names: list[str]) -> Iterator[tuple[str, _Source]]:
        """Yield ``(name, source)`` for ``names``, grouped by shard, each shard opened once.

        A source is valid until the next item; read it with ``read()`` or ``read_into(out)``.
        """
        by_file: dict[str, list[str]] = defaultdict(list)
        for name in names:
            by_file[self.file_of(name)].append(name)
        for file_name in sorted(by_file):
            path = self.root / file_name
            with self._open(path) as handle:
                available = set(handle.keys())
                for name in by_file[file_name]:
                    if name not in available:
                        raise CheckpointError(f"missing tensor {name!r} in {path} (the index lists it there)")
                # in file order: sequential reads keep the OS read-ahead useful
                for name in sorted(by_file[file_name], key=lambda n: handle.info(n).begin):
                    yield name, _FileSource(handle, name)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Read ``names`` into new tensors (small tensors: biases, router extras)."""
        return {name: source.read() for name, source in self.read(names)}


class _Source:
    shape: tuple[int, ...]
    dtype: torch.dtype

    def read(self) -> torch.Tensor:
        raise NotImplementedError

    def read_into(self, out: torch.Tensor) -> None:
        if out.is_contiguous():
            self._read_into(out)
        else:
            out.copy_(self.read())

    def _read_into(self, out: torch.Tensor) -> None:
        out.copy_(self.read())


class _FileSource(_Source):
    def __init__(self, handle: SafetensorsFile, name: str) -> None:
        self.handle, self.name = handle, name
        info = handle.info(name)
        self.shape, self.dtype = info.shape, info.dtype

    def read(self) -> torch.Tensor:
        try:
            return self.handle.read(self.name)
        except SafetensorsError as exc:
            raise CheckpointError(str(exc)) from None

    def _read_into(self, out: torch.Tensor) -> None:
        try:
            self.handle.read_into(self.name, out)
        except SafetensorsError as exc:
            raise CheckpointError(str(exc)) from None


class _MemSource(_Source):
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor, self.shape, self.dtype = tensor, tuple(tensor.shape), tensor.dtype

    def read(self) -> torch.Tensor:
        return self.tensor


@dataclass
class _Slot:
    """Where one checkpoint tensor lands: projection (w13/w2), tensor name, expert, half."""

    target: str  # "w13" or "w2"
    tensor_name: str
    expert: int | None  # None for fused checkpoints (all experts in the tensor)
    half: int  # 0 gate / whole, 1 up
    de_interleave: bool = False


class _Stacker:
    """Allocates each stacked output on first sight and fills it slot by slot."""

    def __init__(self, *, num_experts: int, rules: Mapping[str, FusionRule], fused_w13: bool) -> None:
        self.e = num_experts
        self.rules = rules
        self.fused_w13 = fused_w13
        self.out: dict[tuple[str, str], torch.Tensor] = {}
        self.ref: dict[tuple[str, str, int], tuple[tuple[int, ...], torch.dtype]] = {}
        self.side: dict[tuple[str, str, int], torch.Tensor] = {}  # per-half values kept apart

    def place(self, slot: _Slot, name: str, source: _Source) -> None:
        """Put ``source`` where ``slot`` says, reading straight into the output when it can."""
        if slot.de_interleave:  # GPT-OSS: gate rows are the even rows, up rows the odd rows
            tensor = source.read()
            for half, part in ((0, tensor[:, 0::2]), (1, tensor[:, 1::2])):
                self.place(_Slot("w13", slot.tensor_name, None, half), name, _MemSource(part))
            return
        per_expert = source.shape if slot.expert is not None else source.shape[1:]
        self._check(slot, name, tuple(per_expert), source.dtype)
        rule = self.rules[slot.tensor_name] if slot.target == "w13" and self.fused_w13 else FusionRule.whole()
        if rule.kind in ("separate", "shared", "shape"):
            key = ("w13", slot.tensor_name, slot.half)
            buf = self.side.get(key)
            if buf is None:
                buf = self.side[key] = torch.empty((self.e, *per_expert), dtype=source.dtype)
            source.read_into(buf if slot.expert is None else buf[slot.expert])
            return
        key2 = (slot.target, slot.tensor_name)
        buf = self.out.get(key2)
        if buf is None:
            shape = list(per_expert)
            if rule.kind == "concat":
                shape[rule.axis] *= 2
            buf = self.out[key2] = torch.empty((self.e, *shape), dtype=source.dtype)
        dest = buf
        if rule.kind == "concat":
            size = per_expert[rule.axis]
            dest = buf.narrow(rule.axis + 1, slot.half * size, size)
        source.read_into(dest if slot.expert is None else dest[slot.expert])

    def _check(self, slot: _Slot, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        key = (slot.target, slot.tensor_name, slot.half)
        seen = self.ref.setdefault(key, (shape, dtype))
        if seen != (shape, dtype):
            raise CheckpointError(
                f"tensor {name!r}: shape {list(shape)} dtype {dtype}, but the layer's other experts have "
                f"shape {list(seen[0])} dtype {seen[1]}"
            )


def load_experts(
    checkpoint_dir: str | Path,
    layer: int,
    *,
    naming: ExpertNaming | str | None = None,
    progress: bool = False,
) -> ExpertWeights:
    """Load one MoE layer's experts, stacked, in the canonical layout (see the module docstring).

    ``naming`` picks the tensor-name pattern (an :class:`ExpertNaming`, a built-in name, or None
    to infer it from ``model_type``). ``progress`` shows a tqdm bar over tensors.
    """
    root = Path(checkpoint_dir)
    config = read_config(root)
    dims = moe_dims(config)
    if not 0 <= layer < dims.num_layers:
        raise CheckpointError(f"layer {layer} out of range: the model has {dims.num_layers} layers")
    if layer < dims.first_moe_layer:
        raise CheckpointError(f"layer {layer} is a dense MLP layer (first_k_dense_replace={dims.first_moe_layer})")
    pattern = resolve_naming(config, naming)
    try:
        qconfig = parse_quant_config(config)
    except ValueError as exc:
        raise CheckpointError(f"{root / 'config.json'}: {exc}") from None

    projections = {"gate": pattern.gate, "up": pattern.up, "down": pattern.down}
    modules = {k: pattern.module(layer=layer, expert=0, projection=v) for k, v in projections.items()}
    quants = {k: qconfig.resolve(m) for k, m in modules.items()}
    if len({(q.weight_format, q.params, q.keys) if q else None for q in quants.values()}) != 1:
        raise CheckpointError(
            f"layer {layer}: gate, up and down are quantized differently ({quants}); one scheme per layer is supported"
        )
    quant = quants["gate"]
    fmt_name = quant.weight_format if quant is not None else "dense"
    params = dict(quant.params) if quant is not None else {}
    if fmt_name not in FORMATS:
        raise CheckpointError(
            f"layer {layer} is stored as {fmt_name!r}, which weight-layouts cannot read (formats: {', '.join(FORMATS)})"
        )
    fmt = get_format(fmt_name)
    try:
        check_fusable(fmt_name, params, intermediate=dims.intermediate_size)
    except ValueError as exc:
        raise CheckpointError(f"layer {layer}: {exc}") from None
    index = ShardIndex(root)

    def tname(proj: str, tensor_name: str, expert: int) -> str:
        return pattern.tensor(layer=layer, expert=expert, projection=projections[proj], tensor_name=tensor_name)

    tensor_names = [n for n in fmt.tensor_names if tname("gate", n, 0) in index or n in fmt.required_tensors]
    slots: dict[str, _Slot] = {}
    e_count = dims.num_experts
    for proj, target, half in (("gate", "w13", 0), ("up", "w13", 1), ("down", "w2", 0)):
        if pattern.fused and proj == "up":
            continue
        for n in tensor_names:
            if pattern.fused:
                slots[tname(proj, n, 0)] = _Slot(target, n, None, half, de_interleave=pattern.interleaved and proj == "gate")
            else:
                for e in range(e_count):
                    slots[tname(proj, n, e)] = _Slot(target, n, e, half)
    bias_slots = _bias_slots(pattern, layer, e_count, index)

    rules = fusion_rules(fmt_name)
    stacker = _Stacker(num_experts=e_count, rules=rules, fused_w13=True)
    names = list(slots)
    bar = _progress(len(names) + len(bias_slots), enabled=progress, desc=f"layer {layer} experts")
    biases: dict[str, torch.Tensor] = {}
    for name, source in index.read(names + list(bias_slots)):
        if name in bias_slots:
            biases[name] = source.read()
        else:
            stacker.place(slots[name], name, source)
        bar.update(1)
    bar.close()

    h, i = dims.hidden_size, dims.intermediate_size
    w13_tensors = {n: t for (target, n), t in stacker.out.items() if target == "w13"}
    w2_tensors = {n: t for (target, n), t in stacker.out.items() if target == "w2"}
    _finish_w13(stacker, w13_tensors, fmt_name, params, rows=2 * i, cols=h)
    w13 = StackedWeight(format=fmt_name, tensors=w13_tensors, params=params, rows=2 * i, cols=h)
    w2 = StackedWeight(format=fmt_name, tensors=w2_tensors, params=params, rows=h, cols=i)
    for weight, what in ((w13, "w13"), (w2, "w2")):
        try:
            fmt.validate(dict(weight.tensors), rows=weight.rows, cols=weight.cols, **params)
        except ValueError as exc:
            raise CheckpointError(f"layer {layer} {what}: {exc}") from None
    if fmt.canonical_format is not None:  # a storage alias (ct-mxfp4 -> mxfp4): re-view, no copy
        w13, w2 = (StackedWeight(format=fmt.canonical_format, tensors=fmt.to_canonical(w.tensors), params=params,
                                 rows=w.rows, cols=w.cols) for w in (w13, w2))
    w13_bias, w2_bias = _stack_biases(biases, bias_slots, pattern, e_count)
    a13_scale = a2_scale = None
    if quant is not None and quant.activation_key is not None and quant.activation_key.is_static:
        a13_scale, a2_scale = _static_input_scales(index, pattern, layer, e_count, projections)
    return ExpertWeights(
        w13=w13,
        w2=w2,
        weight_key=None if quant is None else quant.weight_key,
        activation_key=None if quant is None else quant.activation_key,
        w13_bias=w13_bias,
        w2_bias=w2_bias,
        a13_scale=a13_scale,
        a2_scale=a2_scale,
    )


def _static_input_scales(index: ShardIndex, pattern: ExpertNaming, layer: int, experts: int,
                         projections: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor static activation scales: the max of every expert's ``input_scale`` per GEMM input."""
    if pattern.fused:
        raise CheckpointError(f"{pattern.name} checkpoints with static activation scales are not supported")
    groups = {"a13": ("gate", "up"), "a2": ("down",)}
    out = []
    for what, projs in groups.items():
        names = [pattern.tensor(layer=layer, expert=e, projection=projections[p], tensor_name="input_scale")
                 for p in projs for e in range(experts)]
        missing = [n for n in names if n not in index]
        if missing:
            raise CheckpointError(
                f"the activation scheme is static but {len(missing)} input_scale tensor(s) are missing, e.g. "
                f"{missing[0]!r}"
            )
        values = torch.cat([t.reshape(-1).to(torch.float32) for t in index.load(names).values()])
        if values.numel() != len(names):
            raise CheckpointError(f"{what}: input_scale tensors must hold one value each, got {values.numel()} "
                                  f"values for {len(names)} tensors")
        bad = ~(torch.isfinite(values) & (values > 0))
        if bool(bad.any()):
            raise CheckpointError(f"{names[int(torch.nonzero(bad)[0])]}: input_scale must be finite and positive, "
                                  f"got {float(values[bad][0])}")
        out.append(values.max().reshape(1))
    return out[0], out[1]


def _finish_w13(stacker: _Stacker, tensors: dict[str, torch.Tensor], fmt_name: str, params: dict[str, Any],
                *, rows: int, cols: int) -> None:
    """Resolve the per-half side buffers: shared tensors must agree; per-half scales are merged."""
    for (_, name, half), buf in list(stacker.side.items()):
        if half == 1:
            continue
        rule = stacker.rules[name]
        other = stacker.side.get(("w13", name, 1))
        if other is None:
            raise CheckpointError(f"tensor {name!r} found for the gate projection but not for up")
        if rule.kind == "shared":
            if not torch.equal(buf, other):
                raise CheckpointError(
                    f"{name!r} differs between gate and up projections; fusing them into w13 needs one value"
                )
            tensors[name] = buf
        elif rule.kind == "shape":
            fused = buf.clone()
            fused[:, 0] = rows
            tensors[name] = fused
        elif rule.kind == "separate":
            tensors[name] = merge_fp8_tensor_scales(tensors, name, buf, other, params=params)


def _bias_slots(pattern: ExpertNaming, layer: int, experts: int, index: ShardIndex) -> dict[str, tuple[str, int | None]]:
    slots: dict[str, tuple[str, int | None]] = {}
    if pattern.fused:
        for proj, target in ((pattern.gate, "w13"), (pattern.down, "w2")):
            name = f"{pattern.layer_prefix.format(layer=layer)}{proj}_bias"
            if name in index:
                slots[name] = (target, None)
        return slots
    for proj, target in ((pattern.gate, "w13:gate"), (pattern.up, "w13:up"), (pattern.down, "w2")):
        for e in range(experts):
            name = f"{pattern.module(layer=layer, expert=e, projection=proj)}.bias"
            if name in index:
                slots[name] = (target, e)
    return slots


def _stack_biases(biases: dict[str, torch.Tensor], slots: dict[str, tuple[str, int | None]], pattern: ExpertNaming,
                  experts: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if not biases:
        return None, None
    if pattern.fused:
        w13 = w2 = None
        for name, (target, _) in slots.items():
            t = biases[name]
            if target == "w13":
                w13 = torch.cat([t[:, 0::2], t[:, 1::2]], dim=1) if pattern.interleaved else t
            else:
                w2 = t
        return w13, w2
    parts: dict[str, list[torch.Tensor | None]] = {k: [None] * experts for k in ("w13:gate", "w13:up", "w2")}
    for name, (target, e) in slots.items():
        assert e is not None
        parts[target][e] = biases[name]
    out = []
    for keys in (("w13:gate", "w13:up"), ("w2",)):
        present = [all(p is not None for p in parts[k]) for k in keys]
        if not any(present) and not any(any(p is not None for p in parts[k]) for k in keys):
            out.append(None)
            continue
        if not all(present):
            raise CheckpointError(f"some experts have a {'/'.join(keys)} bias and others do not")
        stacked = [torch.stack(parts[k]) for k in keys]  # type: ignore[arg-type]
        out.append(torch.cat(stacked, dim=1))
    return out[0], out[1]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, *, enabled: bool, desc: str, unit: str = "tensor") -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit)
