"""QuantKey vocabulary: every named key's meaning, string round trips, vLLM's ambiguities fixed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import quantkeys as qk
from quantkeys import Granularity, GroupShape, QuantDType, QuantKey, ScaleDesc, ScaleKind

S, D = ScaleKind.STATIC, ScaleKind.DYNAMIC

# name -> (dtype, scale kind, granularity, rows, cols, scale dtype, symmetric, has scale2)
EXPECTED = {
    "kFp8StaticTensorSym": (QuantDType.FP8_E4M3, S, Granularity.TENSOR, -1, -1, QuantDType.FP32, True, False),
    "kFp8DynamicTensorSym": (QuantDType.FP8_E4M3, D, Granularity.TENSOR, -1, -1, QuantDType.FP32, True, False),
    "kFp8StaticTokenSym": (QuantDType.FP8_E4M3, S, Granularity.TOKEN, 1, -1, QuantDType.FP32, True, False),
    "kFp8DynamicTokenSym": (QuantDType.FP8_E4M3, D, Granularity.TOKEN, 1, -1, QuantDType.FP32, True, False),
    "kFp8StaticChannelSym": (QuantDType.FP8_E4M3, S, Granularity.CHANNEL, 1, -1, QuantDType.FP32, True, False),
    "kFp8Static128BlockSym": (QuantDType.FP8_E4M3, S, Granularity.BLOCK, 128, 128, QuantDType.FP32, True, False),
    "kFp8Static128BlockE8M0Sym": (QuantDType.FP8_E4M3, S, Granularity.BLOCK, 128, 128, QuantDType.E8M0, True, False),
    "kFp8Dynamic128Sym": (QuantDType.FP8_E4M3, D, Granularity.GROUP, 1, 128, QuantDType.FP32, True, False),
    "kFp8Dynamic64Sym": (QuantDType.FP8_E4M3, D, Granularity.GROUP, 1, 64, QuantDType.FP32, True, False),
    "kFp8Dynamic32Sym": (QuantDType.FP8_E4M3, D, Granularity.GROUP, 1, 32, QuantDType.FP32, True, False),
    "kInt8StaticChannelSym": (QuantDType.INT8, S, Granularity.CHANNEL, 1, -1, QuantDType.FP32, True, False),
    "kInt8StaticTensorSym": (QuantDType.INT8, S, Granularity.TENSOR, -1, -1, QuantDType.FP32, True, False),
    "kInt8DynamicTokenSym": (QuantDType.INT8, D, Granularity.TOKEN, 1, -1, QuantDType.FP32, True, False),
    "kInt8DynamicTensorSym": (QuantDType.INT8, D, Granularity.TENSOR, -1, -1, QuantDType.FP32, True, False),
    "kInt8StaticTensorAsym": (QuantDType.UINT8, S, Granularity.TENSOR, -1, -1, QuantDType.FP32, False, False),
    "kInt8DynamicTokenAsym": (QuantDType.UINT8, D, Granularity.TOKEN, 1, -1, QuantDType.FP32, False, False),
    "kInt8DynamicTensorAsym": (QuantDType.UINT8, D, Granularity.TENSOR, -1, -1, QuantDType.FP32, False, False),
    "kInt4Static": (QuantDType.INT4, S, Granularity.GROUP, 1, 128, QuantDType.FP32, True, False),
    "kInt4Static64": (QuantDType.INT4, S, Granularity.GROUP, 1, 64, QuantDType.FP32, True, False),
    "kInt4Static32": (QuantDType.INT4, S, Granularity.GROUP, 1, 32, QuantDType.FP32, True, False),
    "kInt4StaticChannel": (QuantDType.INT4, S, Granularity.CHANNEL, 1, -1, QuantDType.FP32, True, False),
    "kInt4StaticAsym": (QuantDType.UINT4, S, Granularity.GROUP, 1, 128, QuantDType.FP32, False, False),
    "kInt4Static64Asym": (QuantDType.UINT4, S, Granularity.GROUP, 1, 64, QuantDType.FP32, False, False),
    "kInt4Static32Asym": (QuantDType.UINT4, S, Granularity.GROUP, 1, 32, QuantDType.FP32, False, False),
    "kInt4StaticChannelAsym": (QuantDType.UINT4, S, Granularity.CHANNEL, 1, -1, QuantDType.FP32, False, False),
    "kInt8Static": (QuantDType.INT8, S, Granularity.GROUP, 1, 128, QuantDType.FP32, True, False),
    "kInt8Static64": (QuantDType.INT8, S, Granularity.GROUP, 1, 64, QuantDType.FP32, True, False),
    "kInt8Static32": (QuantDType.INT8, S, Granularity.GROUP, 1, 32, QuantDType.FP32, True, False),
    "kInt8StaticAsym": (QuantDType.UINT8, S, Granularity.GROUP, 1, 128, QuantDType.FP32, False, False),
    "kMxfp8Static": (QuantDType.FP8_E4M3, S, Granularity.GROUP, 1, 32, QuantDType.E8M0, True, False),
    "kMxfp8Dynamic": (QuantDType.FP8_E4M3, D, Granularity.GROUP, 1, 32, QuantDType.E8M0, True, False),
    "kMxfp4Static": (QuantDType.FP4_E2M1, S, Granularity.GROUP, 1, 32, QuantDType.E8M0, True, False),
    "kMxfp4Dynamic": (QuantDType.FP4_E2M1, D, Granularity.GROUP, 1, 32, QuantDType.E8M0, True, False),
    "kNvfp4Static": (QuantDType.FP4_E2M1, S, Granularity.GROUP, 1, 16, QuantDType.FP8_E4M3, True, True),
    "kNvfp4Dynamic": (QuantDType.FP4_E2M1, D, Granularity.GROUP, 1, 16, QuantDType.FP8_E4M3, True, True),
}


def test_every_named_key_is_specified_here():
    assert set(qk.NAMED_KEYS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_key_meaning(name):
    key = qk.NAMED_KEYS[name]
    dtype, kind, gran, rows, cols, sdtype, sym, has_scale2 = EXPECTED[name]
    assert key.dtype is dtype
    assert key.scale.kind is kind
    assert key.group_shape.granularity is gran
    assert (key.group_shape.rows, key.group_shape.cols) == (rows, cols)
    assert key.scale.dtype is sdtype
    assert key.symmetric is sym
    assert (key.scale2 is not None) is has_scale2
    assert getattr(qk, name) is key
    assert key.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_str_round_trip(name):
    key = qk.NAMED_KEYS[name]
    assert qk.parse_key(str(key)) == key
    assert qk.parse_key(name) is key


def test_readable_strings():
    assert str(qk.kFp8Static128BlockSym) == "fp8e4m3 static 128x128 sym"
    assert str(qk.kFp8Dynamic128Sym) == "fp8e4m3 dynamic 1x128 sym"
    assert str(qk.kInt4StaticAsym) == "uint4 static 1x128 asym"
    assert str(qk.kMxfp4Static) == "fp4e2m1 static 1x32 e8m0 sym"
    assert str(qk.kFp8StaticChannelSym) == "fp8e4m3 static channel sym"
    assert str(qk.kFp8DynamicTokenSym) == "fp8e4m3 dynamic token sym"


def test_no_constant_defined_twice():
    values = list(qk.NAMED_KEYS.values())
    assert len(set(values)) == len(values)


def test_group_sizes_are_explicit():
    # vLLM's kInt4Static is (1, -1), structurally equal to PER_TOKEN; here group 128 != group 32 != token.
    assert qk.kInt4Static != qk.kInt4Static32
    assert qk.kInt4Static.group_shape.group_size == 128
    assert qk.kInt4Static32.group_shape.group_size == 32
    assert qk.kInt4Static.group_shape != GroupShape.per_token()
    assert qk.kInt4StaticChannel.group_shape != GroupShape.per_token()


def test_per_channel_and_per_token_are_distinct():
    assert GroupShape.per_channel() != GroupShape.per_token()
    assert qk.kFp8StaticChannelSym != qk.kFp8StaticTokenSym


def test_logical_dtype_separate_from_storage():
    assert QuantDType.INT4.bits == 4 and QuantDType.INT4.storage == "uint8" and QuantDType.INT4.per_storage_element == 2
    assert QuantDType.FP4_E2M1.storage == "uint8" and QuantDType.FP4_E2M1.is_packed
    assert QuantDType.E8M0.storage == "uint8"
    assert QuantDType.INT4 is not QuantDType.UINT8
    # a key never carries a storage container
    assert {f.name for f in dataclasses.fields(QuantKey)} == {"dtype", "scale", "symmetric", "scale2"}


def test_keys_are_frozen_hashable_keyword_only():
    key = qk.kFp8Static128BlockSym
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.symmetric = False  # type: ignore[misc]
    assert {key: 1}[qk.parse_key("fp8e4m3 static 128x128 sym")] == 1
    with pytest.raises(TypeError):
        QuantKey(QuantDType.INT8, ScaleDesc(kind=S, group_shape=GroupShape.per_channel()))  # type: ignore[misc]


def test_int_weight_key_returns_the_named_constants():
    assert qk.int_weight_key(bits=4, group_size=128, symmetric=True) is not None
    assert qk.int_weight_key(bits=4, group_size=128, symmetric=True) == qk.kInt4Static
    assert qk.int_weight_key(bits=4, group_size=None, symmetric=False) == qk.kInt4StaticChannelAsym
    assert qk.int_weight_key(bits=8, group_size=None, symmetric=True) == qk.kInt8StaticChannelSym
    odd = qk.int_weight_key(bits=4, group_size=256, symmetric=True)
    assert odd.name is None and str(odd) == "int4 static 1x256 sym"
    with pytest.raises(ValueError, match="bits=3"):
        qk.int_weight_key(bits=3, group_size=128, symmetric=True)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: GroupShape(Granularity.GROUP, 2, 32), "1 x G"),
        (lambda: GroupShape(Granularity.TOKEN, 1, 4), "token group shape"),
        (lambda: QuantKey(dtype=QuantDType.FP8_E4M3, scale=ScaleDesc(kind=S, group_shape=GroupShape.per_tensor()),
                          symmetric=False), "asymmetric"),
        (lambda: QuantKey(dtype=QuantDType.UINT4, scale=ScaleDesc(kind=S, group_shape=GroupShape.group(32)),
                          symmetric=True), "signed format"),
        (lambda: ScaleDesc(dtype=QuantDType.INT8, kind=S, group_shape=GroupShape.per_tensor()), "integer format"),
        (lambda: QuantKey(dtype=QuantDType.E8M0, scale=ScaleDesc(kind=S, group_shape=GroupShape.per_tensor())),
         "scale format"),
    ],
)
def test_invalid_descriptions_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_block_of_one_row_is_a_group():
    assert GroupShape.block(1, 128) == GroupShape.group(128)


@pytest.mark.parametrize(
    ("shape", "dims", "expected"),
    [
        (GroupShape.per_tensor(), (300, 200), (1, 1)),
        (GroupShape.per_token(), (300, 200), (300, 1)),
        (GroupShape.per_channel(), (300, 200), (300, 1)),
        (GroupShape.group(128), (300, 200), (300, 2)),
        (GroupShape.block(128, 128), (300, 200), (3, 2)),
        (GroupShape.block(128, 128), (768, 2048), (6, 16)),  # Qwen3-30B-A3B gate_proj
    ],
)
def test_scale_shape(shape, dims, expected):
    assert shape.scale_shape(*dims) == expected


@pytest.mark.parametrize("bad", ["fp9 static tensor sym", "fp8e4m3 sometimes tensor sym", "kFp8Bogus", ""])
def test_parse_key_errors(bad):
    with pytest.raises(ValueError):
        qk.parse_key(bad)


def test_get_key_suggests():
    with pytest.raises(KeyError, match="kFp8Static128BlockSym"):
        qk.get_key("kFp8Static128BlokSym")


def test_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import would now fail
        "import quantkeys\n"
        "assert quantkeys.kInt4Static.dtype.bits == 4\n"
        "quantkeys.parse_quant_config({'quant_method': 'fp8', 'weight_block_size': [128, 128]})\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torch_dtype_resolution():
    torch = pytest.importorskip("torch")
    assert QuantDType.FP8_E4M3.torch_dtype() is torch.float8_e4m3fn
    assert QuantDType.INT4.torch_dtype() is None
    assert QuantDType.INT4.storage_torch_dtype() is torch.uint8
    assert QuantDType.E8M0.storage_torch_dtype() is torch.uint8


def test_star_export_lists_every_named_key():
    from quantkeys import named

    assert sorted(named.__all__) == sorted(qk.NAMED_KEYS)
    assert set(named.__all__) <= set(qk.__all__)
