"""The streaming safetensors reader agrees with the safetensors library and refuses broken files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from weight_layouts.safetensors_io import SafetensorsError, SafetensorsFile

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int8, torch.uint8, torch.int64,
          torch.float8_e4m3fn, torch.float8_e5m2, torch.bool]


@pytest.fixture
def file(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        base = torch.randn(3, 5 + i, generator=gen) * 10
        tensors[f"t{i}"] = base.to(dtype) if dtype is not torch.bool else base > 0
    tensors["empty"] = torch.empty(0, 4)
    tensors["scalar"] = torch.tensor(2.5)
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def test_reads_match_the_library(file):
    expected = load_file(str(file))
    with SafetensorsFile(file) as f:
        assert sorted(f.keys()) == sorted(expected)
        for name, ref in expected.items():
            got = f.read(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), ref.reshape(-1).view(torch.uint8))  # bitwise


def test_read_into_a_view_of_a_bigger_buffer(file):
    ref = load_file(str(file))["t0"]
    buf = torch.zeros(2, 3, 5)
    with SafetensorsFile(file) as f:
        f.read_into("t0", buf[1])
        with pytest.raises(SafetensorsError, match="strided"):
            f.read_into("t0", torch.zeros(5, 3).t())
        with pytest.raises(SafetensorsError, match="float16"):
            f.read_into("t0", torch.zeros(3, 5, dtype=torch.float16))
    assert torch.equal(buf[1], ref) and torch.equal(buf[0], torch.zeros(3, 5))


def _header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write(path, header, body):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated or corrupt"),
        (lambda p: p.write_bytes(b"\x05"), "too short"),
        (lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"), "does not fit"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
        (lambda p: _write(p, {**_header(p)[0], "t0": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 8]}},
                          _header(p)[1]), "need 60 bytes"),
        (lambda p: _write(p, {**_header(p)[0], "t0": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
                          _header(p)[1]), "dtype C64"),
        (lambda p: _write(p, {**_header(p)[0], "t0": {"shape": [1]}}, _header(p)[1]), "malformed header entry"),
    ],
)
def test_broken_files(file, edit, match):
    edit(file)
    with pytest.raises(SafetensorsError, match=match):
        SafetensorsFile(file)


def test_missing_file_and_tensor(tmp_path, file):
    with pytest.raises(SafetensorsError, match="cannot open"):
        SafetensorsFile(tmp_path / "nope.safetensors")
    with SafetensorsFile(file) as f, pytest.raises(SafetensorsError, match="no tensor 'zzz'"):
        f.read("zzz")
