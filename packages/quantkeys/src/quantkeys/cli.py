"""`quantkeys` command line: list keys and schemes, parse a checkpoint's config.json.

    quantkeys keys                      every named key and its meaning
    quantkeys schemes                   the scheme table: keys, formats, backends per platform
    quantkeys parse CONFIG [MODULE...]  the quant config and the keys of the given modules
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .config_parser import parse_quant_config
from .named import NAMED_KEYS
from .platforms import PlatformKind
from .schemes import BACKENDS, PLATFORM_PRIORITY, SCHEMES

_DEFAULT_MODULES = (
    "model.layers.1.mlp.experts.0.gate_proj",
    "model.layers.1.mlp.experts.0.down_proj",
    "model.layers.1.mlp.gate",
    "model.layers.1.self_attn.q_proj",
    "lm_head",
)


def _keys() -> str:
    width = max(map(len, NAMED_KEYS))
    return "\n".join(f"{name:<{width}}  {key}" for name, key in NAMED_KEYS.items())


def _schemes() -> str:
    lines = []
    for scheme in SCHEMES.values():
        act = str(scheme.activation_key) if scheme.activation_key is not None else "none"
        weights = ", ".join("none" if k is None else str(k) for k in scheme.weight_keys)
        lines.append(f"{scheme.name}: {scheme.title}")
        lines.append(f"    weights: {weights}")
        lines.append(f"    activations: {act}; formats: {', '.join(scheme.formats)}")
        for platform in PlatformKind:
            served = [b for b in PLATFORM_PRIORITY[platform]
                      if scheme.support(b) is not None and platform in BACKENDS[b].platforms]
            lines.append(f"    {platform.value:<5} -> {' > '.join(served)}")
    return "\n".join(lines)


def _parse(config_path: Path, modules: Sequence[str]) -> str:
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    config = parse_quant_config(raw)
    lines = [config.describe()]
    for module in modules or _DEFAULT_MODULES:
        quant = config.resolve(module)
        if quant is None:
            lines.append(f"{module}: not quantized")
        else:
            act = str(quant.activation_key) if quant.activation_key is not None else "none"
            name = quant.weight_key.name or "unnamed"
            lines.append(f"{module}: weight {quant.weight_key} ({name}) | activation {act} | format "
                         f"{quant.weight_format}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantkeys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keys", help="list the named keys")
    sub.add_parser("schemes", help="list the scheme table")
    p = sub.add_parser("parse", help="parse a config.json")
    p.add_argument("config", type=Path)
    p.add_argument("modules", nargs="*")
    args = parser.parse_args(argv)
    try:
        if args.command == "keys":
            print(_keys())
        elif args.command == "schemes":
            print(_schemes())
        else:
            print(_parse(args.config, args.modules))
    except (ValueError, OSError) as exc:
        print(f"quantkeys: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
