"""``ct-pack-quantized``: compressed-tensors pack-quantized int weights (W4A16, W4A16_ASYM, W8A16).

Tensors (``pf = 32 // bits``; ``G = ceil(K / group_size)``, or 1 per channel):

* ``weight_packed`` int32 [..., N, ceil(K / pf)]: packed along K (dim -1), LSB first, stored code
  = signed value + ``2**(bits-1)``; the last word is zero-padded.
* ``weight_scale`` [..., N, G] (``[..., N, 1]`` per channel), model dtype (bfloat16 by default).
* ``weight_shape`` int32 [..., 2] = (N, K) (recovers K from the padded packing; one row per
  leading index of a stacked weight).
* ``weight_zero_point`` int32 [..., ceil(N / pf), G]: asymmetric only, packed along N (dim -2),
  LSB first, stored code = signed zero point + ``2**(bits-1)``.
* ``weight_g_idx`` int32 [..., K]: act order only (group of each input channel).

Dequantization: ``w[n, k] = (code[n, k] - zp_code[n, g]) * scale[n, g]`` with ``g = k // group_size``
(or ``weight_g_idx[k]``); symmetric files have no zero point (``zp_code = 2**(bits-1)``).

Encode (round to nearest): symmetric codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` with
scale ``amax / (2**(bits-1) - 1)``; asymmetric as GPTQ v2 (range widened to contain 0, scale
``(hi - lo) / (2**bits - 1)``, zero ``round_half_away(-lo / s)``). Scales are rounded down onto
``scale_dtype`` (at most 16 significant bits), which keeps re-encoding bit exact.

Error bound (each element, ``s`` its group's scale, ``Q = 2**bits - 1`` (asym) or
``2**(bits-1) - 1`` (sym)): ``|w - decode(encode(w))| <= s/2 + Q * ulp(s)``, ``ulp(s)`` the spacing
of the scale grid (``min(16, precision of scale_dtype)`` significant bits).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from weight_layouts.formats._common import (
    FLOAT_SCALE_DTYPES,
    INT_INDEX_DTYPES,
    check_batch,
    check_dtype,
    check_index_values,
    check_ndim,
    check_scale_values,
    check_shape,
    fit_asymmetric,
    fit_symmetric,
    gather_groups,
    group_index,
    group_minmax,
    num_groups,
    quantize_int,
    shape_str,
)
from weight_layouts.formats.base import (
    CheckpointFormat,
    DecodedShape,
    FormatError,
    FormatParams,
    check_bool,
    check_float_dtype,
    check_int,
)
from weight_layouts.formats.gptq import check_group_size, resolve_g_idx
from weight_layouts.packing import pack_int32, unpack_int32


@dataclasses.dataclass(frozen=True, kw_only=True)
class CtPackParams(FormatParams):
    """Params of ``ct-pack-quantized`` (a compressed-tensors scheme's ``weights`` args).

    bits: ``num_bits``, 4 or 8.
    group_size: input channels per group; None or -1 for the channel strategy.
    symmetric: no zero point stored when True.
    scale_dtype: dtype of ``weight_scale``; encode writes bfloat16 when None; decode accepts
        float32 / bfloat16 / float16 when None, else exactly this dtype.
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    scale_dtype: torch.dtype | None = None

    def check(self, fmt: str) -> None:
        check_int(fmt, "bits", self.bits, allowed=(4, 8))
        check_group_size(fmt, self.group_size, allow_none=True)
        check_bool(fmt, "symmetric", self.symmetric)
        check_float_dtype(fmt, "scale_dtype", self.scale_dtype, allowed=FLOAT_SCALE_DTYPES)

    @property
    def channel(self) -> bool:
        return self.group_size in (None, -1)


class CtPackFormat(CheckpointFormat):
    """compressed-tensors ``pack-quantized`` (see the module docstring)."""

    name = "ct-pack-quantized"
    required_tensors = ("weight_packed", "weight_scale", "weight_shape")
    optional_tensors = ("weight_zero_point", "weight_g_idx")
    Params = CtPackParams
    encode_inputs = ("perm", "g_idx")

    def encoded_tensor_names(self, **params: Any) -> tuple[str, ...]:
        """Names encode writes; ``weight_g_idx`` is added when encode gets ``perm`` / ``g_idx``."""
        p = self.params(**params)
        assert isinstance(p, CtPackParams)
        return self.required_tensors + (() if p.symmetric else ("weight_zero_point",))

    def _encode(self, weight: torch.Tensor, p: CtPackParams, *, perm: object = None, g_idx: object = None) -> dict[str, torch.Tensor]:
        batch, n, k = tuple(weight.shape[:-2]), int(weight.shape[-2]), int(weight.shape[-1])
        dtype = p.scale_dtype or torch.bfloat16
        gsize = -1 if p.channel else p.group_size
        assert gsize is not None
        act_order = perm is not None or g_idx is not None
        if act_order and p.channel:
            raise FormatError(f"{self.name}: perm / g_idx (act order) need a group strategy, not group_size={p.group_size}")
        gi = resolve_g_idx(
            self.name, desc_act=act_order, perm=perm, g_idx=g_idx, k=k, batch=batch,
            group_size=gsize, device=weight.device,
        )
        groups = num_groups(k, gsize)
        lo, hi = group_minmax(weight, gi, groups)
        offset = 1 << (p.bits - 1)
        maxq = (1 << p.bits) - 1
        out: dict[str, torch.Tensor] = {}
        if p.symmetric:
            s = fit_symmetric(torch.maximum(-lo, hi), offset - 1, dtype, fmt=self.name, name="weight_scale")
            codes = quantize_int(weight, gather_groups(s, gi), offset, 1, maxq)
        else:
            s, z = fit_asymmetric(lo, hi, maxq, dtype, zmin=0, fmt=self.name, name="weight_scale")
            codes = quantize_int(weight, gather_groups(s, gi), gather_groups(z, gi), 0, maxq)
        out["weight_packed"] = pack_int32(codes, bits=p.bits, dim=-1)
        out["weight_scale"] = s.contiguous()
        out["weight_shape"] = torch.tensor([n, k], dtype=torch.int32, device=weight.device).expand(*batch, 2).contiguous()
        if not p.symmetric:
            out["weight_zero_point"] = pack_int32(z, bits=p.bits, dim=-2)
        if act_order:
            out["weight_g_idx"] = gi.expand(*batch, k).to(torch.int32).contiguous()
        return out

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: CtPackParams) -> DecodedShape:
        fmt, per = self.name, 32 // p.bits
        wp = tensors["weight_packed"]
        check_dtype(fmt, "weight_packed", wp, (torch.int32,))
        check_ndim(fmt, "weight_packed", wp, 2, f"[..., N, ceil(K/{per})]")
        batch, n = tuple(wp.shape[:-2]), int(wp.shape[-2])

        ws = tensors["weight_shape"]
        check_dtype(fmt, "weight_shape", ws, INT_INDEX_DTYPES)
        check_batch(fmt, tensors, "weight_shape", 1, batch)
        check_shape(fmt, "weight_shape", ws, (*batch, 2), "[..., 2] = (N, K)")
        rows = ws.reshape(-1, 2)
        if rows.shape[0] == 0:
            raise FormatError(
                f"{fmt}: tensor 'weight_shape' is empty (leading dims {shape_str(batch)}), so K cannot be recovered "
                "from the padded packing"
            )
        k = int(rows[0, 1])
        if not bool((rows[:, 0] == n).all()) or not bool((rows[:, 1] == k).all()):
            raise FormatError(
                f"{fmt}: tensor 'weight_shape' must hold (N, K) = ({n}, K) in every row (N from weight_packed "
                f"{shape_str(wp.shape)}); got {sorted({tuple(r) for r in rows.tolist()})}"
            )
        if k < 1:
            raise FormatError(f"{fmt}: tensor 'weight_shape' gives K={k}; expected K >= 1")
        if wp.shape[-1] != math.ceil(k / per):
            raise FormatError(
                f"{fmt}: tensor 'weight_packed' has shape {shape_str(wp.shape)}, expected "
                f"{shape_str((*batch, n, math.ceil(k / per)))} ([..., N, ceil(K/{per})] with K={k} from weight_shape, bits={p.bits})"
            )

        gsize = -1 if p.channel else p.group_size
        assert gsize is not None
        groups = num_groups(k, gsize)
        g_meaning = "1 (channel strategy)" if p.channel else f"ceil(K={k} / group_size={gsize})"
        sc = tensors["weight_scale"]
        check_dtype(fmt, "weight_scale", sc, (p.scale_dtype,) if p.scale_dtype else FLOAT_SCALE_DTYPES)
        check_batch(fmt, tensors, "weight_scale", 2, batch)
        check_shape(fmt, "weight_scale", sc, (*batch, n, groups), f"[..., N, G] with N={n}, G = {g_meaning}")

        if p.symmetric and "weight_zero_point" in tensors:
            raise FormatError(
                f"{fmt}: unexpected tensor 'weight_zero_point' for symmetric=True (symmetric files store no zero "
                "point); pass symmetric=False for an asymmetric checkpoint"
            )
        if not p.symmetric:
            if "weight_zero_point" not in tensors:
                raise FormatError(f"{fmt}: missing tensor 'weight_zero_point' (required when symmetric=False)")
            zp = tensors["weight_zero_point"]
            check_dtype(fmt, "weight_zero_point", zp, (torch.int32,))
            check_batch(fmt, tensors, "weight_zero_point", 2, batch)
            check_shape(
                fmt, "weight_zero_point", zp, (*batch, math.ceil(n / per), groups),
                f"[..., ceil(N/{per}), G], packed along N, with N={n}, G = {g_meaning}",
            )
        if "weight_g_idx" in tensors:
            if p.channel:
                raise FormatError(f"{fmt}: unexpected tensor 'weight_g_idx' with the channel strategy (group_size={p.group_size})")
            gi = tensors["weight_g_idx"]
            check_dtype(fmt, "weight_g_idx", gi, INT_INDEX_DTYPES)
            check_batch(fmt, tensors, "weight_g_idx", 1, batch)
            check_shape(fmt, "weight_g_idx", gi, (*batch, k), f"[..., K] with K={k}")
            check_index_values(fmt, "weight_g_idx", gi, groups, f"the number of groups, {g_meaning}")
        check_scale_values(fmt, "weight_scale", sc)
        return DecodedShape(batch, n, k)

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: CtPackParams, shape: DecodedShape) -> torch.Tensor:
        _, n, k = shape
        codes = unpack_int32(tensors["weight_packed"], bits=p.bits, dim=-1, size=k)  # [..., N, K]
        gi = tensors.get("weight_g_idx")
        gi = group_index(k, -1 if p.channel else int(p.group_size or -1), codes.device) if gi is None else gi.to(torch.int64)
        scale = gather_groups(tensors["weight_scale"].to(torch.float32), gi)
        if p.symmetric:
            zero: torch.Tensor | int = 1 << (p.bits - 1)
        else:
            zp = unpack_int32(tensors["weight_zero_point"], bits=p.bits, dim=-2, size=n)  # [..., N, G]
            zero = gather_groups(zp, gi)
        return (codes - zero).to(torch.float32) * scale
