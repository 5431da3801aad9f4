"""QuantizedMoE end to end from checkpoints written by weight-layouts' encoders, against float64
math on the dense weights the checkpoints were quantized from; bad input; the explain CLI."""

from __future__ import annotations

import pytest
import torch

import quantkeys as qk
from moe_oracle import MoEConfig, Platform, QuantizedMoE, make_kernel
from moe_oracle.cli import main
from weight_layouts import load_experts
from weight_layouts.writer import SCHEME_CHECKPOINTS, write_tiny_checkpoint

# Relative error of the layer output vs float64 math on the *dense* (unquantized) weights: the
# weight quantization error (see weight-layouts' loading bounds) plus the activation quantization
# of the scheme (fp8 e4m3 ~3%, int8 <1%), summed over two GEMMs with margin.
BOUND = {
    "unquantized": 0.01, "fp8_block": 0.08, "fp8_tensor_dynamic": 0.10, "fp8_tensor_static": 0.10, "fp8_channel": 0.08, "int8_w8a8": 0.03,
    "int4_w4a16": 0.25, "int4_w4a16_asym": 0.25, "int8_w8a16": 0.03, "int8_w8a16_asym": 0.03, "mxfp8": 0.10,
    "mxfp4_w4a16": 0.25,
}
E, K_TOP, H, I = 8, 2, 256, 128  # noqa: E741  (the papers' names)


def dense_moe64(x, w13, w2, logits, *, top_k, activation, w13_bias=None, w2_bias=None):
    """Plain float64: softmax top-k (renormalized), per token loop, silu or swigluoai."""
    x, w13, w2 = x.double(), w13.double(), w2.double()
    probs = torch.softmax(logits.double(), dim=-1)
    weights, ids = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    inter = w2.shape[-1]
    for t in range(x.shape[0]):
        for j in range(top_k):
            e = int(ids[t, j])
            h = w13[e] @ x[t] + (0 if w13_bias is None else w13_bias[e].double())
            gate, up = h[:inter], h[inter:]
            if activation == "swigluoai":
                gate = gate.clamp(max=7.0)
                up = up.clamp(-7.0, 7.0)
                a = (up + 1) * gate * torch.sigmoid(1.702 * gate)
            else:
                a = torch.nn.functional.silu(gate) * up
            y = w2[e] @ a + (0 if w2_bias is None else w2_bias[e].double())
            out[t] += weights[t, j] * y
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", list(SCHEME_CHECKPOINTS))
def test_module_matches_dense_math(tmp_path, scheme, dtype):
    ckpt = write_tiny_checkpoint(tmp_path / scheme, scheme=scheme, num_experts=E, top_k=K_TOP, hidden_size=H,
                                 intermediate_size=I, seed=11)
    module = QuantizedMoE.from_checkpoint(ckpt.path, 0, dtype=dtype, platform=Platform.parse("cpu"))
    assert module.backend == "reference"
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(33, H, generator=gen)
    logits = torch.randn(33, E, generator=gen)
    out = module(x.to(dtype), logits)
    assert out.dtype == dtype and out.shape == (33, H)
    act = "swigluoai" if scheme == "mxfp4_w4a16" else "silu"
    ref = dense_moe64(x.to(dtype).double(), ckpt.w13[0], ckpt.w2[0], logits, top_k=K_TOP, activation=act,
                      w13_bias=None if ckpt.w13_bias is None else ckpt.w13_bias[0],
                      w2_bias=None if ckpt.w2_bias is None else ckpt.w2_bias[0])
    err = float((out.double() - ref).norm() / ref.norm())
    bound = BOUND[scheme] + (0.01 if dtype == torch.bfloat16 else 0.0)  # bf16 output rounding 2^-9 rel
    assert err <= bound, f"{scheme}: relative error {err:.4f} > {bound}"


@pytest.fixture(scope="module")
def fp8_kernel(tmp_path_factory):
    ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("k") / "c", scheme="fp8_block", num_experts=E,
                                 hidden_size=H, intermediate_size=I)
    weights = load_experts(ckpt.path, 0)
    config = MoEConfig(num_experts=E, top_k=K_TOP, hidden_size=H, intermediate_size=I, in_dtype=torch.float32)
    return make_kernel(weights=weights, config=config, platform=Platform.parse("cpu"))


def _inputs(m=4, dtype=torch.float32):
    x = torch.randn(m, H, dtype=dtype)
    ids = torch.randint(0, E, (m, K_TOP), dtype=torch.int32)
    w = torch.rand(m, K_TOP)
    return x, w, ids


