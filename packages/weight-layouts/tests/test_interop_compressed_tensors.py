"""Interop with the real ``compressed-tensors`` library (the producer of llm-compressor checkpoints).

Runs only in the ``interop`` configuration (``-m interop``) and skips itself when
``compressed_tensors`` is not installed. Its compressors write pack-quantized (int4/int8, sym and
asym, group and channel), float-quantized (FP8 tensor / channel / block), int-quantized (INT8
channel), mxfp8-quantized and mxfp4-pack-quantized tensors; we check that our ``decode`` equals its
``decompress`` on them, that its ``decompress`` reads back what our ``encode`` writes, and that
its bit packers agree with ours bit for bit.

Its decompress returns the scale's dtype; ours returns float32 (exact), so ours is rounded to
that dtype before comparing.
"""

from __future__ import annotations

import pytest
import torch

from weight_layouts.formats import decode, encode
from weight_layouts.packing import e2m1_decode, e2m1_encode, pack_int32, pack_nibbles_uint8, unpack_int32

pytestmark = pytest.mark.interop

N, K = 24, 128


@pytest.fixture(scope="module")
def ct():
    """The compressed_tensors pieces these tests use (imported lazily: the import is slow)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors import compressors, quantization
    from compressed_tensors.quantization.utils import calculate_qparams

    return {
        "Args": quantization.QuantizationArgs,
        "Scheme": quantization.QuantizationScheme,
        "preset": quantization.preset_name_to_scheme,
        "qparams": calculate_qparams,
        "packed": compressors.PackedQuantizationCompressor,
        "float": compressors.FloatQuantizationCompressor,
        "int": compressors.IntQuantizationCompressor,
        "mxfp8": compressors.MXFP8QuantizationCompressor,
        "mxfp4": compressors.MXFP4PackedCompressor,
        "pack_to_int32": compressors.pack_to_int32,
        "unpack_from_int32": compressors.unpack_from_int32,
        "pack_fp4_to_uint8": compressors.pack_fp4_to_uint8,
        "unpack_fp4_from_uint8": compressors.unpack_fp4_from_uint8,
    }


def weight(seed: int, dtype=torch.bfloat16, n: int = N, k: int = K) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3, 7] = 0.9  # an outlier
    return w.to(dtype)


def groups_of(w: torch.Tensor, size: int) -> torch.Tensor:
    """[N, K] -> [N, K/size, size] (a view for per-group min/max)."""
    return w.reshape(w.shape[0], -1, size)


def same(ours_f32: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours_f32.dtype == torch.float32
    assert ours_f32.shape == theirs.shape
    assert torch.equal(ours_f32.to(theirs.dtype), theirs), (ours_f32.to(theirs.dtype) - theirs).abs().max()


# -- bit packers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("shape", [(16, 64), (13, 37), (9, 8)])
def test_pack_to_int32_agrees_bit_for_bit(ct, bits, dim, shape):
    g = torch.Generator().manual_seed(bits * 100 + dim)
    offset = 1 << (bits - 1)
    signed = torch.randint(-offset, offset, shape, generator=g, dtype=torch.int64).to(torch.int8)
    theirs = ct["pack_to_int32"](signed, bits, packed_dim=dim)
    ours = pack_int32(signed.to(torch.int64) + offset, bits=bits, dim=dim)
    assert theirs.dtype == ours.dtype == torch.int32
    assert torch.equal(theirs, ours)
    back = ct["unpack_from_int32"](ours, bits, torch.Size(shape), packed_dim=dim)
    assert torch.equal(back.to(torch.int64), signed.to(torch.int64))
    assert torch.equal(unpack_int32(theirs, bits=bits, dim=dim, size=shape[dim]).to(torch.int64) - offset, signed.to(torch.int64))


def test_fp4_byte_packing_agrees(ct):
    lut = e2m1_decode(torch.arange(16))
    g = torch.Generator().manual_seed(0)
    values = lut[torch.randint(0, 16, (8, 64), generator=g)]
    theirs = ct["pack_fp4_to_uint8"](values)
    ours = pack_nibbles_uint8(e2m1_encode(values))
    assert torch.equal(theirs, ours)
    assert torch.equal(ct["pack_fp4_to_uint8"](torch.tensor([[0.5, 1.0, -0.0, -6.0]])), torch.tensor([[0x21, 0xF8]], dtype=torch.uint8))
    unpacked = ct["unpack_fp4_from_uint8"](ours, 8, 64, dtype=torch.float32)
    assert torch.equal(unpacked.abs(), values.abs())
    assert torch.equal(unpacked[values != 0], values[values != 0])


# -- pack-quantized -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 128, None])
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_pack_quantized(ct, bits, symmetric, group_size, model_dtype):
    w = weight(bits + 10 * symmetric, model_dtype)
    strategy = "channel" if group_size is None else "group"
    args = ct["Args"](num_bits=bits, type="int", symmetric=symmetric, strategy=strategy, group_size=group_size)
    scheme = ct["Scheme"](targets=["Linear"], weights=args)
    view = groups_of(w, group_size or K)
    scale, zp = ct["qparams"](view.amin(-1), view.amax(-1), args)
    theirs = ct["packed"].compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    params = {"bits": bits, "group_size": group_size, "symmetric": symmetric}

    # the tensors it writes are the ones our format describes
    ours_enc = encode("ct-pack-quantized", w, **params, scale_dtype=scale.dtype)
    assert set(theirs) == set(ours_enc)
    for name in theirs:
        assert theirs[name].shape == ours_enc[name].shape, name
        if name != "weight_shape":  # theirs: int64 from torch.tensor(shape); ours: int32
            assert theirs[name].dtype == ours_enc[name].dtype, name

    # our decode of its tensors == its decompress
    same(decode("ct-pack-quantized", theirs, **params), ct["packed"].decompress(dict(theirs), scheme)["weight"])
    # its decompress of our tensors == our decode
    same(decode("ct-pack-quantized", ours_enc, **params), ct["packed"].decompress(dict(ours_enc), scheme)["weight"])


def test_pack_quantized_w4a16_preset_scheme(ct):
    scheme = ct["preset"]("W4A16", ["Linear"])
    assert (scheme.weights.num_bits, scheme.weights.group_size, scheme.weights.symmetric) == (4, 128, True)
    w = weight(7)
    view = groups_of(w, 128)
    scale, zp = ct["qparams"](view.amin(-1), view.amax(-1), scheme.weights)
    theirs = ct["packed"].compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    same(decode("ct-pack-quantized", theirs), ct["packed"].decompress(dict(theirs), scheme)["weight"])


# -- float-quantized (FP8) and int-quantized (INT8) ----------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "fmt", "extra"),
    [("tensor", "fp8-tensor", {}), ("channel", "fp8-channel", {}), ("block", "fp8-block", {"block_size": (8, 32)})],
)
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_float_quantized_fp8(ct, strategy, fmt, extra, model_dtype):
    w = weight(3, model_dtype)
    kwargs = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": strategy}
    if strategy == "tensor":
        view = w.reshape(1, 1, -1)
    elif strategy == "channel":
        view = w.reshape(N, 1, K)
    else:
        kwargs["block_structure"] = [8, 32]
        view = w.reshape(N // 8, 8, K // 32, 32).transpose(1, 2).reshape(N // 8, K // 32, -1)
    args = ct["Args"](**kwargs)
    scheme = ct["Scheme"](targets=["Linear"], weights=args)
    scale, zp = ct["qparams"](view.amin(-1), view.amax(-1), args)
    if strategy == "tensor":
        scale, zp = scale.reshape(1), zp.reshape(1)
    theirs = ct["float"].compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    assert set(theirs) == {"weight", "weight_scale"}
    scale_name = "weight_scale_inv" if fmt == "fp8-block" else "weight_scale"
    mine = {"weight": theirs["weight"], scale_name: theirs["weight_scale"]}
    same(decode(fmt, mine, **extra), ct["float"].decompress(dict(theirs), scheme)["weight"])
    if fmt == "fp8-block":  # compressed-tensors' own names are read as they are by ct-fp8-block
        same(decode("ct-fp8-block", theirs, **extra), ct["float"].decompress(dict(theirs), scheme)["weight"])

    ours = encode(fmt, w, **extra, scale_dtype=scale.dtype)
    assert ours[scale_name].shape == theirs["weight_scale"].shape
    back = ct["float"].decompress({"weight": ours["weight"], "weight_scale": ours[scale_name]}, scheme)["weight"]
    same(decode(fmt, ours, **extra), back)


def test_int_quantized_int8_channel(ct):
    scheme = ct["preset"]("W8A8", ["Linear"])
    assert scheme.weights.strategy == "channel" and scheme.weights.num_bits == 8
    w = weight(5)
    scale, zp = ct["qparams"](w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), scheme.weights)
    theirs = ct["int"].compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    assert set(theirs) == {"weight", "weight_scale"}
    assert theirs["weight"].dtype == torch.int8 and theirs["weight_scale"].shape == (N, 1)
    same(decode("int8-channel", theirs), ct["int"].decompress(dict(theirs), scheme)["weight"])
    ours = encode("int8-channel", w, scale_dtype=scale.dtype)
    same(decode("int8-channel", ours), ct["int"].decompress(dict(ours), scheme)["weight"])


# -- MX ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp4"])
def test_mx_formats(ct, fmt):
    scheme = ct["preset"]("MXFP8A16" if fmt == "mxfp8" else "MXFP4A16", ["Linear"])
    comp = ct[fmt]
    w = weight(11)
    view = groups_of(w, 32)
    scale, zp = ct["qparams"](view.amin(-1), view.amax(-1), scheme.weights)
    theirs = comp.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    if fmt == "mxfp8":
        mine = {"weight": theirs["weight"], "weight_scale": theirs["weight_scale"]}
    else:  # compressed-tensors keeps [N, K/2] bytes; GPT-OSS blocks are the same bytes as [N, K/32, 16]
        assert theirs["weight_packed"].shape == (N, K // 2)
        mine = {"blocks": theirs["weight_packed"].reshape(N, K // 32, 16), "scales": theirs["weight_scale"]}
    assert all(t.dtype != torch.float32 for t in theirs.values())
    same(decode(fmt, mine), comp.decompress(dict(theirs), scheme)["weight"])

    ours = encode(fmt, w)
    if fmt == "mxfp8":
        back_in = dict(ours)
    else:
        back_in = {"weight_packed": ours["blocks"].reshape(N, K // 2), "weight_scale": ours["scales"]}
    same(decode(fmt, ours), comp.decompress(back_in, scheme)["weight"])


def test_ct_mxfp4_is_compressed_tensors_own_layout(ct):
    """``ct-mxfp4`` reads and writes compressed-tensors' mxfp4-pack-quantized tensors as they are."""
    scheme = ct["preset"]("MXFP4A16", ["Linear"])
    comp = ct["mxfp4"]
    w = weight(12)
    view = groups_of(w, 32)
    scale, zp = ct["qparams"](view.amin(-1), view.amax(-1), scheme.weights)
    theirs = comp.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
    theirs = {k: theirs[k] for k in ("weight_packed", "weight_scale")}
    same(decode("ct-mxfp4", theirs), comp.decompress(dict(theirs), scheme)["weight"])
    ours = encode("ct-mxfp4", w)
    assert set(ours) == {"weight_packed", "weight_scale"}
    same(decode("ct-mxfp4", ours), comp.decompress(dict(ours), scheme)["weight"])
