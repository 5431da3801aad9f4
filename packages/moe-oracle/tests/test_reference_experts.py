"""ReferenceExperts serves every (weight key, activation key) pair the spec gives it: built from
encoded weights, compared with float64 math on the dequantized weights."""

from __future__ import annotations

import pytest
import torch

import quantkeys as qk
from moe_oracle import MoEConfig, MoEQuantConfig, Platform
from moe_oracle.reference.experts import ReferenceExperts
from weight_layouts import ExpertWeights, StackedWeight, encode

E, TOP, H, INTER, M = 4, 2, 256, 128, 24


def weight_format(wk: qk.QuantKey | None, ak: qk.QuantKey | None) -> tuple[str, dict]:
    """The checkpoint format that stores weight key ``wk`` (independent of the loader's choice)."""
    if wk is None:
        return "dense", {}
    named = {qk.kFp8StaticTensorSym: "fp8-tensor", qk.kFp8StaticChannelSym: "fp8-channel",
             qk.kMxfp8Static: "mxfp8", qk.kMxfp4Static: "mxfp4"}
    if wk in named:
        return named[wk], {}
    if wk == qk.kFp8Static128BlockSym:
        return "fp8-block", {"block_size": (128, 128)}
    if wk == qk.kInt8StaticChannelSym and ak == qk.kInt8DynamicTokenSym:
        return "int8-channel", {}
    g = wk.group_shape.group_size
    return "gptq", {"bits": wk.dtype.bits, "group_size": g or -1, "sym": wk.symmetric}


PAIRS = [(s.name, wk, s.activation_key) for s in qk.SCHEMES.values() for wk in s.support("reference").weight_keys]


def dense64(x, w13, w2, ids, weights):
    out = torch.zeros(x.shape[0], H, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(TOP):
            e = int(ids[t, j])
            h = w13[e].double() @ x[t].double()
            a = torch.nn.functional.silu(h[:INTER]) * h[INTER:]
            out[t] += float(weights[t, j]) * (w2[e].double() @ a)
    return out


@pytest.mark.parametrize(("scheme", "wk", "ak"), PAIRS, ids=[f"{s}-{wk}" for s, wk, _ in PAIRS])
def test_reference_experts_every_pair(scheme, wk, ak):
    gen = torch.Generator().manual_seed(sum(map(ord, f"{scheme}{wk}")))
    w13 = torch.randn(E, 2 * INTER, H, generator=gen) / H**0.5
    w2 = torch.randn(E, H, INTER, generator=gen) / INTER**0.5
    x = torch.randn(M, H, generator=gen)
    # static activation scales calibrated like a checkpoint producer would: amax / 448 of each GEMM input
    h = torch.einsum("th,enh->etn", x, w13)
    a2_amax = (torch.nn.functional.silu(h[..., :INTER]) * h[..., INTER:]).abs().max()
    fmt, params = weight_format(wk, ak)
    w13_t, w2_t = encode(fmt, w13, **params), encode(fmt, w2, **params)
    weights = ExpertWeights(
        w13=StackedWeight(format=fmt, tensors=w13_t, params=params, rows=2 * INTER, cols=H),
        w2=StackedWeight(format=fmt, tensors=w2_t, params=params, rows=H, cols=INTER),
        weight_key=wk, activation_key=ak,
        a13_scale=(x.abs().max() / 448).reshape(1) if ak is not None and ak.is_static else None,
        a2_scale=(a2_amax / 448).reshape(1) if ak is not None and ak.is_static else None,
    )
    config = MoEConfig(num_experts=E, top_k=TOP, hidden_size=H, intermediate_size=INTER, in_dtype=torch.float32)
    experts = ReferenceExperts(config=config, quant=MoEQuantConfig.from_weights(weights), weights=weights,
                               platform=Platform.parse("cpu"))
    ids = torch.stack([torch.randperm(E, generator=gen)[:TOP] for _ in range(M)]).to(torch.int32)
    tw = torch.rand(M, TOP, generator=gen)
    out = experts.apply(hidden_states=x, topk_weights=tw, topk_ids=ids)
    ref = dense64(x, weights.w13.dequantize(), weights.w2.dequantize(), ids, tw)
    err = float((out.double() - ref).norm() / ref.norm())
    # Weights are exact here (the reference is built on the same dequantized weights), so the error
    # is float32 accumulation (< 1e-5) plus the activation quantization of the scheme: e4m3 has a
    # 2^-4 relative step (RMS ~2-3% after two GEMMs), MX e4m3 the same; int8 per token: step
    # amax/127, RMS ~(amax/127)/sqrt(12)/rms(x) ~ 0.8% per GEMM input, so < 2% for two.
    if ak is None:
        assert err < 1e-5
    else:
        bound = 0.02 if ak.dtype in (qk.QuantDType.INT8, qk.QuantDType.UINT8) else 0.06
        assert 1e-4 < err < bound, f"{scheme}: {err:.5f}"  # > 1e-4: the activations really were quantized
