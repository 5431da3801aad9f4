"""The main job, end to end: a transformers MoE model, quantized into real checkpoint formats,
loaded back with the oracle's backends, run, and compared with the bf16 model.

``moe-oracle demo`` (and ``nox -s demo``) calls :func:`run_demo`. Without a checkpoint it builds
a tiny Qwen3-MoE from a config (no download; random weights, fixed seed), writes one checkpoint
directory per format, and compares each quantized model's logits with the bf16 model's. With a
checkpoint directory it compares that checkpoint's quantized model with the same model whose
experts are dequantized (transformers' own dense code in bf16).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from quantkeys import find_scheme, parse_quant_config
from weight_layouts.loading import moe_dims, read_config, resolve_naming

from .config import MoEConfig
from .hf import export_quantized_checkpoint, load_dequantized_model, load_quantized_model
from .model_info import moe_layer_info
from .platform import Platform
from .selection import SelectionError, select_backend

#: The formats of the embedded demo: scheme name of the spec table -> what the checkpoint holds.
DEMO_FORMATS: dict[str, str] = {
    "fp8_block": "fp8 128x128 blocks, dynamic 1x128 fp8 activations (DeepSeek/Qwen3-FP8 style)",
    "int4_w4a16": "GPTQ int4, group 128, symmetric; bf16 activations",
    "int8_w8a8": "compressed-tensors int8 per channel, dynamic per-token int8 activations",
    "mxfp8": "ModelOpt MXFP8: fp8 with E8M0 scales per 32, dynamic MXFP8 activations",
    "mxfp4_w4a16": "compressed-tensors MXFP4 (llm-compressor MXFP4A16); bf16 activations",
}
OTHER_PLATFORMS = ("cuda:9.0", "cuda:8.0", "rocm:gfx942", "xpu", "cpu")
TABLE_HEADER = ("format", "backend", "logits rel err", "top-1 agree", "ms/forward", "x bf16 time")


def tiny_qwen3_moe_config() -> object:
    """A transformers ``Qwen3MoeConfig`` small enough for CPUs and the Triton interpreter, with
    every dimension a multiple of the formats' blocks (128 for fp8 blocks and GPTQ groups)."""
    from transformers import Qwen3MoeConfig

    # initializer_range 0.06 (not the default 0.02) so that the experts move the logits (with the
    # default the residual stream dominates and any expert error would look small).
    return Qwen3MoeConfig(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                          num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=256,
                          initializer_range=0.06, tie_word_embeddings=False)


def build_demo_model(*, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The tiny Qwen3-MoE of :func:`tiny_qwen3_moe_config`, random weights from ``seed``, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_qwen3_moe_config(), dtype=dtype).eval()


def demo_tokens(*, vocab_size: int, batch: int = 2, seq: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def top1_agreement(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.argmax(-1) == ref.argmax(-1)).double().mean())


@dataclass(frozen=True, kw_only=True)
class DemoRow:
    format: str
    backend: str
    rel_err: float
    top1: float
    ms: float


def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens).logits.float()


def _time_ms(model: nn.Module, tokens: torch.Tensor, *, repeats: int) -> float:
    """Median wall time of one forward (after one warm-up), synchronized on CUDA."""
    times = []
    with torch.inference_mode():
        model(tokens)
        for _ in range(repeats):
            if tokens.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(tokens)
            if tokens.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def explain_choices(checkpoint: Path, *, here: Platform, others: Sequence[str] = OTHER_PLATFORMS) -> list[str]:
    """The backend the oracle picks for the checkpoint's experts on ``here`` (with the reason for
    every rejected backend) and on each of ``others`` (the choice only)."""
    config_json = read_config(checkpoint)
    dims = moe_dims(config_json)
    info = moe_layer_info(config_json)
    naming = resolve_naming(config_json, None)
    module = naming.module(layer=dims.first_moe_layer, expert=0, projection=naming.gate)
    wk, ak = parse_quant_config(config_json).keys_for(module)
    config = MoEConfig(num_experts=dims.num_experts, top_k=info.routing.top_k, hidden_size=dims.hidden_size,
                       intermediate_size=dims.intermediate_size, activation=info.activation)
    scheme = find_scheme(wk, ak)
    lines = [f"  experts: {scheme.name if scheme else 'no scheme'} (weight {wk}, activation {ak})"]
    for platform in [here, *(Platform.parse(p) for p in others if p != str(here))]:
        try:
            sel = select_backend(weight_key=wk, activation_key=ak, config=config, platform=platform)
        except SelectionError as exc:
            lines.append(f"    {platform}: no backend ({len(exc.trail)} rejected)")
            continue
        mark = " <- this machine" if platform is here else ""
        lines.append(f"    {platform}: {sel.backend} ({sel.experts_cls.__name__}){mark}")
        if platform is here:
            lines += [f"      rejected {r}" for r in sel.rejected]
    return lines


