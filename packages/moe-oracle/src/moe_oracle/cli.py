"""`moe-oracle` command line.

    moe-oracle explain [CHECKPOINT] [--scheme NAME|all] [--platform P|all] [--backend NAME]
    moe-oracle demo [CHECKPOINT] [--formats a,b] [--platform P] [--backend NAME] [--device D]

For each MoE layer family of the checkpoint (layers whose experts share a scheme) and each
platform, print the chosen backend and every rejected one with its reason. Without a checkpoint
a tiny checkpoint of each scheme (or of ``--scheme``) is written on the fly and explained.
Platforms: ``cuda:9.0``, ``rocm:gfx942``, ``xpu``, ``cpu`` ...; ``all`` explains a representative
set; the default is this machine.

``demo`` is the main job (see :mod:`moe_oracle.demo`): a tiny transformers Qwen3-MoE quantized
into each format (or your checkpoint), loaded with the chosen backends, run and compared with
bf16, with a table of accuracy and time per forward. It needs transformers >= 5.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from quantkeys import key_name, parse_quant_config
from weight_layouts.loading import CheckpointError, moe_dims, read_config, resolve_naming

from .config import MoEConfig
from .model_info import moe_layer_info
from .platform import Platform
from .selection import SelectionError, select_backend

ALL_PLATFORMS = ("cuda:9.0", "cuda:8.0", "rocm:gfx942", "xpu", "cpu")


def _platforms(text: str | None) -> list[Platform]:
    if text is None:
        return [Platform.detect()]
    if text == "all":
        return [Platform.parse(p) for p in ALL_PLATFORMS]
    return [Platform.parse(p) for p in text.split(",")]


def _key(key: object) -> str:
    if key is None:
        return "none"
    name = key_name(key)  # type: ignore[arg-type]
    return f"{key} ({name})" if name and name != "none" else str(key)


def explain_checkpoint(checkpoint: Path, platforms: list[Platform], *, force: str | None = None) -> str:
    config_json = read_config(checkpoint)
    dims = moe_dims(config_json)
    info = moe_layer_info(config_json)
    naming = resolve_naming(config_json, None)
    qconfig = parse_quant_config(config_json)
    last = dims.num_layers if dims.num_layers < 1 << 30 else dims.first_moe_layer + 1
    families: dict[tuple, list[int]] = {}
    for layer in range(dims.first_moe_layer, last):
        module = naming.module(layer=layer, expert=0, projection=naming.gate)
        families.setdefault(qconfig.keys_for(module), []).append(layer)
    config = MoEConfig(num_experts=dims.num_experts, top_k=info.routing.top_k, hidden_size=dims.hidden_size,
                       intermediate_size=dims.intermediate_size, activation=info.activation,
                       has_bias=naming.fused)
    lines = [f"{checkpoint}: {dims.num_experts} experts, top-{info.routing.top_k}, hidden {dims.hidden_size}, "
             f"intermediate {dims.intermediate_size}, activation {info.activation.value}"]
    for (wk, ak), layers in families.items():
        span = f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
        lines.append(f"  experts of {span}: weight {_key(wk)}, activation {_key(ak)}")
        for platform in platforms:
            try:
                sel = select_backend(weight_key=wk, activation_key=ak, config=config, platform=platform, force=force)
            except SelectionError as exc:
                lines.append(f"    {platform}: no backend")
                lines += [f"      rejected {r}" for r in exc.trail] or [f"      {exc}"]
                continue
            how = f" (forced by {sel.forced_by})" if sel.forced_by else ""
            lines.append(f"    {platform}: {sel.backend} ({sel.experts_cls.__name__}){how}")
            lines += [f"      rejected {r}" for r in sel.rejected]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moe-oracle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="which backend serves each MoE layer family, and why not the others")
    e.add_argument("checkpoint", nargs="?", type=Path)
    e.add_argument("--scheme", help="scheme of the embedded checkpoint (default: all)")
    e.add_argument("--platform", help="cuda:9.0, rocm:gfx942, xpu, cpu, a comma list, or all (default: this machine)")
    e.add_argument("--backend", help="force a backend by name (as MOE_ORACLE_BACKEND would)")
    d = sub.add_parser("demo", help="quantize a tiny transformers MoE model (or load CHECKPOINT), run, compare")
    d.add_argument("checkpoint", nargs="?", type=Path)
    d.add_argument("--formats", help="comma list of demo formats (default: all: fp8_block,int4_w4a16,int8_w8a8,"
                                     "mxfp8,mxfp4_w4a16)")
    d.add_argument("--platform", help="the platform to select backends for (default: this machine)")
    d.add_argument("--backend", help="force a backend by name")
    d.add_argument("--device", help="torch device to run on (default: cuda if present, else cpu)")
    d.add_argument("--repeats", type=int, default=3, help="timed forwards per model (median reported)")
    d.add_argument("--keep", type=Path, help="write the checkpoints here instead of a temporary directory")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args, parser)
    try:
        platforms = _platforms(args.platform)
        if args.checkpoint is not None:
            if args.scheme:
                parser.error("--scheme applies to the embedded checkpoint; a checkpoint has its own scheme")
            print(explain_checkpoint(args.checkpoint, platforms, force=args.backend))
            return 0
        from weight_layouts.writer import SCHEME_CHECKPOINTS, write_tiny_checkpoint

        schemes = list(SCHEME_CHECKPOINTS) if args.scheme in (None, "all") else [args.scheme]
        with tempfile.TemporaryDirectory(prefix="moe-oracle-explain-") as tmp:
            for scheme in schemes:
                ckpt = write_tiny_checkpoint(Path(tmp) / scheme, scheme=scheme, hidden_size=128,
                                             intermediate_size=128, num_experts=4)
                print(f"== embedded tiny checkpoint, scheme {scheme}")
                print(explain_checkpoint(ckpt.path, platforms, force=args.backend))
    except (CheckpointError, SelectionError, ValueError, OSError) as exc:
        print(f"moe-oracle: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("moe-oracle: error: the demo needs transformers >= 5: pip install 'moe-oracle[transformers]'",
              file=sys.stderr)
        return 2
    from .demo import DEMO_FORMATS, run_demo

    if args.checkpoint is not None and args.formats:
        parser.error("--formats applies to the embedded model; a checkpoint has its own format")
    formats = args.formats.split(",") if args.formats else list(DEMO_FORMATS)
    try:
        platform = Platform.parse(args.platform) if args.platform else None
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
        run_demo(args.checkpoint, formats=formats, platform=platform, force=args.backend, device=args.device,
                 repeats=args.repeats, workdir=args.keep)
    except (CheckpointError, SelectionError, ValueError, OSError) as exc:
        print(f"moe-oracle: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
