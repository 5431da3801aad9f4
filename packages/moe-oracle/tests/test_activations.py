"""Expert activations against plain float64 formulas.

Error bounds use the unit roundoff u of the dtype the library computes in (float32 2^-24,
bfloat16 2^-9, float16 2^-11, float64 2^-53); each is justified next to its assertion.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from moe_oracle.activations import Activation, apply_activation

GATED = [Activation.SILU, Activation.GELU, Activation.GELU_TANH, Activation.SWIGLUOAI]
NON_GATED = [Activation.RELU2, Activation.SILU_NO_MUL, Activation.GELU_NO_MUL]
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-9}


# ---- plain float64 formulas --------------------------------------------------------------------
def _sigmoid(v: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def _gelu_erf(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))


def _gelu_tanh(v: torch.Tensor) -> torch.Tensor:
    return 0.5 * v * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))


def reference64(act: Activation, x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    x = x.to(torch.float64)
    if act is Activation.RELU2:
        return torch.where(x > 0, x * x, torch.zeros_like(x))
    if act is Activation.SILU_NO_MUL:
        return x * _sigmoid(x)
    if act is Activation.GELU_NO_MUL:
        return _gelu_erf(x)
    half = x.shape[-1] // 2
    g, up = x[..., :half], x[..., half:]
    if act is Activation.SILU:
        return g * _sigmoid(g) * up
    if act is Activation.GELU:
        return _gelu_erf(g) * up
    if act is Activation.GELU_TANH:
        return _gelu_tanh(g) * up
    g = torch.where(g > limit, torch.full_like(g, limit), g)
    up = torch.where(up > limit, torch.full_like(up, limit), torch.where(up < -limit, torch.full_like(up, -limit), up))
    return (up + 1.0) * g * _sigmoid(alpha * g)


def _abs_scale(act: Activation, x: torch.Tensor) -> torch.Tensor:
    """(1 + |gate|)(1 + |up|) for gated, (1 + |x|)^2 otherwise: the size of the terms involved."""
    x = x.to(torch.float64).abs()
    if act.is_gated:
        half = x.shape[-1] // 2
        return (1 + x[..., :half]) * (1 + x[..., half:])
    return (1 + x) ** 2


# ---- enum ----------------------------------------------------------------------------------------
def test_values_and_gating():
    assert {a.value for a in Activation} == {
        "silu", "gelu", "gelu_tanh", "swigluoai", "relu2", "silu_no_mul", "gelu_no_mul",
    }  # fmt: skip
    assert all(a.is_gated for a in GATED)
    assert not any(a.is_gated for a in NON_GATED)
    assert Activation("relu2_no_mul") is Activation.RELU2  # vLLM's spelling
    assert Activation("SiLU") is Activation.SILU
    assert Activation.SILU.output_size(256) == 128 and Activation.RELU2.output_size(256) == 256
    with pytest.raises(ValueError):
        Activation("swish")


# ---- numerics --------------------------------------------------------------------------------------
SHAPES = [(1, 64), (7, 96), (5, 3, 128), (33, 256)]  # leading dims x I


@pytest.mark.parametrize("act", GATED + NON_GATED, ids=lambda a: a.value)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_float64_formula(act, shape, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{act.value}{shape}{dtype}".encode()))
    width = shape[-1] * (2 if act.is_gated else 1)
    x = (torch.randn(*shape[:-1], width, generator=gen, dtype=torch.float64) * 4.0).to(
        dtype
    )  # |x| up to ~16: clamps hit
    before = x.clone()
    out = apply_activation(act, x)
    assert out.dtype == dtype and out.shape == (*shape[:-1], shape[-1])
    assert torch.equal(x, before), "input modified in place"
    ref = reference64(act, x)
    # Bound: the library computes in `dtype` with a handful (< 8) of correctly rounded operations
    # plus libm exp/erf/tanh (<= 2 ulp); errors scale with the operands (gelu's 1 + erf cancels, so
    # its absolute error is ~u * |gate|), hence |out - ref| <= 16 u (1 + |gate|)(1 + |up|).
    bound = 16 * UNIT_ROUNDOFF[dtype] * _abs_scale(act, x)
    err = (out.to(torch.float64) - ref).abs()
    assert bool((err <= bound).all()), f"max err {err.max():.3e}, max err/bound {(err / bound).max():.3f}"


@pytest.mark.parametrize("act", GATED + NON_GATED, ids=lambda a: a.value)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_inputs(act, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"low{act.value}{dtype}".encode()))
    width = 128 * (2 if act.is_gated else 1)
    x = (torch.randn(9, width, generator=gen) * 3.0).to(dtype)
    out = apply_activation(act, x)
    assert out.dtype == dtype
    ref = reference64(act, x)  # float64 of the very same low-precision input values
    # Bound: computed in `dtype`: at most ~6 roundings to u each, and swigluoai's sigmoid argument
    # alpha * gate (|.| <= 12) is rounded, which moves sigmoid by <= 12 u relative; so
    # |out - ref| <= 20 u |ref| + 16 u (1 + |gate|)(1 + |up|) (second term: gelu's cancellation).
    u = UNIT_ROUNDOFF[dtype]
    bound = 20 * u * ref.abs() + 16 * u * _abs_scale(act, x)
    err = (out.to(torch.float64) - ref).abs()
    assert bool((err <= bound).all()), f"max err/bound {(err / bound).max():.3f}"


def test_gate_is_first_half():
    gate = torch.linspace(-3, 3, 64, dtype=torch.float64).reshape(1, 64)
    x = torch.cat([gate, torch.ones_like(gate)], dim=-1)
    out = apply_activation(Activation.SILU, x)
    # Bound: float64 silu of the same values, <= 16 u relative (a few float64 roundings + exp).
    assert torch.allclose(out, gate * _sigmoid(gate), rtol=16 * 2.0**-53, atol=0)


def test_swigluoai_clamps():
    x = torch.tensor([[10.0, -3.0, -10.0, 10.0]], dtype=torch.float64)  # gate = [10, -3], up = [-10, 10]
    out = apply_activation(Activation.SWIGLUOAI, x)
    expected = torch.tensor(
        [(-7.0 + 1.0) * 7.0 / (1.0 + math.exp(-1.702 * 7.0)), (7.0 + 1.0) * -3.0 / (1.0 + math.exp(1.702 * 3.0))],
        dtype=torch.float64,
    )
    # Bound: float64 evaluation of the same expression: <= 8 u relative.
    assert torch.allclose(out[0], expected, rtol=8 * 2.0**-53, atol=0)
    out2 = apply_activation(Activation.SWIGLUOAI, x, swiglu_alpha=1.0, swiglu_limit=20.0)
    ref2 = reference64(Activation.SWIGLUOAI, x, alpha=1.0, limit=20.0)
    assert torch.allclose(out2, ref2, rtol=8 * 2.0**-53, atol=0)  # same bound, other parameters


def test_errors():
    with pytest.raises(ValueError, match="even last dimension"):
        apply_activation(Activation.SILU, torch.randn(2, 7))
    with pytest.raises(ValueError, match="floating-point"):
        apply_activation(Activation.SILU, torch.ones(2, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="Activation"):
        apply_activation("silu", torch.randn(2, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="swiglu_limit"):
        apply_activation(Activation.SWIGLUOAI, torch.randn(2, 8), swiglu_limit=0.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        apply_activation(Activation.RELU2, torch.tensor(1.0))
