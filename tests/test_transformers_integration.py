"""The main job end to end: a transformers Qwen3-MoE (tiny, from a config, fixed seed), its experts
quantized into real checkpoint formats, loaded back with the oracle's backends, run.

Per format and platform configuration, two comparisons:

* every MoE layer against transformers' own expert code in float32 on the *dense dequantized*
  weights (weight-layouts' decoders), fed the same hidden states and the same routing: this
  isolates the backend (kernel rounding and activation quantization), tight bounds;
* the logits against the bf16 model the checkpoint was quantized from: the user-visible error
  (quantization included), looser bounds, and a check that the experts matter at all (zeroing
  them moves the logits by far more than any bound).

Configurations: ``cpu`` (reference backend), ``xpu-sim`` (XPU platform, xpu-experts' emulation),
``triton-interpret`` (the Triton kernels on the CPU) and ``cuda`` (the same test on a GPU).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import quantkeys as qk

_NEEDS_TRANSFORMERS = {"cpu", "xpu-sim", "triton-interpret", "cuda", "interop"}
if os.environ.get("QMOE_TEST_CONFIG") in _NEEDS_TRANSFORMERS:
    import transformers  # noqa: F401  (these configurations install it: a missing one must fail)
else:
    pytest.importorskip("transformers")

from moe_oracle import Platform  # noqa: E402
from moe_oracle.demo import DEMO_FORMATS, build_demo_model, demo_tokens, rel_err, top1_agreement  # noqa: E402
from moe_oracle.hf import (  # noqa: E402
    IntegrationError,
    QuantizedMoEBlock,
    export_quantized_checkpoint,
    load_dequantized_model,
    load_quantized_model,
    swap_moe_blocks,
)

FORMATS = list(DEMO_FORMATS)
# scheme -> (bound per MoE layer vs transformers' float32 experts on the dequantized weights, same
# inputs and routing; bound on the logits vs the bf16 model). Layer bounds: bf16 rounding of the
# GEMM inputs and output (< 1%) plus the scheme's activation quantization where it has one
# (fp8 e4m3 on both GEMM inputs: ~3% each; int8 per token: ~1%; MXFP8: ~3% each, coarser scales).
# Logit bounds: measured quantization error on this model (fp8_block 6.0%, int4 17%, int8 3.7%,
# mxfp8 8.0%, mxfp4 14.5% with the reference backend) times about 1.5, for kernel-to-kernel
# rounding differences that can flip a near-tie of the router.
# Weight-only layer bounds allow 2.5%: the Triton interpreter truncates fp32 -> bf16 (2^-8 relative
# per rounding instead of 2^-9); measured 0.2% (reference), 0.4% (xpu emulation), 0.6-1.4% (interpreter).
BOUNDS = {
    "fp8_block": (0.07, 0.10),
    "int4_w4a16": (0.025, 0.26),
    "int8_w8a8": (0.035, 0.07),
    "mxfp8": (0.09, 0.13),
    "mxfp4_w4a16": (0.025, 0.22),
}
# Zeroing the experts moves the logits by ~52%: far above every logit bound.
EXPERTS_MATTER = 0.45


@pytest.fixture(scope="module")
def bf16_model():
    return build_demo_model(seed=0)


@pytest.fixture(scope="module")
def checkpoints(bf16_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {s: export_quantized_checkpoint(bf16_model, root / s, scheme=s) for s in FORMATS}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check(model, checkpoint, scheme, *, platform, expected_backend):
    """Both comparisons of the module docstring for one quantized checkpoint."""
    dev = _device()
    qmodel = load_quantized_model(checkpoint, platform=platform, device=dev)
    blocks = [layer.mlp for layer in qmodel.model.layers]
    assert all(isinstance(b, QuantizedMoEBlock) for b in blocks)
    if expected_backend is not None:
        assert {b.backend for b in blocks} == {expected_backend}
    # routers stay full precision: the bf16 model's own router weights, bit for bit
    for b, layer in zip(blocks, model.model.layers, strict=True):
        assert b.router.weight.dtype == torch.bfloat16
        assert torch.equal(b.router.weight.cpu(), layer.mlp.gate.weight)
    dequant = load_dequantized_model(checkpoint, dtype=torch.float32).to(dev)
    captured = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, (i[0], o)))
             for k, b in enumerate(blocks)]
    tokens = demo_tokens(vocab_size=model.config.vocab_size).to(dev)
    with torch.inference_mode():
        logits = qmodel(tokens).logits.float()
        for k, b in enumerate(blocks):
            x, y = captured[k]
            flat = x.reshape(-1, x.shape[-1])
            topk = b.moe.route(b.router(flat)[0])
            experts = dequant.model.layers[k].mlp.experts
            expected = experts(flat.float(), topk.ids.long(), topk.weights.float())
            layer_bound = BOUNDS[scheme][0]
            print(f"[{scheme} layer {k} rel {rel_err(y.reshape(expected.shape), expected):.4f}]")
            assert rel_err(y.reshape(expected.shape), expected) < layer_bound, f"layer {k}"
    for h in hooks:
        h.remove()
    with torch.inference_mode():
        ref = model.to(dev)(tokens).logits.float()
    err = rel_err(logits, ref)
    print(f"[{scheme} logits {err:.4f}]")
    assert err < BOUNDS[scheme][1]
    # a random-weight model has near-tied logits: int4 flips ~20% of the argmaxes at 14% logit error
    assert top1_agreement(logits, ref) >= 0.6
    model.to("cpu")
    return err


def test_experts_matter(bf16_model):
    zeroed = build_demo_model(seed=0)
    for layer in zeroed.model.layers:
        torch.nn.init.zeros_(layer.mlp.experts.down_proj)
    tokens = demo_tokens(vocab_size=bf16_model.config.vocab_size)
    with torch.inference_mode():
        ref, off = bf16_model(tokens).logits.float(), zeroed(tokens).logits.float()
    assert rel_err(off, ref) > EXPERTS_MATTER > max(b for _, b in BOUNDS.values())


@pytest.mark.parametrize("scheme", FORMATS)
def test_cpu_reference(bf16_model, checkpoints, scheme):
    _check(bf16_model, checkpoints[scheme], scheme, platform=Platform.parse("cpu"), expected_backend="reference")


XPU_SCHEMES = [s for s in FORMATS if qk.SCHEMES[s].support("xpu") is not None]


@pytest.mark.xpu_sim
@pytest.mark.parametrize("scheme", XPU_SCHEMES)
def test_xpu_sim(bf16_model, checkpoints, scheme):
    _check(bf16_model, checkpoints[scheme], scheme, platform=Platform.parse("xpu"), expected_backend="xpu")


TRITON_SCHEMES = [s for s in FORMATS if qk.SCHEMES[s].support("triton") is not None]


@pytest.mark.triton
@pytest.mark.parametrize("scheme", TRITON_SCHEMES)
def test_triton(bf16_model, checkpoints, scheme):
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    platform = Platform.detect() if torch.cuda.is_available() else Platform.parse("cuda:9.0")
    _check(bf16_model, checkpoints[scheme], scheme, platform=platform, expected_backend="triton")


# -- the checkpoint directories are real ------------------------------------------------------------


@pytest.mark.parametrize("scheme", FORMATS)
def test_checkpoint_directory_is_real(checkpoints, scheme):
    path = checkpoints[scheme]
    config = json.loads((path / "config.json").read_text())
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert config["model_type"] == "qwen3_moe" and "quantization_config" in config
    assert len(set(index["weight_map"].values())) == 2  # sharded
    parsed = qk.parse_quant_config(config)
    assert qk.SCHEMES[scheme].serves(*parsed.keys_for("model.layers.1.mlp.experts.3.down_proj"))
    for dense in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.gate", "lm_head"):
        assert parsed.resolve(dense) is None, dense
    assert "model.layers.0.mlp.gate.weight" in index["weight_map"]


# -- Mixtral ---------------------------------------------------------------------------------------


def _tiny_mixtral():
    from transformers import AutoModelForCausalLM, MixtralConfig

    config = MixtralConfig(vocab_size=256, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=128, initializer_range=0.06)
    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("scheme", ["fp8_block", "int4_w4a16"])
def test_mixtral_checkpoint_uses_mixtral_names_and_runs(tmp_path, scheme):
    model = _tiny_mixtral()
    path = export_quantized_checkpoint(model, tmp_path / scheme, scheme=scheme)
    names = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(n.startswith("model.layers.0.block_sparse_moe.experts.0.w1.") for n in names)
    assert "model.layers.0.block_sparse_moe.gate.weight" in names  # the real checkpoint name of the router
    qmodel = load_quantized_model(path, platform=Platform.parse("cpu"))
    tokens = demo_tokens(vocab_size=256)
    with torch.inference_mode():
        got, ref = qmodel(tokens).logits.float(), model(tokens).logits.float()
    assert rel_err(got, ref) < BOUNDS[scheme][1]


def test_swap_into_a_model_you_built(bf16_model, checkpoints):
    model = build_demo_model(seed=0)
    chosen = swap_moe_blocks(model, checkpoints["int8_w8a8"], platform=Platform.parse("cpu"))
    assert chosen == {0: "reference", 1: "reference"}
    assert not any("experts" in n for n, _ in model.named_parameters())  # dense experts released


def test_loading_builds_the_dense_experts_on_meta_only(bf16_model, checkpoints, monkeypatch):
    """load_quantized_model never allocates the dense experts (a 30B model's would not fit), and gives
    exactly the model one gets by swapping the blocks of a fully built bf16 model."""
    from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen

    devices = []
    init = qwen.Qwen3MoeExperts.__init__

    def recording_init(self, config):
        init(self, config)
        devices.append(self.gate_up_proj.device.type)

    monkeypatch.setattr(qwen.Qwen3MoeExperts, "__init__", recording_init)
    loaded = load_quantized_model(checkpoints["int8_w8a8"], platform=Platform.parse("cpu"))
    assert devices == ["meta", "meta"]
    monkeypatch.undo()
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    swapped = build_demo_model(seed=0)
    swap_moe_blocks(swapped, checkpoints["int8_w8a8"], platform=Platform.parse("cpu"))
    tokens = demo_tokens(vocab_size=bf16_model.config.vocab_size)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(tokens).logits, swapped(tokens).logits, rtol=0, atol=0)


# -- bad input -------------------------------------------------------------------------------------


def test_unsupported_model_type(tmp_path, checkpoints):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoints["fp8_block"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["model_type"] = "llama"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(IntegrationError, match=r"llama.*supported: qwen3_moe, mixtral"):
        load_quantized_model(bad)


def test_mismatched_dimensions(checkpoints):
    from transformers import AutoModelForCausalLM

    from moe_oracle.demo import tiny_qwen3_moe_config

    config = tiny_qwen3_moe_config()
    config.num_experts = 4
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with pytest.raises(IntegrationError, match=r"num_experts: the checkpoint has 8, the model 4"):
        swap_moe_blocks(model, checkpoints["fp8_block"])


def _rewrite_index(path, edit):
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    edit(index["weight_map"])
    index_file.write_text(json.dumps(index))


def test_missing_dense_tensor_is_named(tmp_path, checkpoints):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoints["fp8_block"], bad)
    _rewrite_index(bad, lambda m: m.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(IntegrationError, match=r"lacks 1 tensor.*model\.layers\.1\.self_attn\.k_proj\.weight"):
        load_quantized_model(bad)


def test_unused_tensor_is_not_silently_skipped(tmp_path, checkpoints):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoints["fp8_block"], bad)
    _rewrite_index(bad, lambda m: m.__setitem__("model.layers.0.self_attn.q_proj.weight_scale_inv",
                                                m["model.layers.0.self_attn.q_proj.weight"]))
    with pytest.raises(IntegrationError, match=r"neither experts nor parameters.*q_proj\.weight_scale_inv"):
        load_quantized_model(bad)


def test_writer_refuses_a_config_that_would_lie(tmp_path, bf16_model):
    from weight_layouts.writer import DenseExperts, write_quantized_checkpoint

    with pytest.raises(ValueError, match=r"q_proj.*would read module.*as quantized; add its component to keep_dense"):
        write_quantized_checkpoint(
            tmp_path / "c", scheme="fp8_block", model_config={"model_type": "qwen3_moe"},
            experts={0: DenseExperts(w13=torch.randn(2, 256, 128), w2=torch.randn(2, 128, 128))},
            tensors={"model.layers.0.self_attn.q_proj.weight": torch.randn(128, 128)}, keep_dense=())


def test_exporting_a_quantized_model_is_refused(tmp_path, checkpoints):
    qmodel = load_quantized_model(checkpoints["mxfp8"], platform=Platform.parse("cpu"))
    with pytest.raises(IntegrationError, match="already quantized"):
        export_quantized_checkpoint(qmodel, tmp_path / "again", scheme="fp8_block")


# -- the demo (the README's first command) ---------------------------------------------------------


def test_demo_prints_the_table_ci_checks(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from moe_oracle.cli import main

    assert main(["demo", "--platform", "cpu", "--repeats", "1", "--keep", str(tmp_path / "ckpts")]) == 0
    text = capsys.readouterr().out
    log = tmp_path / "demo.log"
    log.write_text(text)
    spec = importlib.util.spec_from_file_location("check_demo_output",
                                                  Path(__file__).resolve().parent.parent / "ci" / "check_demo_output.py")
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    assert checker.main(str(log)) == 0
    assert "cpu: reference (ReferenceExperts) <- this machine" in text
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == sorted(FORMATS)


def test_demo_refuses_unknown_formats(capsys):
    from moe_oracle.cli import main

    assert main(["demo", "--formats", "fp8_block,nope"]) == 2
    assert "unknown demo format(s) ['nope']" in capsys.readouterr().err