def format_table(rows: Sequence[DemoRow], *, baseline_ms: float, baseline_name: str) -> str:
    widths = (14, 12, 15, 12, 11, 12)
    head = " | ".join(h.ljust(w) for h, w in zip(TABLE_HEADER, widths, strict=True))
    lines = [head, "-+-".join("-" * w for w in widths)]
    cells = [(baseline_name, "transformers", "0 (reference)", "100.0%", f"{baseline_ms:.2f}", "1.00")]
    for r in rows:
        cells.append((r.format, r.backend, f"{100 * r.rel_err:.2f}%", f"{100 * r.top1:.1f}%", f"{r.ms:.2f}",
                      f"{r.ms / baseline_ms:.2f}"))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def run_demo(
    checkpoint: Path | None = None,
    *,
    formats: Sequence[str] = tuple(DEMO_FORMATS),
    platform: Platform | None = None,
    force: str | None = None,
    device: str | None = None,
    repeats: int = 3,
    seed: int = 0,
    workdir: Path | None = None,
    out: Callable[[str], None] = print,
) -> list[DemoRow]:
    """Run the demo; print progress, the backend choices and the table with ``out``; return the rows."""
    here = platform or Platform.detect()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows: list[DemoRow] = []
    with tempfile.TemporaryDirectory(prefix="moe-oracle-demo-") as tmp:
        root = Path(workdir or tmp)
        if checkpoint is None:
            unknown = [f for f in formats if f not in DEMO_FORMATS]
            if unknown:
                raise ValueError(f"unknown demo format(s) {unknown}; expected some of {', '.join(DEMO_FORMATS)}")
            model = build_demo_model(seed=seed).to(dev)
            cfg = model.config
            out(f"== model: a tiny Qwen3-MoE built by transformers from a config (seed {seed}, no download): "
                f"{cfg.num_hidden_layers} layers, {cfg.num_experts} experts top-{cfg.num_experts_per_tok}, "
                f"hidden {cfg.hidden_size}, expert intermediate {cfg.moe_intermediate_size}, vocab {cfg.vocab_size}")
            baseline, baseline_name = model, "bf16 (dense)"
            jobs = [(f, None) for f in formats]
            what = "the bf16 model (quantization error included)"
        else:
            out(f"== checkpoint: {checkpoint}")
            out("   reference: the same model with its experts dequantized, run by transformers in bf16")
            baseline = load_dequantized_model(checkpoint, dtype=torch.bfloat16).to(dev)
            baseline_name = "dequantized"
            jobs = [(checkpoint.name, checkpoint)]
            what = "the dequantized bf16 model (kernels and activation quantization only)"
        tokens = demo_tokens(vocab_size=baseline.config.vocab_size).to(dev)
        out(f"== input: {tokens.shape[0]} x {tokens.shape[1]} tokens; device {dev}; this machine: {here}")
        ref = _logits(baseline, tokens)
        baseline_ms = _time_ms(baseline, tokens, repeats=repeats)
        for name, given in jobs:
            if given is None:
                out(f"== {name}: {DEMO_FORMATS[name]}")
                path = export_quantized_checkpoint(baseline, root / name, scheme=name, progress=True)
                out(f"   wrote {path} ({_size_mb(path):.1f} MB)")
            else:
                path = given
            for line in explain_choices(path, here=here):
                out(line)
            qmodel = load_quantized_model(path, platform=here, force=force, device=dev, progress=True)
            backends = sorted({block.mlp.backend for block in qmodel.model.layers})
            logits = _logits(qmodel, tokens)
            rows.append(DemoRow(format=name, backend="+".join(backends), rel_err=rel_err(logits, ref),
                                top1=top1_agreement(logits, ref), ms=_time_ms(qmodel, tokens, repeats=repeats)))
            del qmodel
    out(f"== accuracy against {what}, and time per forward (median of {repeats}, {dev}):")
    out(format_table(rows, baseline_ms=baseline_ms, baseline_name=baseline_name))
    if dev.type == "cpu":
        out("   (on a CPU the reference backend runs: it dequantizes each call; times show the path, not speed)")
    return rows


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e6
