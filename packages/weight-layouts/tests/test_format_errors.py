"""Bad input to every checkpoint format raises FormatError, naming the tensor or param, what was
expected and what was got. Nothing is silently skipped."""

from __future__ import annotations

import pytest
import torch

from weight_layouts.formats import FORMATS, FormatError, decode, encode, get_format

BUILTIN = ("dense", "fp8-tensor", "fp8-channel", "fp8-block", "int8-channel", "gptq", "ct-pack-quantized", "mxfp8", "mxfp4")
# (format, params) whose encoded tensors are mutated below; N = 16, K = 64 suits every format.
CASES = {
    "dense": {},
    "fp8-tensor": {},
    "fp8-channel": {},
    "fp8-block": {"block_size": (8, 32)},
    "int8-channel": {},
    "gptq": {"group_size": 32},
    "gptq-asym": {"group_size": 32, "sym": False},
    "ct-pack-quantized": {"group_size": 32},
    "ct-pack-quantized-asym": {"group_size": 32, "symmetric": False},
    "mxfp8": {},
    "mxfp4": {},
}


def fmt_of(case: str) -> str:
    return case.removesuffix("-asym")


def good(case: str, shape=(2, 16, 64)) -> dict[str, torch.Tensor]:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return encode(fmt_of(case), w, **CASES[case])


def check(case: str, tensors, *patterns: str, **extra) -> None:
    with pytest.raises(FormatError) as info:
        decode(fmt_of(case), tensors, **{**CASES[case], **extra})
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in {msg!r}"


# -- tensor names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "name"), [(c, n) for c in CASES for n in get_format(fmt_of(c)).required_tensors]
)
def test_missing_tensor_is_named(case, name):
    t = good(case)
    del t[name]
    check(case, t, "missing tensor", repr(name))


def test_missing_zero_point_for_asymmetric_ct():
    t = good("ct-pack-quantized-asym")
    del t["weight_zero_point"]
    check("ct-pack-quantized-asym", t, "missing tensor 'weight_zero_point'", "symmetric=False")


@pytest.mark.parametrize("case", list(CASES))
def test_unexpected_tensor_is_named(case):
    t = good(case)
    t["bias"] = torch.zeros(16)
    check(case, t, "unexpected tensor", "'bias'")


def test_zero_point_in_a_symmetric_ct_file():
    t = good("ct-pack-quantized-asym")
    check("ct-pack-quantized", t, "unexpected tensor 'weight_zero_point'", "symmetric=True")


def test_tensors_must_be_a_mapping_of_tensors():
    with pytest.raises(FormatError, match="mapping"):
        decode("dense", [torch.zeros(2, 2)])
    with pytest.raises(FormatError, match=r"'weight' must be a torch\.Tensor"):
        decode("dense", {"weight": [[1.0]]})


# -- dtypes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "name", "bad", "expected"),
    [
        ("dense", "weight", torch.int8, "float32"),
        ("fp8-tensor", "weight", torch.bfloat16, "float8_e4m3fn"),
        ("fp8-tensor", "weight_scale", torch.int32, "float32 or bfloat16 or float16"),
        ("fp8-channel", "weight", torch.uint8, "float8_e4m3fn"),
        ("fp8-block", "weight_scale_inv", torch.float64, "float32"),
        ("int8-channel", "weight", torch.uint8, "int8"),
        ("int8-channel", "weight_scale", torch.int8, "float32"),
        ("gptq", "qweight", torch.int64, "int32"),
        ("gptq", "qzeros", torch.uint8, "int32"),
        ("gptq", "scales", torch.int16, "float16"),
        ("gptq", "g_idx", torch.float32, "int32 or int64"),
        ("ct-pack-quantized", "weight_packed", torch.int64, "int32"),
        ("ct-pack-quantized", "weight_scale", torch.int32, "bfloat16"),
        ("ct-pack-quantized", "weight_shape", torch.float32, "int32 or int64"),
        ("ct-pack-quantized-asym", "weight_zero_point", torch.int64, "int32"),
        ("mxfp8", "weight", torch.float8_e5m2, "float8_e4m3fn"),
        ("mxfp8", "weight_scale", torch.float32, "uint8"),
        ("mxfp4", "blocks", torch.int8, "uint8"),
        ("mxfp4", "scales", torch.int32, "uint8"),
    ],
)
def test_wrong_dtype(case, name, bad, expected):
    t = good(case)
    t[name] = t[name].to(torch.float32).to(bad) if t[name].dtype.is_floating_point else t[name].to(bad)
    check(case, t, repr(name), expected, str(bad).replace("torch.", ""))


