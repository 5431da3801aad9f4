"""``gptq``: AutoGPTQ / GPTQModel integer weights (4 or 8 bits) in GPTQ orientation.

Tensors (``pf = 32 // bits`` codes per int32 word, ``G = ceil(K / group_size)``, 1 per channel):

* ``qweight`` int32 [..., K/pf, N]: packed along K (rows), LSB first: code of (k, n) in word
  ``[k // pf, n]`` at bits ``bits * (k % pf)``. Words may be negative (read as uint32).
* ``qzeros`` int32 [..., G, N/pf]: packed along N, LSB first. ``checkpoint_format="gptq"`` (v1)
  stores true zero - 1 (symmetric 4-bit: every word 0x77777777), ``"gptq_v2"`` the true zero
  (0x88888888).
* ``scales`` float16 [..., G, N], multiplied.
* ``g_idx`` int32 [..., K]: group of each input channel (optional on decode, default k // g).

Dequantization: ``w[n, k] = (q[k, n] - z[g_idx[k], n]) * scales[g_idx[k], n]``; decode honours any
``g_idx`` (act order makes it non-monotonic) and returns float32 [..., N, K].

Encode is round-to-nearest (min/max per group; not GPTQ's Hessian-compensated solver):

* ``sym=True``: zero ``2**(bits-1)``, scale ``amax / (2**(bits-1) - 1)`` rounded down onto float16,
  codes ``zero + clamp(round(w / s), -(2**(bits-1) - 1), 2**(bits-1) - 1)`` (code 0 is unused).
* ``sym=False``: range widened to contain 0, scale ``(hi - lo) / (2**bits - 1)`` rounded down onto
  float16, zero ``round_half_away(-lo / s)``. v1 cannot store a true zero of 0 (its stored zero
  would be -1), so groups that would get zero 0 are re-fitted to ``[-s, (2**bits - 2) * s]``
  with zero 1.
* Act order (``desc_act=True``): pass ``perm`` (the order in which GPTQ visited the input
  channels: ``g_idx[perm[i]] = i // group_size``, so group r holds channels
  ``perm[r*g:(r+1)*g]``; qweight rows stay in the original channel order) or an explicit
  ``g_idx``; both may be [K] or per expert [..., K]. A weight alone does not carry the
  activation statistics that define act order, so one of them is required.

Error bound (each element, ``s`` its group's scale, ``Q = 2**bits - 1`` (asym) or
``2**(bits-1) - 1`` (sym)): ``|w - decode(encode(w))| <= s/2 + Q * ulp_fp16(s)`` (half a step, plus
the clamp of the group's extreme element after the scale was rounded down onto float16).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from weight_layouts.formats._common import (
    FLOAT_SCALE_DTYPES,
    INT_INDEX_DTYPES,
    as_index_tensor,
    check_batch,
    check_divisible,
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
    perm_to_g_idx,
    quantize_int,
)
from weight_layouts.formats.base import CheckpointFormat, DecodedShape, FormatError, FormatParams, check_bool, check_int
from weight_layouts.packing import pack_int32, unpack_int32

CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


def check_group_size(fmt: str, group_size: Any, *, allow_none: bool = False) -> None:
    """``group_size`` must be a positive int or -1 (per channel), or None where allowed."""
    if allow_none and group_size is None:
        return
    check_int(fmt, "group_size", group_size)
    if group_size < 1 and group_size != -1:
        raise FormatError(f"{fmt}: param group_size must be a positive int or -1 (per channel), got {group_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GptqParams(FormatParams):
    """Params of ``gptq`` (the keys of its ``quantization_config``).

    bits: 4 or 8 (3-bit GPTQ's cross-word packing is not supported).
    group_size: input channels per group, or -1 for one group per output channel.
    sym: symmetric (zero fixed at ``2**(bits-1)``); decode then checks every stored zero is that.
    desc_act: act order; only changes how encode builds ``g_idx`` (needs ``perm`` or ``g_idx``).
        Decode always honours the stored ``g_idx``.
    checkpoint_format: ``"gptq"`` (v1: stored zero = true zero - 1) or ``"gptq_v2"``.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False
    checkpoint_format: str = "gptq"

    def check(self, fmt: str) -> None:
        check_int(fmt, "bits", self.bits, allowed=(4, 8))
        check_group_size(fmt, self.group_size)
        check_bool(fmt, "sym", self.sym)
        check_bool(fmt, "desc_act", self.desc_act)
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise FormatError(
                f"{fmt}: param checkpoint_format={self.checkpoint_format!r} is not supported; "
                f"expected one of {list(CHECKPOINT_FORMATS)}"
            )


def resolve_g_idx(
    fmt: str,
    *,
    desc_act: bool,
    perm: object,
    g_idx: object,
    k: int,
    batch: tuple[int, ...],
    group_size: int,
    device: torch.device,
) -> torch.Tensor:
    """The group index encode uses: ``k // g``, or built from ``perm``, or the given ``g_idx`` (int64)."""
    if not desc_act:
        if perm is not None or g_idx is not None:
            raise FormatError(f"{fmt}: perm / g_idx define act order; pass desc_act=True (or leave them out)")
        return group_index(k, group_size, device)
    if (perm is None) == (g_idx is None):
        raise FormatError(
            f"{fmt}: desc_act=True needs exactly one of perm (the act-order permutation of the K={k} input "
            "channels) or g_idx (the group of each input channel)"
        )
    if perm is not None:
        return perm_to_g_idx(fmt, as_index_tensor(fmt, "perm", perm, k=k, batch=batch, device=device), k if group_size == -1 else group_size)
    gi = as_index_tensor(fmt, "g_idx", g_idx, k=k, batch=batch, device=device)
    check_index_values(fmt, "g_idx", gi, num_groups(k, group_size), f"ceil(K={k} / group_size={group_size})")
    return gi


class GptqFormat(CheckpointFormat):
    """GPTQ ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` (see the module docstring)."""

    name = "gptq"
    required_tensors = ("qweight", "qzeros", "scales")
    optional_tensors = ("g_idx",)
    Params = GptqParams
    encode_inputs = ("perm", "g_idx")

    def encoded_tensor_names(self, **params: Any) -> tuple[str, ...]:
        self.params(**params)
        return ("qweight", "qzeros", "scales", "g_idx")

    def _encode(self, weight: torch.Tensor, p: GptqParams, *, perm: object = None, g_idx: object = None) -> dict[str, torch.Tensor]:
        batch, n, k = tuple(weight.shape[:-2]), int(weight.shape[-2]), int(weight.shape[-1])
        per = 32 // p.bits
        check_divisible(self.name, "K", k, per, f"qweight packs {per} input channels per int32 word at bits={p.bits}")
        check_divisible(self.name, "N", n, per, f"qzeros packs {per} output channels per int32 word at bits={p.bits}")
        groups = num_groups(k, p.group_size)
        gi = resolve_g_idx(
            self.name, desc_act=p.desc_act, perm=perm, g_idx=g_idx, k=k, batch=batch,
            group_size=p.group_size, device=weight.device,
        )
        lo, hi = group_minmax(weight, gi, groups)
        maxq = (1 << p.bits) - 1
        if p.sym:
            mid = 1 << (p.bits - 1)
            s = fit_symmetric(torch.maximum(-lo, hi), mid - 1, torch.float16, fmt=self.name, name="scales")
            z = torch.full(s.shape, mid, dtype=torch.int64, device=weight.device)
            q = quantize_int(weight, gather_groups(s, gi), mid, 1, maxq)
        else:
            zmin = 1 if p.checkpoint_format == "gptq" else 0
            s, z = fit_asymmetric(lo, hi, maxq, torch.float16, zmin=zmin, fmt=self.name, name="scales")
            q = quantize_int(weight, gather_groups(s, gi), gather_groups(z, gi), 0, maxq)
        stored = z - 1 if p.checkpoint_format == "gptq" else z
        return {
            "qweight": pack_int32(q.transpose(-1, -2), bits=p.bits, dim=-2),
            "qzeros": pack_int32(stored.transpose(-1, -2), bits=p.bits, dim=-1),
            "scales": s.transpose(-1, -2).contiguous(),
            "g_idx": gi.expand(*batch, k).to(torch.int32).contiguous(),
        }

    def _validate(self, tensors: Mapping[str, torch.Tensor], p: GptqParams) -> DecodedShape:
        fmt, per = self.name, 32 // p.bits
        qw = tensors["qweight"]
        check_dtype(fmt, "qweight", qw, (torch.int32,))
        check_ndim(fmt, "qweight", qw, 2, f"[..., K/{per}, N]")
        batch, n, k = tuple(qw.shape[:-2]), int(qw.shape[-1]), int(qw.shape[-2]) * per
        groups = num_groups(k, p.group_size)
        g_meaning = "1 (group_size=-1)" if p.group_size == -1 else f"ceil(K={k} / group_size={p.group_size})"

        sc = tensors["scales"]
        check_dtype(fmt, "scales", sc, FLOAT_SCALE_DTYPES)
        check_batch(fmt, tensors, "scales", 2, batch)
        check_shape(fmt, "scales", sc, (*batch, groups, n), f"[..., G, N] with G = {g_meaning}, N={n}")

        qz = tensors["qzeros"]
        check_dtype(fmt, "qzeros", qz, (torch.int32,))
        check_divisible(fmt, "N", n, per, f"qzeros packs {per} output channels per int32 word at bits={p.bits}")
        check_batch(fmt, tensors, "qzeros", 2, batch)
        check_shape(fmt, "qzeros", qz, (*batch, groups, n // per), f"[..., G, N/{per}] with G = {g_meaning}, N={n}")

        if "g_idx" in tensors:
            gi = tensors["g_idx"]
            check_dtype(fmt, "g_idx", gi, INT_INDEX_DTYPES)
            check_batch(fmt, tensors, "g_idx", 1, batch)
            check_shape(fmt, "g_idx", gi, (*batch, k), f"[..., K] with K={k} from qweight")
            check_index_values(fmt, "g_idx", gi, groups, f"the number of groups, {g_meaning}")

        check_scale_values(fmt, "scales", sc)
        if p.sym:
            zeros = self._true_zeros(qz, p, n)
            mid = 1 << (p.bits - 1)
            bad = zeros != mid
            if bool(bad.any()):
                idx = torch.nonzero(bad)[0].tolist()
                raise FormatError(
                    f"{fmt}: tensor 'qzeros' holds true zero {int(zeros[tuple(idx)])} at [group, column] {idx}, "
                    f"but sym=True expects every zero to be {mid} (stored {mid - 1 if p.checkpoint_format == 'gptq' else mid} "
                    f"for checkpoint_format={p.checkpoint_format!r}); pass sym=False for an asymmetric checkpoint"
                )
        return DecodedShape(batch, n, k)

    @staticmethod
    def _true_zeros(qzeros: torch.Tensor, p: GptqParams, n: int) -> torch.Tensor:
        z = unpack_int32(qzeros, bits=p.bits, dim=-1, size=n)
        return z + 1 if p.checkpoint_format == "gptq" else z

    def _decode(self, tensors: Mapping[str, torch.Tensor], p: GptqParams, shape: DecodedShape) -> torch.Tensor:
        batch, n, k = shape
        q = unpack_int32(tensors["qweight"], bits=p.bits, dim=-2, size=k)  # [..., K, N]
        z = self._true_zeros(tensors["qzeros"], p, n)  # [..., G, N]
        gi = tensors.get("g_idx")
        gi = group_index(k, p.group_size, q.device) if gi is None else gi.to(torch.int64)
        index = gi.expand(*batch, k).unsqueeze(-1).expand(*batch, k, n)
        z_k = z.gather(-2, index)
        s_k = tensors["scales"].to(torch.float32).gather(-2, index)
        return ((q - z_k).to(torch.float32) * s_k).transpose(-1, -2).contiguous()
