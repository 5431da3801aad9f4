"""reference_moe_forward against a plain float64 loop over tokens and slots.

The oracle below loops over (token, slot), uses float64 matrix-vector products, float64
activation formulas, and its own float64 fake quantization written from the contracts
(scale = absmax / 448, e4m3 rounding, int8 round-half-even, E8M0 exponent rule). Errors are
measured as the relative Frobenius norm ``||out - ref|| / ||ref||``.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import quantkeys as qk
from moe_oracle.activations import Activation
from moe_oracle.reference import reference_moe_forward
from quantkeys import Granularity, QuantDType, QuantKey

ALL_ACTS = list(Activation)


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


# ---- plain float64 oracle --------------------------------------------------------------------------
def act64(act: Activation, h: torch.Tensor) -> torch.Tensor:
    sig = lambda v: 1.0 / (1.0 + torch.exp(-v))  # noqa: E731
    gelu = lambda v: 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))  # noqa: E731
    if act is Activation.RELU2:
        return torch.where(h > 0, h * h, torch.zeros_like(h))
    if act is Activation.SILU_NO_MUL:
        return h * sig(h)
    if act is Activation.GELU_NO_MUL:
        return gelu(h)
    n = h.shape[-1] // 2
    g, up = h[..., :n], h[..., n:]
    if act is Activation.SILU:
        return g * sig(g) * up
    if act is Activation.GELU:
        return gelu(g) * up
    if act is Activation.GELU_TANH:
        return 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g**3))) * up
    g = torch.minimum(g, torch.full_like(g, 7.0))
    up = torch.clamp(up, -7.0, 7.0)
    return (up + 1.0) * g * sig(1.702 * g)


def _rne(v: torch.Tensor) -> torch.Tensor:
    f = torch.floor(v)
    d = v - f
    return f + ((d > 0.5) | ((d == 0.5) & (torch.remainder(f, 2) == 1))).to(v.dtype)


def _e4m3(v: torch.Tensor) -> torch.Tensor:
    a = v.abs()
    _, ex = torch.frexp(a)
    e = torch.where(a > 0, ex.to(torch.float64) - 1, torch.full_like(a, -6.0)).clamp(min=-6)
    step = torch.pow(2.0, e - 3)
    return torch.sign(v) * _rne(a / step) * step


def fake_quant64(x: torch.Tensor, key: QuantKey, static_scale: float | None) -> torch.Tensor:
    """Quantize-dequantize float64 rows [R, K] following the activation-quant contracts."""
    r, k = x.shape
    gran = key.group_shape.granularity
    if gran is Granularity.TENSOR:
        g = x.reshape(1, 1, r * k)
    else:
        size = key.group_shape.cols if gran is Granularity.GROUP else k
        g = x.reshape(r, k // size, size)
    if key.scale.dtype is QuantDType.E8M0:  # MX
        amax = g.abs().amax(dim=-1, keepdim=True)
        _, ex = torch.frexp(amax)
        e = torch.where(amax > 0, ex.to(torch.float64) - 1 - 8, torch.full_like(amax, -127.0)).clamp(-127, 127)
        p = torch.pow(2.0, e)
        return (_e4m3((g / p).clamp(-448, 448)) * p).reshape(r, k)
    if not key.symmetric:  # uint8 asym (vLLM azp in the int8 domain)
        vmax, vmin = g.amax(dim=-1, keepdim=True), g.amin(dim=-1, keepdim=True)
        s = (vmax - vmin).clamp(min=1e-10) / 255.0
        azp = _rne(-128.0 - vmin / s)
        q = (_rne(g / s) + azp).clamp(-128, 127)
        return ((q - azp) * s).reshape(r, k)
    if static_scale is not None:
        s = torch.full((1, 1, 1), static_scale, dtype=torch.float64)
    else:
        s = g.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / (448.0 if key.dtype is QuantDType.FP8_E4M3 else 127.0)
    if key.dtype is QuantDType.FP8_E4M3:
        return (_e4m3((g / s).clamp(-448, 448)) * s).reshape(r, k)
    return (_rne(g / s).clamp(-128, 127) * s).reshape(r, k)  # int8 sym


def loop_reference(
    *, hidden, w13, w2, tw, ids, act, a13_key=None, a2_key=None, s13=None, s2=None, b13=None, b2=None, emap=None
) -> torch.Tensor:
    m, h = hidden.shape
    x = hidden.to(torch.float64)
    if a13_key is not None:
        x = fake_quant64(x, a13_key, s13)
    rows = []
    for t in range(m):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e < 0:
                continue
            local = int(emap[e]) if emap is not None else e
            if local < 0:
                continue
            rows.append((t, j, local))
    acts = []
    for t, _, local in rows:
        pre = w13[local].to(torch.float64) @ x[t]
        if b13 is not None:
            pre = pre + b13[local].to(torch.float64)
        acts.append(act64(act, pre))
    inter = w2.shape[2]
    a = torch.stack(acts) if acts else torch.zeros(0, inter, dtype=torch.float64)
    if a2_key is not None and acts:
        a = fake_quant64(a, a2_key, s2)
    out = torch.zeros(m, h, dtype=torch.float64)
    for r, (t, j, local) in enumerate(rows):
        y = w2[local].to(torch.float64) @ a[r]
        if b2 is not None:
            y = y + b2[local].to(torch.float64)
        out[t] += float(tw[t, j]) * y
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.to(torch.float64) - ref).norm() / ref.norm())


def make_problem(dims, act, *, bias=False, seed=0, dtype=torch.float32):
    """Random problem for dims = (M, H, I, E, k), never zeros; distinct experts per token."""
    m, h, i, e, k = dims
    g = _gen(m, h, i, e, k, act.value, bias, seed)
    n1 = 2 * i if act.is_gated else i
    hidden = torch.randn(m, h, generator=g).to(dtype)
    w13 = (torch.randn(e, n1, h, generator=g) / math.sqrt(h)).to(dtype)
    w2 = (torch.randn(e, h, i, generator=g) / math.sqrt(i)).to(dtype)
    tw = torch.rand(m, k, generator=g) + 0.1
    ids = torch.rand(m, e, generator=g).argsort(dim=1)[:, :k].to(torch.int32)  # distinct experts per token
    b13 = (torch.randn(e, n1, generator=g) * 0.5) if bias else None
    b2 = (torch.randn(e, h, generator=g) * 0.5) if bias else None
    return dict(hidden=hidden, w13=w13, w2=w2, tw=tw, ids=ids, b13=b13, b2=b2)


def run_lib(p, act, **kw):
    return reference_moe_forward(
        hidden_states=p["hidden"], w13=p["w13"], w2=p["w2"], topk_weights=p["tw"], topk_ids=p["ids"],
        activation=act, w13_bias=p["b13"], w2_bias=p["b2"], **kw,
    )  # fmt: skip


# ---- unquantized ---------------------------------------------------------------------------------
# (M, H, I, E, k, bias)
SHAPES = [(1, 64, 64, 4, 2, False), (7, 96, 128, 8, 2, True), (33, 128, 96, 8, 4, False), (50, 256, 256, 16, 3, True)]


@pytest.mark.parametrize("act", ALL_ACTS, ids=lambda a: a.value)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}-H{}-I{}-E{}-k{}-bias{}".format(*s))
def test_unquantized_matches_float64_loop(act, shape):
    m, h, i, e, k, bias = shape
    p = make_problem((m, h, i, e, k), act, bias=bias)
    out = run_lib(p, act)
    assert out.shape == (m, h) and out.dtype == torch.float32
    ref = loop_reference(
        hidden=p["hidden"], w13=p["w13"], w2=p["w2"], tw=p["tw"], ids=p["ids"], act=act, b13=p["b13"], b2=p["b2"]
    )
    # Bound: float32 compute (u = 6e-8). Each output sums k * I products of GEMM2 terms built from
    # H-long GEMM1 dot products; rounding errors grow like sqrt(n) u ~ 1e-6 for n <= 1024 (worst
    # case n u ~ 6e-5 is never approached by random signs). 1e-5 leaves 10x headroom.
    assert rel_err(out, ref) <= 1e-5
    out64 = run_lib(p, act, compute_dtype=torch.float64, out_dtype=torch.float64)
    # Bound: float64 compute and output, the same argument with u = 1.1e-16: 1e-12.
    assert rel_err(out64, ref) <= 1e-12


def test_out_dtype_and_low_precision_inputs():
    act = Activation.SILU
    p = make_problem((17, 128, 64, 8, 2), act, dtype=torch.bfloat16, bias=True)
    out = run_lib(p, act)
    assert out.dtype == torch.bfloat16  # default: hidden_states.dtype
    ref = loop_reference(
        hidden=p["hidden"], w13=p["w13"], w2=p["w2"], tw=p["tw"], ids=p["ids"], act=act, b13=p["b13"], b2=p["b2"]
    )
    # Bound: float32 compute on the bf16 values (1e-5, as above) plus one rounding of each output to
    # bfloat16 (<= 2^-9 relative): 2^-9 + 1e-5 < 2.1e-3.
    assert rel_err(out, ref) <= 2.1e-3
    out32 = run_lib(p, act, out_dtype=torch.float32)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) <= 1e-5  # no output rounding: 1e-5


# ---- quantized activations -------------------------------------------------------------------------
QUANT_CASES = [
    ("fp8-tensor-dynamic", qk.kFp8DynamicTensorSym, qk.kFp8DynamicTensorSym),
    ("fp8-tensor-static", qk.kFp8StaticTensorSym, qk.kFp8StaticTensorSym),
    ("fp8-token", qk.kFp8DynamicTokenSym, qk.kFp8DynamicTokenSym),
    ("fp8-1x128", qk.kFp8Dynamic128Sym, qk.kFp8Dynamic128Sym),
    ("fp8-1x32", qk.kFp8Dynamic32Sym, qk.kFp8Dynamic32Sym),
    ("int8-token", qk.kInt8DynamicTokenSym, qk.kInt8DynamicTokenSym),
    ("int8-token-asym", qk.kInt8DynamicTokenAsym, qk.kInt8DynamicTokenAsym),
    ("mxfp8", qk.kMxfp8Dynamic, qk.kMxfp8Dynamic),
    ("a13-only-fp8-1x128", qk.kFp8Dynamic128Sym, None),
    ("a2-only-mxfp8", None, qk.kMxfp8Dynamic),
]
QUANT_SHAPES = [(1, 128, 128, 4, 2, False), (37, 256, 128, 8, 3, True), (19, 96, 64, 6, 2, True)]


def _fits(key, h, i):
    if key is None or key.group_shape.granularity is not Granularity.GROUP:
        return True
    return h % key.group_shape.cols == 0 and i % key.group_shape.cols == 0


QUANT_PARAMS = [
    pytest.param(case, act, shape, id=f"{case[0]}-{act.value}-M{shape[0]}-H{shape[1]}-I{shape[2]}")
    for case in QUANT_CASES
    for act in (Activation.SILU, Activation.SWIGLUOAI, Activation.RELU2)
    for shape in QUANT_SHAPES
    if _fits(case[1], shape[1], shape[2]) and _fits(case[2], shape[1], shape[2])
]


@pytest.mark.parametrize(("case", "act", "shape"), QUANT_PARAMS)
def test_quantized_matches_float64_loop(case, act, shape):
    _, a13, a2 = case
    m, h, i, e, k, bias = shape
    p = make_problem((m, h, i, e, k), act, bias=bias, seed=1)
    kw = {}
    s13 = s2 = None
    if a13 is not None and a13.is_static:
        s13 = float(p["hidden"].abs().max()) / 448.0 * 1.25  # a calibrated scale with headroom
        kw["a13_static_scale"] = s13
    if a2 is not None and a2.is_static:
        s2 = 0.05  # covers |act| <= 22 (relu2 of biased GEMM1 outputs included)
        kw["a2_static_scale"] = s2
    out = run_lib(p, act, a13_key=a13, a2_key=a2, **kw)
    common = dict(
        hidden=p["hidden"], w13=p["w13"], w2=p["w2"], tw=p["tw"], ids=p["ids"], act=act, b13=p["b13"], b2=p["b2"]
    )
    ref = loop_reference(**common, a13_key=a13, a2_key=a2, s13=s13, s2=s2)
    # Bound: both sides apply the same quantization contract; they differ only where a float32 vs
    # float64 pre-quantization value (relative difference ~1e-6) straddles a rounding boundary,
    # which flips one code by one step (<= 2^-3 of that element) for a ~1e-5 fraction of elements;
    # spread over the output this is far below 2e-3 (plus the 1e-5 float32 compute error).
    assert rel_err(out, ref) <= 2e-3
    # The quantization really happened: 8-bit activations move the result by ~1e-2 relative
    # (e4m3 rounds to 2^-4 relative, int8 to half a code of absmax/127); 1e-3 is a safe floor.
    unquantized = loop_reference(**common)
    assert rel_err(out, unquantized) >= 1e-3
    assert rel_err(out, unquantized) <= 0.1  # ...and stays an 8-bit-sized perturbation


# ---- expert parallelism, padding, empty batches -----------------------------------------------------
@pytest.mark.parametrize("act", [Activation.SILU, Activation.GELU_NO_MUL], ids=lambda a: a.value)
@pytest.mark.parametrize("keys", [(None, None), (qk.kFp8DynamicTokenSym, qk.kFp8DynamicTokenSym)], ids=["bf", "fp8"])
def test_expert_map_half_local(act, keys):
    e_global, m, h, i, k = 8, 29, 64, 96, 2
    p = make_problem((m, h, i, e_global, k), act, bias=True, seed=2)
    p["ids"][3] = torch.tensor([1, 2], dtype=torch.int32)  # token 3 only hits experts of rank 0
    a13, a2 = keys
    outs = []
    for rank in range(2):
        mine = torch.arange(rank * 4, rank * 4 + 4)  # rank r holds experts 4r..4r+3
        emap = torch.full((e_global,), -1, dtype=torch.int32)
        emap[mine] = torch.arange(4, dtype=torch.int32)
        local = dict(p, w13=p["w13"][mine], w2=p["w2"][mine], b13=p["b13"][mine], b2=p["b2"][mine])
        out = run_lib(local, act, expert_map=emap, a13_key=a13, a2_key=a2)
        ref = loop_reference(
            hidden=p["hidden"], w13=local["w13"], w2=local["w2"], tw=p["tw"], ids=p["ids"], act=act,
            b13=local["b13"], b2=local["b2"], emap=emap, a13_key=a13, a2_key=a2,
        )  # fmt: skip
        # Bound: 1e-5 unquantized (float32 compute, see above); 2e-3 quantized (code flips, see above).
        assert rel_err(out, ref) <= (1e-5 if a13 is None else 2e-3)
        outs.append(out)
    assert torch.equal(outs[1][3], torch.zeros(h))  # no expert of token 3 on rank 1: exact zeros
    # The two ranks' partial outputs add up to the unsharded layer (the EP all-reduce).
    full = run_lib(p, act, a13_key=a13, a2_key=a2)
    # Bound: per-token/row-wise quantization is rank-independent, so only float32 summation order
    # differs: 1e-5 as for any float32 result.
    assert rel_err(outs[0] + outs[1], full.to(torch.float64)) <= 1e-5


@pytest.mark.parametrize(
    "a13", [None, qk.kFp8DynamicTensorSym, qk.kMxfp8Dynamic], ids=lambda k: k.name if k else "none"
)
def test_padding_rows_are_exact_zeros(a13):
    act = Activation.SWIGLUOAI
    p = make_problem((12, 64, 64, 4, 2), act, bias=True, seed=3)
    pad = [0, 5, 11]
    p["ids"][pad] = -1
    p["tw"][pad] = float("nan")  # weights of padding slots must never be read
    p["ids"][2, 1] = -1  # a single padding slot in a live row
    out = run_lib(p, act, a13_key=a13, a2_key=a13)
    assert torch.equal(out[pad], torch.zeros(len(pad), 64))
    assert bool(torch.isfinite(out).all())
    ref = loop_reference(hidden=p["hidden"], w13=p["w13"], w2=p["w2"], tw=p["tw"], ids=p["ids"], act=act,
                         b13=p["b13"], b2=p["b2"], a13_key=a13, a2_key=a13)  # fmt: skip
    # Bound: 1e-5 unquantized, 2e-3 quantized (see test_quantized_matches_float64_loop).
    assert rel_err(out, ref) <= (1e-5 if a13 is None else 2e-3)


def test_all_padding_and_no_local_expert():
    act = Activation.SILU
    p = make_problem((4, 64, 64, 4, 2), act)
    p["ids"][:] = -1
    assert torch.equal(run_lib(p, act, a2_key=qk.kFp8DynamicTensorSym), torch.zeros(4, 64))
    p = make_problem((4, 64, 64, 4, 2), act)
    emap = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3])  # ids 0..3 are all remote
    assert torch.equal(run_lib(p, act, expert_map=emap), torch.zeros(4, 64))


@pytest.mark.parametrize(
    ("a13", "kw"),
    [
        (None, {}),
        (qk.kFp8DynamicTensorSym, {}),
        (qk.kFp8StaticTensorSym, {"a13_static_scale": 0.1}),
        (qk.kMxfp8Dynamic, {}),
    ],
    ids=["none", "fp8-tensor", "fp8-static", "mx"],
)
def test_empty_batch(a13, kw):
    act = Activation.SILU
    p = make_problem((3, 64, 64, 4, 2), act)
    out = reference_moe_forward(
        hidden_states=torch.empty(0, 64, dtype=torch.bfloat16), w13=p["w13"], w2=p["w2"],
        topk_weights=torch.empty(0, 2), topk_ids=torch.empty(0, 2, dtype=torch.int64),
        activation=act, a13_key=a13, a2_key=a13, a2_static_scale=kw.get("a13_static_scale"), **kw,
    )  # fmt: skip
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16


def test_large_batch_against_dense_float64():
    # M in the thousands stays fast because tokens are grouped by expert. Oracle: every expert on
    # every token densely in float64, masked by the routing (a different algorithm from the loop).
    act = Activation.SILU
    m, h, i, e, k = 2048, 128, 128, 8, 2
    p = make_problem((m, h, i, e, k), act, bias=True, seed=4)
    out = run_lib(p, act)
    x = p["hidden"].to(torch.float64)
    ref = torch.zeros(m, h, dtype=torch.float64)
    for ex in range(e):
        y = (
            act64(act, x @ p["w13"][ex].to(torch.float64).T + p["b13"][ex]) @ p["w2"][ex].to(torch.float64).T
            + p["b2"][ex]
        )
        weight = (p["tw"].to(torch.float64) * (p["ids"] == ex)).sum(dim=1, keepdim=True)
        ref += weight * y
    # Bound: float32 compute, 1e-5 (see test_unquantized_matches_float64_loop).
    assert rel_err(out, ref) <= 1e-5


# ---- bad input -----------------------------------------------------------------------------------
def _base():
    act = Activation.SILU
    p = make_problem((5, 64, 32, 4, 2), act)
    return dict(
        hidden_states=p["hidden"], w13=p["w13"], w2=p["w2"], topk_weights=p["tw"], topk_ids=p["ids"], activation=act
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.update(topk_ids=torch.tensor([[0, 4]] * 5)), r"expert id 4, outside \[0, 4\)"),
        (
            lambda a: a.update(
                topk_ids=torch.tensor([[0, 9]] * 5), expert_map=torch.tensor([0, 1, 2, 3, -1, -1, -1, -1])
            ),
            r"expert id 9, outside \[0, 8\)",
        ),
        (lambda a: a.update(topk_ids=a["topk_ids"].float()), "topk_ids must have an integer dtype"),
        (lambda a: a.update(topk_ids=a["topk_ids"].bool()), "integer dtype"),
        (lambda a: a.update(topk_weights=a["topk_weights"][:, :1]), "same .M, k. shape"),
        (lambda a: a.update(topk_weights=a["topk_weights"].to(torch.int32)), "topk_weights must be a float"),
        (lambda a: a.update(topk_ids=a["topk_ids"][:3]), r"topk_ids must be \[M, k\] with M = 5"),
        (lambda a: a.update(hidden_states=torch.randn(5, 96)), "H = 96 but w13 .* has H = 64"),
        (lambda a: a.update(hidden_states=torch.ones(5, 64, dtype=torch.int32)), "hidden_states must be a dense float"),
        (lambda a: a.update(w13=a["w13"].to(torch.float8_e4m3fn)), "w13 must be a dense float"),
        (lambda a: a.update(w2=a["w2"][:, :, :16]), r"w2 must be \[E, H, I\] = \[4, 64, 32\]"),
        (lambda a: a.update(w13=a["w13"][:, :63]), "2I rows"),
        (lambda a: a.update(expert_map=torch.tensor([0, 1, 2])), "expert_map has 3 entries"),
        (lambda a: a.update(expert_map=torch.tensor([0, 1, 2, 7])), r"local index in \[0, 4\)"),
        (lambda a: a.update(expert_map=torch.tensor([0.0, 1, 2, 3])), "expert_map must have an integer dtype"),
        (lambda a: a.update(w13_bias=torch.zeros(4, 32)), r"w13_bias must be \[E, N\] = \[4, 64\]"),
        (lambda a: a.update(w2_bias=torch.zeros(4, 32)), r"w2_bias must be \[E, H\] = \[4, 64\]"),
        (lambda a: a.update(a13_key=qk.kFp8StaticTensorSym), "static_scale"),
        (lambda a: a.update(a13_static_scale=1.0), "a13_key is None"),
        (lambda a: a.update(a13_key=qk.kFp8StaticTensorSym, a13_static_scale=float("nan")), "finite and > 0"),
        (lambda a: a.update(a2_key=qk.kFp8Dynamic64Sym), "K = 32 is not divisible by the group size 64"),
        (lambda a: a.update(a13_key=qk.kMxfp4Dynamic), "kMxfp4Dynamic"),
        (lambda a: a.update(compute_dtype=torch.int32), "compute_dtype"),
    ],
)
def test_bad_input(change, match):
    args = _base()
    change(args)
    with pytest.raises(ValueError, match=match):
        reference_moe_forward(**args)


def test_keyword_only_and_activation_type():
    args = _base()
    with pytest.raises(TypeError):
        reference_moe_forward(*args.values())  # type: ignore[misc]
    with pytest.raises(TypeError, match="Activation"):
        reference_moe_forward(**dict(args, activation="silu"))