def test_explicit_scale_dtype_is_enforced_on_decode():
    t = encode("fp8-channel", torch.randn(4, 32), scale_dtype=torch.bfloat16)
    with pytest.raises(FormatError, match="'weight_scale' must be float32, got bfloat16"):
        decode("fp8-channel", t, scale_dtype=torch.float32)
    t = encode("dense", torch.randn(4, 32))
    with pytest.raises(FormatError, match="'weight' must be bfloat16, got float32"):
        decode("dense", t, dtype=torch.bfloat16)


# -- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "name", "expected"),
    [
        ("fp8-tensor", "weight_scale", "[2, 1]"),
        ("fp8-channel", "weight_scale", "[2, 16, 1]"),
        ("fp8-block", "weight_scale_inv", "[2, 2, 2]"),
        ("int8-channel", "weight_scale", "[2, 16, 1]"),
        ("gptq", "scales", "[2, 2, 16]"),
        ("gptq", "qzeros", "[2, 2, 2]"),
        ("gptq", "g_idx", "[2, 64]"),
        ("ct-pack-quantized", "weight_scale", "[2, 16, 2]"),
        ("ct-pack-quantized-asym", "weight_zero_point", "[2, 2, 2]"),
        ("mxfp8", "weight_scale", "[2, 16, 2]"),
        ("mxfp4", "scales", "[2, 16, 2]"),
    ],
)
def test_wrong_shape_says_expected_and_got(case, name, expected):
    t = good(case)
    bad = torch.cat([t[name], t[name][..., :1]], dim=-1)
    check(case, t | {name: bad}, repr(name), f"expected {expected}", "[" + ", ".join(map(str, bad.shape)) + "]")


@pytest.mark.parametrize("case", ["fp8-channel", "gptq", "ct-pack-quantized", "mxfp4"])
def test_leading_dims_must_agree(case):
    t = good(case)
    name = next(n for n in t if n not in ("weight", "qweight", "weight_packed", "blocks"))
    check(case, t | {name: t[name][:1]}, repr(name))


def test_mxfp4_blocks_must_hold_16_bytes():
    t = good("mxfp4")
    check("mxfp4", t | {"blocks": t["blocks"][..., :8]}, "'blocks'", "expected 16", "8")


def test_ct_weight_shape_must_match_the_packing():
    t = good("ct-pack-quantized")
    check("ct-pack-quantized", t | {"weight_shape": torch.tensor([[16, 64], [15, 64]], dtype=torch.int32)}, "'weight_shape'", "(N, K)")
    check("ct-pack-quantized", t | {"weight_shape": torch.tensor([[16, 80], [16, 80]], dtype=torch.int32)}, "'weight_packed'", "K=80")
    check("ct-pack-quantized", t | {"weight_shape": torch.tensor([16, 64], dtype=torch.int32)}, "'weight_shape'", "leading dims [2]")


# -- divisibility -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "shape", "params", "patterns"),
    [
        ("gptq", (16, 60), {}, ("K=60", "multiple of 8")),
        ("gptq", (12, 64), {}, ("N=12", "multiple of 8")),
        ("gptq", (16, 66), {"bits": 8}, ("K=66", "multiple of 4")),
        ("mxfp8", (16, 48), {}, ("K=48", "multiple of 32")),
        ("mxfp4", (16, 40), {}, ("K=40", "multiple of 32")),
    ],
)
def test_encode_rejects_indivisible_dims(fmt, shape, params, patterns):
    with pytest.raises(FormatError) as info:
        encode(fmt, torch.randn(*shape), **params)
    for p in patterns:
        assert p in str(info.value)


def test_decode_rejects_indivisible_dims():
    t = good("gptq")
    t = {"qweight": t["qweight"][..., :12], "qzeros": t["qzeros"], "scales": t["scales"][..., :12]}
    check("gptq", t, "N=12", "multiple of 8")
    w = torch.zeros(16, 48).to(torch.float8_e4m3fn)
    with pytest.raises(FormatError, match="K=48 must be a multiple of 32"):
        decode("mxfp8", {"weight": w, "weight_scale": torch.full((16, 1), 127, dtype=torch.uint8)})


# -- scale and index values ---------------------------------------------------------------------------