def test_kernel_selection_and_runtime_config_agree(fp8_kernel):
    assert fp8_kernel.selection.backend == "reference"
    assert fp8_kernel.experts.quant.weight_key == qk.kFp8Static128BlockSym
    assert fp8_kernel.experts.quant.activation_key == qk.kFp8Dynamic128Sym
    assert fp8_kernel.experts.weights.layout == "reference"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x, w, ids: (x[:, :100], w, ids), r"hidden_states must be \[M, 256\]"),
        (lambda x, w, ids: (x.double(), w, ids), "dtype torch.float64"),
        (lambda x, w, ids: (x, ids, w), "swapped"),
        (lambda x, w, ids: (x, w, ids.float()), "int32 or int64"),
        (lambda x, w, ids: (x, w, ids[:, :1]), r"topk_ids must be \[4, 2\]"),
        (lambda x, w, ids: (x, w[:3], ids), r"topk_weights must be \[4, 2\]"),
        (lambda x, w, ids: (x, w, ids + E), "holds expert id"),
    ],
)
def test_bad_inputs(fp8_kernel, mutate, match):
    x, w, ids = mutate(*_inputs())
    with pytest.raises(ValueError, match=match):
        fp8_kernel(hidden_states=x, topk_weights=w, topk_ids=ids)


def test_apply_is_keyword_only(fp8_kernel):
    x, w, ids = _inputs()
    with pytest.raises(TypeError):
        fp8_kernel.experts.apply(x, w, ids)  # type: ignore[misc]


def test_empty_batch_and_padding_rows(fp8_kernel):
    x, w, ids = _inputs(m=0)
    assert fp8_kernel(hidden_states=x, topk_weights=w, topk_ids=ids).shape == (0, H)
    x, w, ids = _inputs(m=3)
    ids[1] = -1
    out = fp8_kernel(hidden_states=x, topk_weights=w, topk_ids=ids)
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()


def test_weights_that_do_not_match_the_config_fail_at_build(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="int4_w4a16", num_experts=E, hidden_size=H,
                                 intermediate_size=I)
    weights = load_experts(ckpt.path, 0)
    wrong = MoEConfig(num_experts=E, top_k=K_TOP, hidden_size=H, intermediate_size=2 * I)
    with pytest.raises(ValueError, match="intermediate 128"):
        make_kernel(weights=weights, config=wrong, platform=Platform.parse("cpu"))
    ep = MoEConfig(num_experts=2 * E, top_k=K_TOP, hidden_size=H, intermediate_size=I, ep_size=2, ep_rank=1)
    kernel = make_kernel(weights=weights, config=ep, platform=Platform.parse("cpu"))
    x = torch.randn(5, H, dtype=torch.bfloat16)
    ids = torch.tensor([[0, 9]] * 5, dtype=torch.int32)  # rank 1 holds experts 8..15: expert 0 contributes nothing here
    w = torch.ones(5, 2)
    out = kernel(hidden_states=x, topk_weights=w, topk_ids=ids)
    single = kernel(hidden_states=x, topk_weights=torch.tensor([[0.0, 1.0]] * 5), topk_ids=ids)
    torch.testing.assert_close(out, single, rtol=0, atol=0)


def test_explain_cli_embedded(capsys):
    assert main(["explain", "--scheme", "fp8_block", "--platform", "all"]) == 0
    out = capsys.readouterr().out
    assert "weight fp8e4m3 static 128x128 sym (kFp8Static128BlockSym)" in out
    assert "cuda:9.0: reference (ReferenceExperts)" in out
    assert "rejected triton (-): missing dependency" in out
    assert "xpu: reference" in out and "rejected xpu (-): missing dependency" in out


def test_explain_cli_checkpoint_and_errors(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "c", scheme="mxfp4_w4a16", num_experts=4, hidden_size=64,
                                 intermediate_size=64, num_layers=3)
    assert main(["explain", str(ckpt.path), "--platform", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "experts of layers 0-2: weight fp4e2m1 static 1x32 e8m0 sym (kMxfp4Static), activation none" in out
    assert "activation swigluoai" in out
    assert main(["explain", str(ckpt.path), "--platform", "cpu", "--backend", "marlin"]) == 0
    assert "unknown backend 'marlin'" in capsys.readouterr().out
    assert main(["explain", "--platform", "tpu"]) == 2
    assert "unknown platform 'tpu'" in capsys.readouterr().err


def test_experts_take_fewer_slots_than_top_k(fp8_kernel):
    """Rows of one slot each (what the all-to-all dispatch hands the experts), summed per token, are
    the layer's output on the same routing; more slots than top_k or mismatched shapes are refused."""
    x, w, ids = _inputs(m=5)
    ids[2, 1] = -1  # a padding slot: its row is all zero
    whole = fp8_kernel(hidden_states=x, topk_weights=w, topk_ids=ids)
    rows = fp8_kernel.experts.apply(hidden_states=x.repeat_interleave(K_TOP, dim=0), topk_weights=w.reshape(-1, 1),
                                    topk_ids=ids.reshape(-1, 1))
    assert torch.all(rows.reshape(5, K_TOP, H)[2, 1] == 0)
    # float32 throughout: the per-slot products are the same; only the order of the slot sum differs
    torch.testing.assert_close(rows.reshape(5, K_TOP, H).sum(dim=1), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"1 <= S <= top_k = 2"):
        fp8_kernel.experts.apply(hidden_states=x, topk_weights=torch.cat([w, w[:, :1]], 1),
                                 topk_ids=torch.cat([ids, ids[:, :1]], 1))
    with pytest.raises(ValueError, match="same shape"):
        fp8_kernel.experts.apply(hidden_states=x, topk_weights=w[:, :1], topk_ids=ids)
