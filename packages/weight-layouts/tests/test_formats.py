"""Checkpoint formats: property round trips with stated error bounds, bit-exact re-encoding, and
hand-made tensors that pin every format's bit order.

Error bounds (per element; ``s`` is the element's stored scale, ``ulp(s)`` the spacing of the
encoders' scale grid (the scale dtype's ulp, but at most 16 significant bits for integer formats
and 20 for FP8 ones), ``2**e`` the element's MX block scale):

* dense: exact (``decode(encode(w)) == w.to(dtype).float()``).
* fp8-tensor / fp8-channel / fp8-block: ``|err| <= max(2**-4 * |w|, 2**-10 * s) + max(0, |w| - 448 * s)``
  (round to nearest on E4M3: half an ulp with 3 mantissa bits, subnormal spacing ``2**-9``; plus
  the saturation of the block max after the scale was rounded down, checked to be below
  ``448 * ulp(s)``).
* int8-channel: ``|err| <= s/2 + 127 * ulp(s)``.
* gptq / ct-pack-quantized: ``|err| <= s/2 + Q * ulp(s)``, ``Q = 2**bits - 1`` (asymmetric) or
  ``2**(bits-1) - 1`` (symmetric): half a step, plus the clamp of the group's extreme after the
  encoder rounds the scale down by less than one ulp.
* mxfp8: ``|err| <= max(2**-4 * |w|, 2**-10 * 2**e)`` if ``|w| <= 448 * 2**e`` else
  ``|w| - 448 * 2**e`` (OCP saturation).
* mxfp4: ``|err| <= max(|w|, 2**e) / 4`` if ``|w| <= 6 * 2**e`` else ``|w| - 6 * 2**e``.

A slack of ``2**-20 * |w|`` (float32 rounding before the FP8 cast) is added where it can apply.
Re-encoding is checked bit for bit on every tensor: ``encode(decode(t)) == t`` for ``t = encode(w)``.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import weight_layouts.formats as wf
from weight_layouts.formats import (
    FORMATS,
    CheckpointFormat,
    DecodedShape,
    FormatError,
    decode,
    encode,
    get_format,
    register_format,
)

BUILTIN = (
    "dense",
    "fp8-tensor",
    "fp8-channel",
    "fp8-block",
    "int8-channel",
    "gptq",
    "ct-pack-quantized",
    "mxfp8",
    "mxfp4",
    "ct-mxfp4",
    "ct-fp8-block",
)
PROPS = settings(max_examples=30, deadline=None)
SCALE_DTYPES = [None, torch.float32, torch.bfloat16, torch.float16]
_INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def as_int32(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


def raw(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor (floats viewed as same-width ints), for bit-exact comparison."""
    if t.dtype.is_floating_point:
        return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, x in a.items():
        y = b[name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert torch.equal(raw(x), raw(y)), f"{name} differs after re-encoding"


def ulp(s: torch.Tensor, max_bits: int) -> torch.Tensor:
    """Spacing of the encoders' scale grid at each positive scale (float64): the larger of the
    dtype's own ulp and that of ``max_bits`` significant bits (16 for int codes, 20 for FP8)."""
    nxt = (s.view(_INT_OF[s.dtype]) + 1).view(s.dtype)
    dtype_ulp = nxt.to(torch.float64) - s.to(torch.float64)
    _, exp = torch.frexp(s.to(torch.float64))  # s in [2**(exp-1), 2**exp)
    return torch.maximum(dtype_ulp, torch.exp2((exp - max_bits).to(torch.float64)))


@st.composite
def weights(draw, *, n_mult: int = 1, k_mult: int = 1, max_n: int = 40, max_k: int = 96) -> torch.Tensor:
    """Random dense weights [*batch, N, K]: normal with a random scale, outliers, and some
    all-positive / all-negative / all-zero rows."""
    batch = draw(st.sampled_from([(), (1,), (2,), (2, 2)]))
    n = draw(st.integers(1, max(1, max_n // n_mult))) * n_mult
    k = draw(st.integers(1, max(1, max_k // k_mult))) * k_mult
    seed = draw(st.integers(0, 2**31 - 1))
    log_scale = draw(st.floats(-3.0, 1.5))
    p_outlier = draw(st.sampled_from([0.0, 0.01, 0.05]))
    special_rows = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16, torch.float16]))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*batch, n, k, generator=g, dtype=torch.float64) * 10.0**log_scale
    out = torch.rand(w.shape, generator=g, dtype=torch.float64) < p_outlier
    w = torch.where(out, w * (10 + 90 * torch.rand(w.shape, generator=g, dtype=torch.float64)), w)
    if special_rows and n >= 3:
        w[..., 0, :] = w[..., 0, :].abs()
        w[..., 1, :] = -w[..., 1, :].abs()
        w[..., 2, :] = 0.0
    return w.to(dtype)


def roundtrip(fmt: str, w: torch.Tensor, params: dict, **inputs) -> tuple[dict, torch.Tensor]:
    """Encode, decode, check shape/dtype, and check that re-encoding is bit exact."""
    t = encode(fmt, w, **params, **inputs)
    d = decode(fmt, t, **params)
    assert d.dtype == torch.float32
    assert d.shape == w.shape
    reinputs = {}
    if "g_idx" in inputs or "perm" in inputs:
        reinputs["g_idx"] = t["g_idx"] if fmt == "gptq" else t["weight_g_idx"]
    assert_bit_equal(t, encode(fmt, d, **params, **reinputs))
    return t, d


def assert_within(d: torch.Tensor, w: torch.Tensor, bound: torch.Tensor) -> None:
    err = (d.to(torch.float64) - w.to(torch.float64)).abs()
    excess = err - bound
    worst = int(excess.argmax()) if excess.numel() else 0
    assert bool((excess <= 0).all()), (
        f"error {err.flatten()[worst].item()} > bound {bound.flatten()[worst].item()} "
        f"at flat index {worst} (w={w.flatten()[worst].item()})"
    )


def fp8_bound(w: torch.Tensor, s_el: torch.Tensor) -> torch.Tensor:
    a = w.to(torch.float64).abs()
    s = s_el.to(torch.float64)
    saturation = (a - 448 * s).clamp(min=0)
    assert bool((saturation <= 448 * ulp(s_el, 20)).all()), "block max clipped by more than 448 ulps of its scale"
    return torch.maximum(2.0**-4 * a, 2.0**-10 * s) + saturation + 2.0**-20 * a


def int_bound(s_el: torch.Tensor, q: int) -> torch.Tensor:
    return s_el.to(torch.float64) / 2 + q * ulp(s_el, 16) + 1e-12 * s_el.to(torch.float64)


def mx_bound(w: torch.Tensor, scale_bytes: torch.Tensor, *, elem_max: float, rel: float, sub: float) -> torch.Tensor:
    p = torch.exp2(scale_bytes.to(torch.float64) - 127).repeat_interleave(32, dim=-1)
    a = w.to(torch.float64).abs()
    inside = torch.maximum(rel * a, sub * p) + 2.0**-20 * a
    return torch.where(a <= elem_max * p, inside, a - elem_max * p)


# -- registry and API -------------------------------------------------------------------------------


def test_builtin_formats_are_registered():
    assert set(BUILTIN) <= set(FORMATS)
    for name in BUILTIN:
        fmt = get_format(name)
        assert isinstance(fmt, CheckpointFormat)
        assert fmt.name == name
        assert fmt.tensor_names == fmt.required_tensors + fmt.optional_tensors


def test_formats_mapping_is_read_only():
    with pytest.raises(TypeError):
        FORMATS["x"] = FORMATS["dense"]  # type: ignore[index]


def test_get_format_unknown_lists_valid_names():
    with pytest.raises(KeyError) as info:
        get_format("gptq-v9")
    assert isinstance(info.value, FormatError)
    for name in BUILTIN:
        assert name in str(info.value)
    with pytest.raises(FormatError, match="valid formats"):
        encode("nope", torch.zeros(2, 2))


def test_register_format_adds_and_rejects_duplicates():
    class Scaled(CheckpointFormat):
        name = "test-scaled-dense"
        required_tensors = ("w",)

        def _encode(self, weight, p):
            return {"w": weight.float() * 2}

        def _validate(self, tensors, p):
            w = tensors["w"]
            return DecodedShape(tuple(w.shape[:-2]), w.shape[-2], w.shape[-1])

        def _decode(self, tensors, p, shape):
            return tensors["w"] / 2

    try:
        assert register_format(Scaled) is Scaled
        w = torch.randn(3, 4)
        assert torch.equal(decode("test-scaled-dense", encode("test-scaled-dense", w)), w)
        with pytest.raises(FormatError, match="already registered"):
            register_format(Scaled())
        with pytest.raises(FormatError, match="already registered"):
            register_format(get_format("gptq"))
    finally:
        from weight_layouts.formats import base

        base._REGISTRY.pop("test-scaled-dense", None)
    assert "test-scaled-dense" not in FORMATS


@pytest.mark.parametrize(
    ("fmt", "params", "names"),
    [
        ("dense", {}, {"weight"}),
        ("fp8-tensor", {}, {"weight", "weight_scale"}),
        ("fp8-block", {}, {"weight", "weight_scale_inv"}),
        ("gptq", {}, {"qweight", "qzeros", "scales", "g_idx"}),
        ("ct-pack-quantized", {}, {"weight_packed", "weight_scale", "weight_shape"}),
        ("ct-pack-quantized", {"symmetric": False}, {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point"}),
        ("mxfp8", {}, {"weight", "weight_scale"}),
        ("mxfp4", {}, {"blocks", "scales"}),
        ("ct-mxfp4", {}, {"weight_packed", "weight_scale"}),
        ("ct-fp8-block", {}, {"weight", "weight_scale"}),
    ],
)
def test_encoded_tensor_names_match_encode(fmt, params, names):
    assert set(get_format(fmt).encoded_tensor_names(**params)) == names
    assert set(encode(fmt, torch.randn(32, 128), **params)) == names


def test_params_dataclasses_are_keyword_only_with_documented_defaults():
    p = get_format("gptq").params()
    assert (p.bits, p.group_size, p.sym, p.desc_act, p.checkpoint_format) == (4, 128, True, False, "gptq")
    assert get_format("fp8-block").params().block_size == (128, 128)
    ct = get_format("ct-pack-quantized").params()
    assert (ct.bits, ct.group_size, ct.symmetric, ct.scale_dtype) == (4, 128, True, None)
    with pytest.raises(TypeError):
        wf.GptqParams(4)  # type: ignore[misc]
    assert dataclasses.is_dataclass(wf.GptqParams)


def test_default_scale_dtypes():
    w = torch.randn(8, 64)
    assert encode("fp8-tensor", w)["weight_scale"].dtype == torch.float32
    assert encode("fp8-tensor", w)["weight_scale"].shape == (1,)
    assert encode("fp8-channel", w)["weight_scale"].dtype == torch.float32
    assert encode("fp8-block", w)["weight_scale_inv"].dtype == torch.float32
    assert encode("int8-channel", w)["weight_scale"].dtype == torch.float32
    assert encode("gptq", w)["scales"].dtype == torch.float16
    assert encode("ct-pack-quantized", w)["weight_scale"].dtype == torch.bfloat16
    assert encode("ct-pack-quantized", w, scale_dtype=torch.float16)["weight_scale"].dtype == torch.float16


def test_validate_returns_the_dense_shape_and_checks_rows_cols():
    t = encode("gptq", torch.randn(2, 16, 64), group_size=32)
    fmt = get_format("gptq")
    assert fmt.validate(t, group_size=32) == DecodedShape((2,), 16, 64)
    assert fmt.validate(t, group_size=32, rows=16, cols=64).k == 64
    with pytest.raises(FormatError, match=r"K \(input features\) = 64, expected cols=32"):
        fmt.validate(t, group_size=32, cols=32)
    with pytest.raises(FormatError, match="rows=8"):
        decode("gptq", t, group_size=32, rows=8)


def test_encode_leaves_the_input_alone_and_accepts_grad_tensors():
    w = torch.randn(8, 64, requires_grad=True)
    before = w.detach().clone()
    for name in BUILTIN:
        t = encode(name, w)
        assert not any(v.requires_grad for v in t.values())
        out = decode(name, t)
        assert not out.requires_grad
    assert torch.equal(w.detach(), before)


def test_decode_returns_a_fresh_float32_tensor():
    w = torch.randn(4, 8)
    t = encode("dense", w)
    d = decode("dense", t)
    d.add_(1)
    assert torch.equal(t["weight"], w)


def test_int32_words_survive_negative_values_end_to_end():
    # A weight whose codes put 8..15 in the top nibble makes negative qweight words.
    w = torch.linspace(-1, 1, 64).repeat(8, 1)
    t = encode("gptq", w, group_size=-1)
    assert bool((t["qweight"] < 0).any())
    assert torch.equal(raw(encode("gptq", decode("gptq", t, group_size=-1), group_size=-1)["qweight"]), t["qweight"])


# -- property round trips ---------------------------------------------------------------------------


@PROPS
@given(w=weights(), dtype=st.sampled_from([None, torch.float32, torch.bfloat16, torch.float16]))
def test_dense_roundtrip_is_exact(w, dtype):
    if dtype is None:  # keeps the input dtype; re-encoding the float32 decode needs it named
        t = encode("dense", w)
        assert t["weight"].dtype == w.dtype
        d = decode("dense", t)
        assert_bit_equal(t, encode("dense", d, dtype=w.dtype))
    else:
        t, d = roundtrip("dense", w, {"dtype": dtype})
        assert t["weight"].dtype == dtype
    assert torch.equal(d, w.to(dtype or w.dtype).to(torch.float32))


@PROPS
@given(w=weights(), scale_dtype=st.sampled_from(SCALE_DTYPES))
def test_fp8_tensor_roundtrip(w, scale_dtype):
    params = {} if scale_dtype is None else {"scale_dtype": scale_dtype}
    t, d = roundtrip("fp8-tensor", w, params)
    s = t["weight_scale"]
    assert t["weight"].dtype == torch.float8_e4m3fn and t["weight"].shape == w.shape
    assert s.shape == (*w.shape[:-2], 1) and s.dtype == (scale_dtype or torch.float32)
    assert_within(d, w, fp8_bound(w, s.unsqueeze(-1).expand(w.shape)))


@PROPS
@given(w=weights(), scale_dtype=st.sampled_from(SCALE_DTYPES))
def test_fp8_channel_roundtrip(w, scale_dtype):
    params = {} if scale_dtype is None else {"scale_dtype": scale_dtype}
    t, d = roundtrip("fp8-channel", w, params)
    s = t["weight_scale"]
    assert s.shape == (*w.shape[:-1], 1)
    assert_within(d, w, fp8_bound(w, s.expand(w.shape)))


@PROPS
@given(
    w=weights(max_n=48, max_k=96),
    block=st.one_of(st.tuples(st.integers(1, 16), st.integers(1, 32)), st.just((128, 128))),
)
def test_fp8_block_roundtrip(w, block):
    params = {"block_size": block}
    t, d = roundtrip("fp8-block", w, params)
    n, k = w.shape[-2:]
    bn, bk = block
    s = t["weight_scale_inv"]
    assert s.dtype == torch.float32
    assert s.shape == (*w.shape[:-2], math.ceil(n / bn), math.ceil(k / bk))
    rows = torch.arange(n) // bn
    cols = torch.arange(k) // bk
    s_el = s[..., rows, :][..., :, cols]
    assert_within(d, w, fp8_bound(w, s_el))


@PROPS
@given(w=weights(), scale_dtype=st.sampled_from(SCALE_DTYPES))
def test_int8_channel_roundtrip(w, scale_dtype):
    params = {} if scale_dtype is None else {"scale_dtype": scale_dtype}
    t, d = roundtrip("int8-channel", w, params)
    assert t["weight"].dtype == torch.int8
    assert int(t["weight"].min()) >= -127
    s = t["weight_scale"]
    assert s.shape == (*w.shape[:-1], 1)
    assert_within(d, w, int_bound(s.expand(w.shape), 127))


@st.composite
def gptq_cases(draw):
    bits = draw(st.sampled_from([4, 8]))
    per = 32 // bits
    w = draw(weights(n_mult=per, k_mult=per, max_n=48, max_k=128))
    k = w.shape[-1]
    params = {
        "bits": bits,
        "group_size": draw(st.sampled_from([-1, 8, 16, 32, 24, 128])),
        "sym": draw(st.booleans()),
        "checkpoint_format": draw(st.sampled_from(["gptq", "gptq_v2"])),
    }
    inputs = {}
    if draw(st.booleans()):
        params["desc_act"] = True
        seed = draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(seed)
        if w.ndim > 2 and draw(st.booleans()):  # one act order per expert
            perm = torch.stack([torch.randperm(k, generator=g) for _ in range(math.prod(w.shape[:-2]))])
            perm = perm.reshape(*w.shape[:-2], k)
        else:
            perm = torch.randperm(k, generator=g)
        inputs["perm"] = perm
    return w, params, inputs


@PROPS
@given(case=gptq_cases())
def test_gptq_roundtrip(case):
    w, params, inputs = case
    t, d = roundtrip("gptq", w, params, **inputs)
    bits, gs = params["bits"], params["group_size"]
    n, k = w.shape[-2:]
    batch = w.shape[:-2]
    per = 32 // bits
    groups = 1 if gs == -1 else math.ceil(k / gs)
    assert t["qweight"].shape == (*batch, k // per, n) and t["qweight"].dtype == torch.int32
    assert t["qzeros"].shape == (*batch, groups, n // per) and t["qzeros"].dtype == torch.int32
    assert t["scales"].shape == (*batch, groups, n) and t["scales"].dtype == torch.float16
    g_idx = t["g_idx"]
    assert g_idx.shape == (*batch, k) and g_idx.dtype == torch.int32
    if "perm" in inputs:
        perm = inputs["perm"].expand(*batch, k)
        order = torch.arange(k) // (k if gs == -1 else gs)
        assert torch.equal(g_idx.gather(-1, perm).long(), order.expand(*batch, k))
        assert_bit_equal(t, encode("gptq", d, **params, perm=inputs["perm"]))
    else:
        assert torch.equal(g_idx.long(), (torch.arange(k) // (k if gs == -1 else gs)).expand(*batch, k))
    if params["sym"]:
        word = {4: 0x77777777, 8: 0x7F7F7F7F}[bits] if params["checkpoint_format"] == "gptq" else {4: 0x88888888, 8: 0x80808080}[bits]
        assert bool((t["qzeros"] == as_int32(word)).all())
    q = 2**bits - 1 if not params["sym"] else 2 ** (bits - 1) - 1
    # s_el[..., n, k] = scales[..., g_idx[k], n]
    s_el = t["scales"].gather(-2, g_idx.long().unsqueeze(-1).expand(*batch, k, n)).transpose(-1, -2)
    assert_within(d, w, int_bound(s_el, q))


def test_gptq_desc_act_g_idx_is_non_monotonic_and_honoured():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    perm = torch.randperm(64, generator=g)
    t = encode("gptq", w, group_size=16, desc_act=True, perm=perm)
    assert not bool((t["g_idx"][1:] >= t["g_idx"][:-1]).all())
    d = decode("gptq", t, group_size=16)
    # the same codes read with the default g_idx would be wrong: the stored g_idx is used
    default = dict(t)
    default.pop("g_idx")
    assert not torch.allclose(decode("gptq", default, group_size=16), d)
    # an explicit g_idx reproduces the same tensors
    assert_bit_equal(t, encode("gptq", w, group_size=16, desc_act=True, g_idx=t["g_idx"]))


@st.composite
def ct_cases(draw):
    w = draw(weights(max_n=40, max_k=100))
    k = w.shape[-1]
    gs = draw(st.sampled_from([None, -1, 8, 16, 12, 32, 128]))
    params = {
        "bits": draw(st.sampled_from([4, 8])),
        "group_size": gs,
        "symmetric": draw(st.booleans()),
        "scale_dtype": draw(st.sampled_from(SCALE_DTYPES)),
    }
    inputs = {}
    if gs not in (None, -1) and draw(st.integers(0, 3)) == 0:
        inputs["perm"] = torch.randperm(k, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1))))
    return w, params, inputs


@PROPS
@given(case=ct_cases())
def test_ct_pack_quantized_roundtrip(case):
    w, params, inputs = case
    t, d = roundtrip("ct-pack-quantized", w, params, **inputs)
    bits, gs = params["bits"], params["group_size"]
    n, k = w.shape[-2:]
    batch = w.shape[:-2]
    per = 32 // bits
    channel = gs in (None, -1)
    groups = 1 if channel else math.ceil(k / gs)
    assert t["weight_packed"].shape == (*batch, n, math.ceil(k / per))
    assert t["weight_shape"].dtype == torch.int32
    assert t["weight_shape"].tolist() == torch.tensor([n, k]).expand(*batch, 2).tolist()
    assert t["weight_scale"].shape == (*batch, n, groups)
    assert t["weight_scale"].dtype == (params["scale_dtype"] or torch.bfloat16)
    assert ("weight_zero_point" in t) == (not params["symmetric"])
    if not params["symmetric"]:
        assert t["weight_zero_point"].shape == (*batch, math.ceil(n / per), groups)
    if k % per:  # padding codes are zero
        last = t["weight_packed"][..., -1].to(torch.int64) & 0xFFFFFFFF
        assert bool((last >> (bits * (k % per)) == 0).all())
    g_idx = t["weight_g_idx"].long() if "weight_g_idx" in t else torch.arange(k) // (k if channel else gs)
    s_el = t["weight_scale"].gather(-1, g_idx.unsqueeze(-2).expand(*batch, n, k))
    q = 2**bits - 1 if not params["symmetric"] else 2 ** (bits - 1) - 1
    assert_within(d, w, int_bound(s_el, q))


@PROPS
@given(w=weights(k_mult=32, max_k=128, max_n=24))
def test_mxfp8_roundtrip(w):
    t, d = roundtrip("mxfp8", w, {})
    n, k = w.shape[-2:]
    assert t["weight"].dtype == torch.float8_e4m3fn and t["weight"].shape == w.shape
    assert t["weight_scale"].dtype == torch.uint8 and t["weight_scale"].shape == (*w.shape[:-2], n, k // 32)
    assert_within(d, w, mx_bound(w, t["weight_scale"], elem_max=448.0, rel=2.0**-4, sub=2.0**-10))


@PROPS
@given(w=weights(k_mult=32, max_k=128, max_n=24))
def test_mxfp4_roundtrip(w):
    t, d = roundtrip("mxfp4", w, {})
    n, k = w.shape[-2:]
    assert t["blocks"].dtype == torch.uint8 and t["blocks"].shape == (*w.shape[:-2], n, k // 32, 16)
    assert t["scales"].dtype == torch.uint8 and t["scales"].shape == (*w.shape[:-2], n, k // 32)
    assert_within(d, w, mx_bound(w, t["scales"], elem_max=6.0, rel=0.25, sub=0.25))


@PROPS
@given(w=weights(k_mult=32, max_k=128, max_n=24))
def test_ct_mxfp4_is_mxfp4_stored_flat(w):
    """compressed-tensors' mxfp4-pack-quantized: the same bytes as ``mxfp4``, [N, K/2] per row;
    ``to_canonical`` re-views it as ``mxfp4`` without a copy."""
    t, d = roundtrip("ct-mxfp4", w, {})
    ref = encode("mxfp4", w)
    n, k = w.shape[-2:]
    assert t["weight_packed"].shape == (*w.shape[:-2], n, k // 2)
    assert torch.equal(t["weight_packed"], ref["blocks"].flatten(-2)) and torch.equal(t["weight_scale"], ref["scales"])
    canon = get_format("ct-mxfp4").to_canonical(t)
    assert canon["blocks"].data_ptr() == t["weight_packed"].data_ptr()
    assert torch.equal(decode("mxfp4", canon), d)


def test_ct_fp8_block_is_fp8_block_with_compressed_tensors_scale_name():
    w = torch.randn(3, 256, 384)
    t = encode("ct-fp8-block", w)
    ref = encode("fp8-block", w)
    assert torch.equal(raw(t["weight"]), raw(ref["weight"])) and torch.equal(t["weight_scale"], ref["weight_scale_inv"])
    canon = get_format("ct-fp8-block").to_canonical(t)
    assert canon["weight_scale_inv"] is t["weight_scale"]
    assert torch.equal(decode("fp8-block", canon), decode("ct-fp8-block", t))
    with pytest.raises(FormatError, match="weight_scale"):
        decode("ct-fp8-block", {"weight": t["weight"], "weight_scale": t["weight_scale"][..., :1].contiguous()})


def test_ct_mxfp4_rejects_bad_tensors():
    t = encode("ct-mxfp4", torch.randn(4, 64))
    with pytest.raises(FormatError, match="weight_packed"):
        decode("ct-mxfp4", {**t, "weight_packed": t["weight_packed"][:, :-1].contiguous()})
    with pytest.raises(FormatError, match="weight_scale"):
        decode("ct-mxfp4", {**t, "weight_scale": t["weight_scale"][:, :1].contiguous()})
    with pytest.raises(FormatError, match="weight_packed"):
        decode("ct-mxfp4", {**t, "weight_packed": t["weight_packed"].to(torch.int32)})


def test_mx_block_exponent_follows_the_ocp_rule():
    w = torch.zeros(1, 64)
    w[0, 0] = 1.0  # block 0: amax 1 -> floor(log2 1) - emax
    w[0, 32] = -300.0  # block 1: floor(log2 300) = 8
    assert encode("mxfp8", w)["weight_scale"].tolist() == [[127 - 8, 127 + 8 - 8]]
    assert encode("mxfp4", w)["scales"].tolist() == [[127 - 2, 127 + 8 - 2]]
    assert encode("mxfp8", torch.zeros(1, 32))["weight_scale"].tolist() == [[0]]


def test_mxfp8_saturates_above_448():
    w = torch.zeros(1, 32)
    w[0, 0] = 511.0  # e = 0: 511 > 448 is clamped
    w[0, 1] = 300.0
    d = decode("mxfp8", encode("mxfp8", w))
    assert d[0, 0].item() == 448.0
    assert d[0, 1].item() == 288.0  # nearest E4M3 to 300 (256 + 2 * 16)


# -- hand-made tensors: bit orders ------------------------------------------------------------------


def test_gptq_hand_qweight_word_and_v1_sym_zeros():
    # K = 8, N = 8, one group; column 0 holds k = 0..7, column 1 holds 8..15 (a negative word).
    qweight = torch.zeros(1, 8, dtype=torch.int32)
    qweight[0, 0] = 0x76543210
    qweight[0, 1] = as_int32(0xFEDCBA98)
    tensors = {
        "qweight": qweight,
        "qzeros": torch.full((1, 1), 0x77777777, dtype=torch.int32),  # v1 sym: stored 7 = 8 - 1
        "scales": torch.ones(1, 8, dtype=torch.float16),
        "g_idx": torch.zeros(8, dtype=torch.int32),
    }
    d = decode("gptq", tensors, group_size=-1)
    assert d.shape == (8, 8)
    assert d[0].tolist() == [k - 8 for k in range(8)]
    assert d[1].tolist() == list(range(8))
    assert d[2].tolist() == [-8.0] * 8  # word 0: every code 0
    v2 = dict(tensors, qzeros=torch.full((1, 1), as_int32(0x88888888), dtype=torch.int32))
    assert torch.equal(decode("gptq", v2, group_size=-1, checkpoint_format="gptq_v2"), d)


def test_gptq_hand_asym_zeros_scales_and_g_idx():
    # qzeros packed along N: column n's zero in nibble n. v1 stores zero - 1.
    qweight = torch.full((1, 8), 0x33333333, dtype=torch.int32)  # every code 3
    qzeros = torch.tensor([[0x76543210], [0x00000000]], dtype=torch.int32)  # group 0: zeros n+1; group 1: 1
    scales = torch.tensor([[1.0] * 8, [2.0] * 8], dtype=torch.float16)
    g_idx = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1], dtype=torch.int32)  # non-monotonic
    d = decode("gptq", {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}, group_size=4, sym=False)
    for n in range(8):
        expected = [(3 - 1) * 2.0 if g else float(3 - (n + 1)) for g in g_idx.tolist()]
        assert d[n].tolist() == expected
    d2 = decode(
        "gptq", {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx},
        group_size=4, sym=False, checkpoint_format="gptq_v2",
    )
    assert d2[5, 1].item() == 3 - 5  # v2: the stored zero is the true zero


def test_gptq_hand_8bit_word():
    qweight = torch.zeros(1, 4, dtype=torch.int32)
    qweight[0, 0] = as_int32(0x83828180)  # k = 0..3 -> codes 128..131
    tensors = {
        "qweight": qweight,
        "qzeros": torch.full((1, 1), 0x7F7F7F7F, dtype=torch.int32),
        "scales": torch.full((1, 4), 0.5, dtype=torch.float16),
    }
    d = decode("gptq", tensors, bits=8, group_size=-1)
    assert d[0].tolist() == [0.0, 0.5, 1.0, 1.5]


def test_gptq_hand_encode_words():
    # sym 4-bit: w = (k - 7) * 0.25 for k = 0..7 -> amax 1.75, scale 0.25, codes k + 1.
    w = ((torch.arange(8) - 7) * 0.25).repeat(8, 1)
    t = encode("gptq", w, group_size=-1)
    assert bool((t["qweight"] == as_int32(0x87654321)).all())
    assert bool((t["qzeros"] == 0x77777777).all())
    assert bool((t["scales"] == 0.25).all())
    t2 = encode("gptq", w, group_size=-1, checkpoint_format="gptq_v2")
    assert bool((t2["qzeros"] == as_int32(0x88888888)).all())
    assert torch.equal(t2["qweight"], t["qweight"])


def test_gptq_v1_never_stores_a_negative_zero():
    # all-positive groups would want true zero 0, which v1 (stored zero - 1) cannot hold
    w = torch.rand(8, 64, generator=torch.Generator().manual_seed(1)) + 0.5
    t, _ = roundtrip("gptq", w, {"sym": False, "group_size": 32})
    from weight_layouts.packing import unpack_int32

    stored = unpack_int32(t["qzeros"], bits=4, dim=-1)
    assert int(stored.min()) >= 0
    t2, _ = roundtrip("gptq", w, {"sym": False, "group_size": 32, "checkpoint_format": "gptq_v2"})
    assert int(unpack_int32(t2["qzeros"], bits=4, dim=-1).min()) == 0


def test_ct_pack_hand_words_offset_and_padding():
    # K = 5 (padded to one word), N = 2. Stored code = signed value + 8.
    packed = torch.tensor([[0x00076543], [0x000FEDCB]], dtype=torch.int32)
    tensors = {
        "weight_packed": packed,
        "weight_scale": torch.tensor([[1.0], [0.5]], dtype=torch.bfloat16),
        "weight_shape": torch.tensor([2, 5], dtype=torch.int32),
    }
    d = decode("ct-pack-quantized", tensors, group_size=None)
    assert d.shape == (2, 5)
    assert d[0].tolist() == [3 - 8, 4 - 8, 5 - 8, 6 - 8, 7 - 8]
    assert d[1].tolist() == [1.5, 2.0, 2.5, 3.0, 3.5]  # codes 11..15 -> 3..7, times 0.5


def test_ct_pack_hand_zero_point_packed_along_n():
    # N = 9 rows -> zero points in ceil(9/8) = 2 words per group column; row n's zp in nibble n % 8.
    n = 9
    packed = torch.full((n, 1), 0x88888888 - (1 << 32), dtype=torch.int32)  # every code 8 (signed 0)
    zp = torch.tensor([[0x76543210], [0x00000009]], dtype=torch.int32)  # rows 0..7: codes 0..7; row 8: code 9
    tensors = {
        "weight_packed": packed,
        "weight_scale": torch.ones(n, 1, dtype=torch.bfloat16),
        "weight_shape": torch.tensor([n, 8], dtype=torch.int32),
        "weight_zero_point": zp,
    }
    d = decode("ct-pack-quantized", tensors, group_size=-1, symmetric=False)
    assert d[:, 0].tolist() == [8.0 - z for z in [0, 1, 2, 3, 4, 5, 6, 7, 9]]


def test_ct_pack_hand_encode():
    # symmetric 4-bit: w = (k - 7) / 7 * 0.7 -> scale 0.1 in bf16 rounding down, codes k + 1 (signed k - 7).
    w = torch.tensor([[-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 7.0]]) * 0.125
    t = encode("ct-pack-quantized", w, group_size=-1)
    assert t["weight_scale"].item() == 0.125
    assert t["weight_packed"].tolist() == [[as_int32(0x87654321), 0xF]]
    assert t["weight_shape"].tolist() == [1, 9]


def test_fp8_block_hand_grid_with_partial_blocks():
    weight = torch.ones(3, 3).to(torch.float8_e4m3fn)
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    d = decode("fp8-block", {"weight": weight, "weight_scale_inv": scale}, block_size=(2, 2))
    assert d.tolist() == [[1, 1, 2], [1, 1, 2], [3, 3, 4]]


def test_fp8_hand_bytes_and_scales():
    weight = torch.tensor([[0x38, 0x40, 0xB8, 0x7E, 0x01]], dtype=torch.uint8).view(torch.float8_e4m3fn)
    # 0x38 = 1.0, 0x40 = 2.0, 0xB8 = -1.0, 0x7E = 448, 0x01 = 2**-9 (smallest subnormal)
    d = decode("fp8-tensor", {"weight": weight, "weight_scale": torch.tensor([0.5])})
    assert d.tolist() == [[0.5, 1.0, -0.5, 224.0, 2.0**-10]]
    d = decode("fp8-channel", {"weight": weight, "weight_scale": torch.tensor([[4.0]], dtype=torch.bfloat16)})
    assert d.tolist() == [[4.0, 8.0, -4.0, 1792.0, 2.0**-7]]
    # older compressed-tensors files store the tensor scale as a scalar
    assert decode("fp8-tensor", {"weight": weight, "weight_scale": torch.tensor(2.0)})[0, 0].item() == 2.0


def test_fp8_encode_scale_is_amax_over_448_rounded_down():
    w = torch.tensor([[448.0, -1.0], [2.0, 0.0]])
    t = encode("fp8-tensor", w)
    assert t["weight_scale"].tolist() == [1.0]
    assert raw(t["weight"]).tolist() == [[0x7E, 0xB8], [0x40, 0x00]]
    s = encode("fp8-channel", w)["weight_scale"].to(torch.float64)
    assert s[0].item() == 1.0
    assert 2.0 / 448 * (1 - 2.0**-19) <= s[1].item() <= 2.0 / 448  # rounded down onto 20 significant bits


def test_int8_hand():
    d = decode("int8-channel", {"weight": torch.tensor([[-128, 127, 1]], dtype=torch.int8), "weight_scale": torch.tensor([[0.5]])})
    assert d.tolist() == [[-64.0, 63.5, 0.5]]
    t = encode("int8-channel", torch.tensor([[127.0, -63.5, 0.2]]))
    assert t["weight_scale"].tolist() == [[1.0]]
    assert t["weight"].tolist() == [[127, -64, 0]]  # -63.5 rounds half away from zero


def test_mxfp8_hand():
    weight = torch.ones(2, 32).to(torch.float8_e4m3fn)
    scales = torch.tensor([[127], [0]], dtype=torch.uint8)
    d = decode("mxfp8", {"weight": weight, "weight_scale": scales})
    assert d[0].tolist() == [1.0] * 32
    assert d[1].tolist() == [2.0**-127] * 32
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    if e8m0 is not None:  # the float8_e8m0fnu dtype is the same bytes
        assert torch.equal(decode("mxfp8", {"weight": weight, "weight_scale": scales.view(e8m0)}), d)


def test_mxfp4_hand_bytes():
    blocks = torch.zeros(1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x21  # elements 0, 1: codes 1, 2 -> 0.5, 1.0
    blocks[0, 0, 1] = 0xF8  # elements 2, 3: codes 8, 15 -> -0.0, -6.0
    blocks[0, 0, 15] = 0x7A  # elements 30, 31: codes 10, 7 -> -1.0, 6.0
    d = decode("mxfp4", {"blocks": blocks, "scales": torch.tensor([[128]], dtype=torch.uint8)})  # x 2
    assert d.shape == (1, 32)
    assert d[0, :4].tolist() == [1.0, 2.0, -0.0, -12.0]
    assert d[0, 30:].tolist() == [-2.0, 12.0]
    assert d[0, 4:30].tolist() == [0.0] * 26


def test_mxfp4_hand_encode():
    w = torch.zeros(1, 32)
    w[0, 0], w[0, 1], w[0, 31] = 0.5, 1.0, -6.0  # amax 6: e = 2 - 2 = 0, byte 127
    t = encode("mxfp4", w)
    assert t["scales"].tolist() == [[127]]
    assert t["blocks"][0, 0, 0].item() == 0x21
    assert t["blocks"][0, 0, 15].item() == 0xF0


@pytest.mark.parametrize("fmt", BUILTIN)
def test_empty_expert_batch(fmt):
    t = encode(fmt, torch.randn(0, 16, 64))
    assert all(v.shape[0] == 0 for v in t.values())
    if fmt == "ct-pack-quantized":  # K lives only in weight_shape, which has no rows
        with pytest.raises(FormatError, match="K cannot be recovered"):
            decode(fmt, t)
    else:
        assert decode(fmt, t).shape == (0, 16, 64)