FLOAT_SCALED = [
    ("fp8-tensor", "weight_scale"),
    ("fp8-channel", "weight_scale"),
    ("fp8-block", "weight_scale_inv"),
    ("int8-channel", "weight_scale"),
    ("gptq", "scales"),
    ("ct-pack-quantized", "weight_scale"),
]


@pytest.mark.parametrize(("case", "name"), FLOAT_SCALED)
@pytest.mark.parametrize(("value", "kind"), [(float("nan"), "NaN"), (float("inf"), "inf"), (0.0, "zero"), (-0.5, "negative")])
def test_bad_float_scales(case, name, value, kind):
    t = good(case)
    s = t[name].clone()
    s.view(-1)[-1] = value
    check(case, t | {name: s}, repr(name), kind, "finite positive")


@pytest.mark.parametrize(("case", "name"), [("mxfp8", "weight_scale"), ("mxfp4", "scales")])
def test_e8m0_nan_byte(case, name):
    t = good(case)
    s = t[name].clone()
    s[1, 3, 1] = 0xFF
    check(case, t | {name: s}, repr(name), "0xFF", "[1, 3, 1]")


@pytest.mark.parametrize("case", ["fp8-tensor", "fp8-channel", "fp8-block", "mxfp8"])
def test_fp8_nan_codes_in_weight(case):
    t = good(case)
    w = t["weight"].clone()
    w.view(torch.uint8)[0, 2, 5] = 0x7F
    check(case, t | {"weight": w}, "'weight'", "NaN", "[0, 2, 5]")


def test_mx_decode_overflow_is_reported():
    w = torch.full((1, 32), 448.0).to(torch.float8_e4m3fn)
    with pytest.raises(FormatError, match="overflows float32"):
        decode("mxfp8", {"weight": w, "weight_scale": torch.full((1, 1), 254, dtype=torch.uint8)})


@pytest.mark.parametrize("value", [2, -1, 100])
def test_gptq_g_idx_out_of_range(value):
    t = good("gptq")
    g = t["g_idx"].clone()
    g[1, 7] = value
    check("gptq", t | {"g_idx": g}, "'g_idx'", f"value {value}", "[1, 7]", "< 2")


def test_ct_g_idx_out_of_range():
    t = encode("ct-pack-quantized", torch.randn(16, 64), group_size=32, perm=torch.randperm(64))
    g = t["weight_g_idx"].clone()
    g[3] = 5
    check("ct-pack-quantized", t | {"weight_g_idx": g}, "'weight_g_idx'", "value 5", "< 2")
    t = encode("ct-pack-quantized", torch.randn(16, 64), group_size=None)
    t["weight_g_idx"] = torch.zeros(64, dtype=torch.int32)
    check("ct-pack-quantized", t, "'weight_g_idx'", "channel", group_size=None)


def test_gptq_sym_flag_checks_the_zero_points():
    t = good("gptq-asym")
    check("gptq", t, "'qzeros'", "sym=True expects every zero to be 8", "sym=False")


# -- params -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", BUILTIN)
def test_unknown_param_is_named(fmt):
    with pytest.raises(FormatError, match=r"unknown param\(s\) 'colour'"):
        encode(fmt, torch.randn(16, 64), colour="red")
    t = encode(fmt, torch.randn(16, 64))
    with pytest.raises(FormatError, match=r"unknown param\(s\) 'colour'"):
        decode(fmt, t, colour="red")
    with pytest.raises(FormatError, match=r"unknown param\(s\) 'colour'"):
        get_format(fmt).validate(t, colour="red")


def test_encode_only_inputs_are_refused_by_decode():
    t = encode("gptq", torch.randn(16, 64))
    with pytest.raises(FormatError, match="'perm' is an encode-only input"):
        decode("gptq", t, perm=torch.arange(64))


@pytest.mark.parametrize("fmt", ["gptq", "ct-pack-quantized"])
@pytest.mark.parametrize("bits", [3, 2, 16, 0])
def test_unsupported_bits(fmt, bits):
    with pytest.raises(FormatError, match=f"bits={bits} is not supported"):
        encode(fmt, torch.randn(16, 64), bits=bits)


@pytest.mark.parametrize("bits", [True, "4", 4.0])
def test_bits_must_be_an_int(bits):
    with pytest.raises(FormatError, match="'bits' must be an int"):
        encode("gptq", torch.randn(16, 64), bits=bits)


