"""Read safetensors tensors straight into preallocated buffers, one tensor at a time.

The safetensors library maps a whole shard into memory; pages it touches count towards the
process's resident memory until the shard is closed, so loading a layer out of a 5 GB shard
costs up to 5 GB beyond the output. This reader parses the (documented, pickle-free) header
itself and ``readinto``s each tensor's bytes directly into its destination (a view of the
stacked output), so the peak beyond the output is zero for contiguous destinations and one
tensor otherwise. Files are written with ``safetensors.torch.save_file``.

Format: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
data section; offsets are relative to its start.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

_DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file is truncated, corrupt, or holds something this reader cannot map to torch."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    nbytes: int


class SafetensorsFile:
    """An open safetensors file; use as a context manager. Never unpickles anything."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb", buffering=0)  # noqa: SIM115  (closed in close()); unbuffered: tensors are read straight into place
        except OSError as exc:
            raise SafetensorsError(f"{self.path}: cannot open: {exc}") from None
        try:
            self._infos = self._read_header()
        except Exception:
            self._f.close()
            raise

    def _read_header(self) -> dict[str, TensorInfo]:
        size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(8)
        if len(head) != 8:
            raise SafetensorsError(f"{self.path}: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise SafetensorsError(f"{self.path}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(self._f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsError(f"{self.path}: header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        data_start, data_size = 8 + n, size - 8 - n
        infos = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: malformed header entry for {name!r}: {entry!r}") from None
            if dtype_name not in _DTYPES or not hasattr(torch, _DTYPES[dtype_name]):
                raise SafetensorsError(f"{self.path}: tensor {name!r} has dtype {dtype_name}, which torch cannot hold")
            dtype = getattr(torch, _DTYPES[dtype_name])
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if not (0 <= begin <= end <= data_size) or end - begin != nbytes:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} spans bytes [{begin}, {end}) of a {data_size}-byte data section; "
                    f"its dtype and shape need {nbytes} bytes (truncated or corrupt file?)"
                )
            infos[name] = TensorInfo(name, dtype, tuple(int(s) for s in shape), data_start + begin, nbytes)
        return infos

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise SafetensorsError(f"{self.path}: no tensor {name!r}") from None

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Fill the contiguous CPU tensor ``out`` (same dtype and number of elements) with ``name``.

        Uses positional reads, so several threads may read different tensors of one file at once."""
        info = self.info(name)
        if out.dtype != info.dtype or out.numel() * out.element_size() != info.nbytes or not out.is_contiguous():
            raise SafetensorsError(
                f"{self.path}: cannot read {name!r} ({info.dtype}, {list(info.shape)}) into a {out.dtype} "
                f"{list(out.shape)} {'contiguous' if out.is_contiguous() else 'strided'} buffer"
            )
        if info.nbytes == 0:
            return
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        fd = self._f.fileno()
        got = 0
        while got < info.nbytes:  # positional reads: thread-safe; may return short (2 GiB per syscall on Linux)
            n = os.preadv(fd, [view[got:]], info.begin + got)
            if not n:
                break
            got += n
        if got != info.nbytes:
            raise SafetensorsError(f"{self.path}: tensor {name!r} is truncated ({got} of {info.nbytes} bytes)")

    def read(self, name: str) -> torch.Tensor:
        info = self.info(name)
        out = torch.empty(info.shape, dtype=info.dtype)
        self.read_into(name, out)
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
