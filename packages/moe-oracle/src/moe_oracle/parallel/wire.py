"""Activation rows on the wire: raw in the layer dtype, or quantized with the scheme's activation key.

Quantizing before dispatch sends 1-byte codes plus the row's scales instead of 2 (bf16) or 4
(float32) bytes per element; the receiving rank dequantizes (:meth:`RowCodec.decode`) and hands
the experts ordinary ``in_dtype`` rows, so every experts backend runs unchanged and quantizes
them again itself.

Which schemes quantize before dispatch (``quantize_dispatch=None``): those whose activation key
quantizes each row on its own or with a fixed scale, with bfloat16 or float32 activations:

* ``fp8_block`` (fp8 dynamic 1x128), ``fp8_channel`` (fp8 dynamic per token), ``int8_w8a8`` (int8
  dynamic per token), ``mxfp8`` and ``mxfp4_w4a8`` (fp8 dynamic 1x32 E8M0), ``fp8_tensor_static``
  (fp8 static per tensor: codes only, the scale is the layer's).
* Not: weight-only and unquantized schemes (no activation key), ``fp8_tensor_dynamic`` (its
  per-tensor scale spans the whole batch the experts see, unknown before dispatch), asymmetric
  keys, and float16 activations (see below).

Why it is exact: the experts' re-quantization of the decoded rows gives back the sent codes and
scales bit for bit, so quantized dispatch computes exactly what raw dispatch computes.

* Dynamic fp8 / int8 (``s = amax / Q``, ``Q`` = 448 or 127): the row's (group's) largest code
  decodes to ``fl(Q * s)``. In bfloat16 that rounds back to ``amax`` itself (a bfloat16 value,
  within 2**-23 of it); in float32 ``fl(fl(Q * s) / Q) == s`` holds for every float32 ``amax``
  (checked over all 2**23 mantissas for Q = 448 and 127 in the tests). So the scale is found
  again. Every other code ``c`` decodes to ``c * s`` within a bfloat16 rounding (relative
  2**-8), which re-quantizes to ``c``: the e4m3 grid is coarser (relative half step >= 2**-5)
  and ``|c| * 2**-8 < 1/2`` for int8 codes ``|c| <= 126``.
* MX (E8M0 scale ``2**e``): ``c * 2**e`` is exact; the group's largest decoded value lies in
  ``[256, 448] * 2**e``, so ``floor(log2)`` finds ``e`` again (groups with absmax above 2**-119).
* Static per-tensor: the scale is fixed and ``c * s`` re-quantizes to ``c`` as above.
* float16 is not exact: ``c * s`` can fall among float16 subnormals for small scales, so it is
  sent raw unless ``quantize_dispatch=True`` asks otherwise (then a code of a tiny element may
  move by one step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quantkeys import Granularity, QuantDType, QuantKey

from ..config import MoEConfig, MoEQuantConfig
from ..reference.activation_quant import (
    QuantizedActivation,
    dequantize_activation,
    expected_scale_shape,
    is_supported_activation_key,
    quantize_activation,
)

EXACT_DTYPES = (torch.bfloat16, torch.float32)


def to_bytes(t: torch.Tensor) -> torch.Tensor:
    """``[R, ...]`` -> uint8 ``[R, bytes per row]`` (a view when ``t`` is contiguous)."""
    rows = t.shape[0]
    per_row = math.prod(t.shape[1:])
    flat = t.contiguous().reshape(rows, per_row)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def from_bytes(b: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """uint8 ``[R, bytes]`` -> ``dtype`` ``[R, *shape]``."""
    b = b.contiguous()
    t = b if dtype == torch.uint8 else b.view(dtype)
    return t.reshape(b.shape[0], *shape)


@dataclass(frozen=True, kw_only=True)
class RowCodec:
    """Encodes ``[R, H]`` activation rows into uint8 ``[R, row_bytes]`` and back to ``dtype``.

    ``key`` None: the rows travel raw. Otherwise: ``H`` one-byte codes, then the row's scales
    (float32 per token or per group, or E8M0 bytes per 32; none for a static per-tensor key,
    whose ``static_scale`` both sides hold).
    """

    hidden_size: int
    dtype: torch.dtype
    key: QuantKey | None = None
    static_scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.key is not None:
            if not is_supported_activation_key(self.key) or not self.key.symmetric:
                raise ValueError(f"activation key {self.key} cannot be sent quantized")
            if self.key.group_shape.granularity is Granularity.TENSOR and not self.key.is_static:
                raise ValueError(f"{self.key}: a dynamic per-tensor scale spans the batch, not a row")
            if self.key.is_static and self.static_scale is None:
                raise ValueError(f"{self.key} is static: the codec needs its static_scale")

    @property
    def quantized(self) -> bool:
        return self.key is not None

    def _scale_spec(self) -> tuple[torch.dtype, tuple[int, ...]] | None:
        """Per-row scale dtype and shape (None: no per-row scale)."""
        assert self.key is not None
        if self.key.group_shape.granularity is Granularity.TENSOR:
            return None
        shape = expected_scale_shape(self.key, num_tokens=1, hidden=self.hidden_size)[1:]
        return (torch.uint8 if self.key.scale.dtype is QuantDType.E8M0 else torch.float32), tuple(shape)

    @property
    def row_bytes(self) -> int:
        if self.key is None:
            return self.hidden_size * torch.empty((), dtype=self.dtype).element_size()
        spec = self._scale_spec()
        scale = 0 if spec is None else math.prod(spec[1]) * torch.empty((), dtype=spec[0]).element_size()
        return self.hidden_size + scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[R, H]`` in ``dtype`` -> uint8 ``[R, row_bytes]``."""
        if self.key is None:
            return to_bytes(x)
        qa = quantize_activation(x, self.key, static_scale=self.static_scale)
        parts = [to_bytes(qa.q)]
        if self._scale_spec() is not None:
            parts.append(to_bytes(qa.scale))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def decode(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 ``[R, row_bytes]`` -> ``[R, H]`` in ``dtype``."""
        h = self.hidden_size
        if self.key is None:
            return from_bytes(rows, self.dtype, (h,))
        codes = torch.int8 if self.key.dtype is QuantDType.INT8 else torch.float8_e4m3fn
        q = from_bytes(rows[:, :h], codes, (h,))
        spec = self._scale_spec()
        if spec is None:
            assert self.static_scale is not None
            scale = self.static_scale.to(device=rows.device, dtype=torch.float32).reshape(1)
        else:
            scale = from_bytes(rows[:, h:], spec[0], spec[1])
        return dequantize_activation(QuantizedActivation(q=q, scale=scale, key=self.key)).to(self.dtype)


def choose_codec(*, config: MoEConfig, quant: MoEQuantConfig, quantize: bool | None) -> tuple[RowCodec, str]:
    """The codec for this layer's dispatched rows and why (see the module docstring for the rules)."""
    h, dtype = config.hidden_size, config.in_dtype
    raw = RowCodec(hidden_size=h, dtype=dtype)
    key = quant.a13.key
    raw_text = f"rows travel as {str(dtype).removeprefix('torch.')} ({raw.row_bytes} bytes per row)"
    if quantize is False:
        return raw, f"quantize_dispatch=False: {raw_text}"
    why_not = None
    if key is None:
        why_not = "the scheme does not quantize activations (weight-only or unquantized)"
    elif not is_supported_activation_key(key) or not key.symmetric:
        why_not = f"activation key {key} has no symmetric row-wise quantizer"
    elif key.group_shape.granularity is Granularity.TENSOR and not key.is_static:
        why_not = f"activation key {key} has a dynamic per-tensor scale that spans the batch the experts see"
    if why_not is not None:
        if quantize:
            raise ValueError(f"quantize_dispatch=True, but {why_not}")
        return raw, f"{why_not}: {raw_text}"
    assert key is not None
    if dtype not in EXACT_DTYPES and quantize is None:
        return raw, (f"{str(dtype).removeprefix('torch.')} rows do not round-trip exactly through {key} (subnormal "
                     f"products for small scales); pass quantize_dispatch=True to send codes anyway: {raw_text}")
    codec = RowCodec(hidden_size=h, dtype=dtype, key=key, static_scale=quant.a13.scale)
    exact = "re-quantizing the decoded rows gives the same codes and scales bit for bit" if dtype in EXACT_DTYPES \
        else "forced: not bit exact in float16"
    return codec, f"quantized with {key} before dispatch: {codec.row_bytes} bytes per row instead of {raw.row_bytes}; {exact}"