@pytest.mark.parametrize(
    ("fmt", "params", "pattern"),
    [
        ("gptq", {"group_size": 0}, "group_size must be a positive int or -1"),
        ("gptq", {"group_size": -2}, "group_size must be a positive int or -1"),
        ("gptq", {"group_size": None}, "'group_size' must be an int"),
        ("gptq", {"group_size": "128"}, "'group_size' must be an int"),
        ("ct-pack-quantized", {"group_size": 0}, "group_size must be a positive int or -1"),
        ("gptq", {"checkpoint_format": "gptq_v3"}, "checkpoint_format='gptq_v3' is not supported"),
        ("gptq", {"sym": 1}, "'sym' must be a bool"),
        ("gptq", {"desc_act": "yes"}, "'desc_act' must be a bool"),
        ("ct-pack-quantized", {"symmetric": None}, "'symmetric' must be a bool"),
        ("ct-pack-quantized", {"scale_dtype": torch.int8}, "scale_dtype=torch.int8 is not supported"),
        ("fp8-tensor", {"scale_dtype": "float32"}, "scale_dtype='float32' is not supported"),
        ("fp8-block", {"block_size": (0, 128)}, "block_size must hold positive ints"),
        ("fp8-block", {"block_size": 128}, "block_size must be a pair"),
        ("fp8-block", {"block_size": (128,)}, "block_size must be a pair"),
        ("fp8-block", {"block_size": (128.0, 128)}, "'block_size[0]' must be an int"),
        ("dense", {"dtype": torch.int8}, "dtype=torch.int8 is not supported"),
    ],
)
def test_bad_param_values(fmt, params, pattern):
    with pytest.raises(FormatError) as info:
        encode(fmt, torch.randn(16, 64), **params)
    assert pattern in str(info.value)


def test_act_order_inputs():
    w = torch.randn(16, 64)
    with pytest.raises(FormatError, match="desc_act=True needs exactly one of perm"):
        encode("gptq", w, desc_act=True)
    with pytest.raises(FormatError, match="desc_act=True needs exactly one of perm"):
        encode("gptq", w, desc_act=True, perm=torch.arange(64), g_idx=torch.zeros(64, dtype=torch.int32))
    with pytest.raises(FormatError, match="pass desc_act=True"):
        encode("gptq", w, perm=torch.arange(64))
    with pytest.raises(FormatError, match="permutation of range"):
        encode("gptq", w, desc_act=True, perm=torch.zeros(64, dtype=torch.int64))
    with pytest.raises(FormatError, match=r"perm has shape \[63\], expected \[64\]"):
        encode("gptq", w, desc_act=True, perm=torch.arange(63))
    with pytest.raises(FormatError, match="perm must hold integers"):
        encode("gptq", w, desc_act=True, perm=torch.arange(64.0))
    with pytest.raises(FormatError, match="'g_idx' value 9"):
        encode("gptq", w, desc_act=True, group_size=32, g_idx=torch.full((64,), 9))
    with pytest.raises(FormatError, match="need a group strategy"):
        encode("ct-pack-quantized", w, group_size=-1, perm=torch.arange(64))


# -- weights given to encode ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in BUILTIN if f != "dense"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_encode_rejects_non_finite_weights(fmt, bad):
    w = torch.randn(16, 64)
    w[3, 9] = bad
    with pytest.raises(FormatError, match=r"weight must be finite.*\[3, 9\]"):
        encode(fmt, w)


@pytest.mark.parametrize("fmt", BUILTIN)
def test_encode_rejects_bad_weights(fmt):
    with pytest.raises(FormatError, match=r"must be a torch\.Tensor"):
        encode(fmt, [[1.0]])
    with pytest.raises(FormatError, match="dense float tensor"):
        encode(fmt, torch.ones(16, 64, dtype=torch.int32))
    with pytest.raises(FormatError, match="at least 2 dims"):
        encode(fmt, torch.ones(64))
    with pytest.raises(FormatError, match="N >= 1 and K >= 1"):
        encode(fmt, torch.ones(0, 64))


def test_fp16_scale_overflow_is_reported():
    with pytest.raises(FormatError, match=r"'scales' would be .* beyond the largest torch\.float16"):
        encode("gptq", torch.full((8, 64), 1e6))


def test_every_builtin_format_is_covered_here():
    assert {fmt_of(c) for c in CASES} == set(BUILTIN) <= set(FORMATS)
