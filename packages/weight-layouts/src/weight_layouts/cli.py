"""`weight-layouts` command line.

    weight-layouts inspect CHECKPOINT              detected format and QuantKeys per layer family
    weight-layouts convert --to LAYOUT CHECKPOINT OUT
                                                   every MoE layer converted, one safetensors file per layer
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from quantkeys import parse_quant_config

from .experts import ExpertWeights
from .layouts import LayoutError, to_layout
from .loading import CheckpointError, ShardIndex, load_experts, moe_dims, read_config, resolve_naming


def _families(names: Sequence[str]) -> dict[str, list[str]]:
    """Group tensor names into module families with numbers replaced by '*'."""
    families: dict[str, list[str]] = {}
    for name in names:
        module = name.rsplit(".", 1)[0]
        family = re.sub(r"\.\d+(?=\.|$)", ".*", module)
        families.setdefault(family, []).append(module)
    return families


def inspect(checkpoint: Path) -> str:
    config = read_config(checkpoint)
    qconfig = parse_quant_config(config)
    index = ShardIndex(checkpoint)
    lines = [f"checkpoint: {checkpoint}", f"quant method: {qconfig.method.value}"]
    try:
        dims = moe_dims(config)
        naming = resolve_naming(config, None)
        lines.append(
            f"MoE: {dims.num_experts} experts, hidden {dims.hidden_size}, intermediate {dims.intermediate_size}, "
            f"top-k {dims.top_k}, naming {naming.name}"
        )
    except CheckpointError as exc:
        lines.append(f"MoE: not recognized ({exc})")
    width = 0
    rows = []
    for family, modules in sorted(_families(sorted(index.files)).items()):
        quant = qconfig.resolve(modules[0])
        if quant is None:
            desc = "not quantized"
        else:
            act = "none" if quant.activation_key is None else str(quant.activation_key)
            desc = (f"{quant.weight_format}: weight {quant.weight_key} ({quant.weight_key.name or 'unnamed'}), "
                    f"activation {act}")
        rows.append((family, desc))
        width = max(width, len(family))
    lines += [f"  {family:<{width}}  {desc}" for family, desc in rows]
    return "\n".join(lines)


def convert(checkpoint: Path, out: Path, *, layout: str, progress: bool = True) -> list[Path]:
    """Convert every MoE layer to ``layout``; writes ``layer-<L>.safetensors`` with metadata."""
    from safetensors.torch import save_file

    config = read_config(checkpoint)
    dims = moe_dims(config)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    layers = range(dims.first_moe_layer, dims.num_layers if dims.num_layers < 1 << 30 else 1)
    for layer in _bar(layers, enabled=progress, desc=f"convert to {layout}"):
        experts = to_layout(load_experts(checkpoint, layer), layout)
        tensors, metadata = _flatten(experts)
        path = out / f"layer-{layer}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        written.append(path)
    return written


def _flatten(experts: ExpertWeights) -> tuple[dict, dict[str, str]]:
    tensors = {}
    for proj in ("w13", "w2"):
        for name, t in getattr(experts, proj).tensors.items():
            tensors[f"{proj}.{name}"] = t.contiguous()
    for name in ("w13_bias", "w2_bias"):
        bias = getattr(experts, name)
        if bias is not None:
            tensors[name] = bias.contiguous()
    for name, value in experts.extras.items():
        if hasattr(value, "contiguous"):
            tensors[f"extra.{name}"] = value.contiguous()
    metadata = {
        "layout": experts.layout,
        "format": experts.w13.format,
        "params": json.dumps({k: v for k, v in experts.w13.params.items()}, default=str),
        "weight_key": str(experts.weight_key),
        "activation_key": str(experts.activation_key),
        "shape": json.dumps({"experts": experts.num_experts, "hidden": experts.hidden_size,
                             "intermediate": experts.intermediate_size}),
    }
    return tensors, metadata


def _bar(items: range, *, enabled: bool, desc: str) -> object:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, unit="layer")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weight-layouts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="detected format and keys per layer family")
    p.add_argument("checkpoint", type=Path)
    c = sub.add_parser("convert", help="convert every MoE layer to a backend layout")
    c.add_argument("--to", required=True, dest="layout")
    c.add_argument("--no-progress", action="store_true")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            print(inspect(args.checkpoint))
        else:
            paths = convert(args.checkpoint, args.out, layout=args.layout, progress=not args.no_progress)
            print(f"wrote {len(paths)} layer file(s) to {args.out}")
    except (CheckpointError, LayoutError, ValueError, OSError) as exc:
        print(f"weight-layouts: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
