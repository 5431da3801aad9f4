"""Sharding a MoE layer's experts across ranks: by expert (expert parallelism) and along the
intermediate dimension (tensor parallelism), with exact padding.

* :func:`select_experts`: the experts a rank holds under expert parallelism (a slice of the
  leading expert dim of every tensor; nothing is decoded).
* :func:`shard_experts_tp`: rank ``r``'s tensor-parallel shard. The intermediate dimension ``I``
  (w13's gate rows and up rows, w2's input columns) is cut into units of ``granularity``
  columns (:func:`tp_granularity`: the formats' blocks, groups and packing, times an optional
  kernel multiple); rank ``r`` takes a contiguous run of whole units (the first ``units % tp``
  ranks one unit more) and every shard is padded at its end to the same size ``padded_size``,
  a multiple of the granularity. Gate and up are sharded with the same columns and re-stacked
  (``[gate_r | pad | up_r | pad]``); w2 keeps the matching input columns.

Why whole units: a shard that starts inside a scale block or group (Qwen3-30B-A3B, ``I = 768``
at TP 4 gives 192 against 128-wide FP8 blocks and int4 groups) cannot carry one scale per block
without re-quantizing, and the kernels' GEMM2 input quantization (1x128 groups along ``I``) would
straddle ranks. With whole units every shard is an exact slice of the checkpoint's tensors:
codes, scales and zero points are copied, never re-quantized (packed int4 words are copied whole
when the cut falls on word boundaries, else unpacked and re-packed bit for bit).

Padding is exact: padded columns of w13 have zero codes (or the zero point's code) with scale 1
(E8M0 byte 127; GPTQ / compressed-tensors zero point ``2**(bits-1)``), padded w13 bias entries are
0, and padded w2 input columns are zero. So the padded rows of GEMM1 give ``h = 0``, every
activation maps ``(0, 0)`` to 0, and the padded columns of w2 multiply zeros by zeros: the
padded shard's output equals the unpadded shard's, and the sum over ranks (the all-reduce after
the down projection) equals the unsharded layer up to float summation order. No scale is ever
0, NaN or infinite. ``w2_bias`` stays on rank 0 (zeros elsewhere) so the all-reduce adds it once.

Limits: act-order GPTQ / compressed-tensors (a non-trivial ``g_idx`` over the input channels of
w2) cannot be split along ``I`` without re-ordering the intermediate dimension and raises;
fp8-block w13 needs ``I`` to be a multiple of the block rows (as loading already does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .experts import CANONICAL, ExpertWeights, StackedWeight
from .packing import pack_int32, unpack_int32

__all__ = ["ShardingError", "TPShardPlan", "plan_tp_shard", "select_experts", "shard_experts_tp", "tp_granularity"]

E8M0_ONE = 127  # the E8M0 byte of 2**0


class ShardingError(ValueError):
    """Experts that cannot be sharded as asked (bad rank, layout, or a format that cannot be cut there)."""


# -- expert parallelism ----------------------------------------------------------------------------
def select_experts(weights: ExpertWeights, expert_ids: Sequence[int] | torch.Tensor) -> ExpertWeights:
    """The experts ``expert_ids`` (global ids, in local order) of ``weights``: every tensor's
    leading expert dim indexed, biases too. Static activation scales (one per layer) are kept."""
    ids = torch.as_tensor(expert_ids, dtype=torch.int64).reshape(-1)
    e = weights.num_experts
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= e):
        raise ShardingError(f"expert ids must lie in [0, {e}), got {ids.tolist()}")
    if ids.unique().numel() != ids.numel():
        raise ShardingError(f"expert ids must be distinct, got {ids.tolist()}")

    def pick(sw: StackedWeight) -> StackedWeight:
        return replace(sw, tensors={k: v.index_select(0, ids.to(v.device)) for k, v in sw.tensors.items()})

    def pick_bias(b: torch.Tensor | None) -> torch.Tensor | None:
        return None if b is None else b.index_select(0, ids.to(b.device))

    return replace(weights, w13=pick(weights.w13), w2=pick(weights.w2), w13_bias=pick_bias(weights.w13_bias),
                   w2_bias=pick_bias(weights.w2_bias))


# -- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TPShardPlan:
    """Rank ``tp_rank``'s share of the intermediate dimension.

    Global columns ``[start, stop)`` land at local columns ``[0, stop - start)``; local columns
    ``[stop - start, padded_size)`` are padding. ``start`` is a multiple of ``granularity`` and
    ``padded_size`` (equal on every rank) too.
    """

    intermediate_size: int
    tp_rank: int
    tp_size: int
    granularity: int
    start: int
    stop: int
    padded_size: int

    @property
    def real_size(self) -> int:
        return self.stop - self.start

    @property
    def padding(self) -> int:
        return self.padded_size - self.real_size

    def index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """int64 ``[padded_size]``: the global column of each local column, -1 for padding."""
        idx = torch.arange(self.padded_size, dtype=torch.int64, device=device)
        return torch.where(idx < self.real_size, idx + self.start, torch.full_like(idx, -1))


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShardingError(f"{name} must be a positive int, got {value!r}")
    return value


def plan_tp_shard(*, intermediate_size: int, tp_rank: int, tp_size: int, granularity: int = 1) -> TPShardPlan:
    """Where rank ``tp_rank`` of ``tp_size`` cuts the intermediate dimension (see the module docstring)."""
    inter = _positive("intermediate_size", intermediate_size)
    size = _positive("tp_size", tp_size)
    gran = _positive("granularity", granularity)
    if isinstance(tp_rank, bool) or not isinstance(tp_rank, int) or not 0 <= tp_rank < size:
        raise ShardingError(f"tp_rank must be an int in [0, tp_size={size}), got {tp_rank!r}")
    units = math.ceil(inter / gran)
    base, extra = divmod(units, size)
    first = tp_rank * base + min(tp_rank, extra)
    count = base + (1 if tp_rank < extra else 0)
    start, stop = min(first * gran, inter), min((first + count) * gran, inter)
    padded = max(1, math.ceil(units / size)) * gran
    return TPShardPlan(intermediate_size=inter, tp_rank=tp_rank, tp_size=size, granularity=gran, start=start,
                       stop=stop, padded_size=padded)


# -- index helpers ----------------------------------------------------------------------------------
def _blocks(index: torch.Tensor, size: int, *, what: str) -> torch.Tensor:
    """Local blocks of ``size`` columns -> the global block each copies (-1: all padding).

    Every valid column must sit at the same offset inside its block as globally, and one local
    block must draw from one global block; otherwise the cut is not block aligned.
    """
    n = index.numel()
    if n % size:
        raise ShardingError(f"{what}: {n} local columns are not a multiple of the {size}-wide block")
    idx = index.reshape(-1, size)
    valid = idx >= 0
    pos = torch.arange(n, dtype=torch.int64, device=index.device).reshape(-1, size)
    glob = torch.where(valid, idx // size, torch.full_like(idx, -1))
    blk = glob.amax(dim=1)
    aligned = torch.where(valid, ((idx - pos) % size == 0) & (glob == blk.unsqueeze(1)), torch.ones_like(valid))
    if not bool(aligned.all()):
        raise ShardingError(f"{what}: the cut is not aligned to the {size}-wide blocks of the format")
    return blk


_BYTE_FLOATS = tuple(d for d in (torch.float8_e4m3fn, torch.float8_e5m2, getattr(torch, "float8_e8m0fnu", None))
                     if d is not None)


def _take(t: torch.Tensor, dim: int, index: torch.Tensor, fill: float | int | torch.Tensor) -> torch.Tensor:
    """``t`` indexed along ``dim`` by ``index`` (-1 -> ``fill``, a scalar or a tensor shaped like the result).

    One-byte float tensors (fp8 weights, E8M0 scales) are indexed as bytes and ``fill`` is a byte:
    0 is +0.0 in e4m3, 127 is 1.0 in E8M0.
    """
    dim = dim % t.dim()
    byte = t.dtype in _BYTE_FLOATS
    view = t.view(torch.uint8) if byte else t
    idx = index.to(view.device)
    out = view.index_select(dim, idx.clamp(min=0))
    shape = [1] * out.dim()
    shape[dim] = idx.numel()
    mask = (idx >= 0).reshape(shape)
    if isinstance(fill, torch.Tensor):
        filler = fill.to(device=out.device, dtype=out.dtype)
    else:
        filler = torch.full((), fill, dtype=out.dtype, device=out.device)
    out = torch.where(mask, out, filler).contiguous()
    return out.view(t.dtype) if byte else out


def _word(code: int, bits: int) -> int:
    """The int32 word holding ``32 // bits`` copies of ``code``."""
    return int(pack_int32(torch.full((32 // bits,), code, dtype=torch.int64), bits=bits)[0])


def _take_packed(packed: torch.Tensor, dim: int, index: torch.Tensor, *, bits: int, size: int,
                 fill: int | torch.Tensor) -> torch.Tensor:
    """Codes packed along ``dim`` (``size`` of them), indexed by ``index``, re-packed.

    Whole words are copied when every word of the result is either a whole aligned source word or
    all padding with a constant ``fill``; otherwise the codes are unpacked, taken and re-packed.
    """
    per = 32 // bits
    n = index.numel()
    if n % per == 0 and not isinstance(fill, torch.Tensor) and size % per == 0:
        try:
            words = _blocks(index, per, what="packed words")
        except ShardingError:
            words = None
        if words is not None:
            whole = index.reshape(-1, per)
            if bool(((whole >= 0).all(dim=1) | (whole < 0).all(dim=1)).all()):
                return _take(packed, dim, words, _word(fill, bits))
    codes = unpack_int32(packed, bits=bits, dim=dim, size=size)
    return pack_int32(_take(codes, dim, index, fill), bits=bits, dim=dim)


def _padding_in_real_group(index: torch.Tensor, groups: torch.Tensor, local_group: torch.Tensor) -> bool:
    """True when a padded column shares its group with real columns (its code must be that group's zero)."""
    pad = index < 0
    return bool((pad & (groups[local_group] >= 0)).any())


def _trivial_groups(g_idx: torch.Tensor | None, k: int, group_size: int | None) -> bool:
    if g_idx is None:
        return True
    g = k if group_size in (None, -1) else group_size
    expected = torch.arange(k, dtype=torch.int64, device=g_idx.device) // g
    return bool((g_idx.to(torch.int64) == expected).all())


# -- per format: take along the output rows (N) or the input columns (K) ------------------------------
Taker = Callable[[StackedWeight, torch.Tensor], dict[str, torch.Tensor]]


def _dense_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"weight": _take(sw.tensors["weight"], -2, index, 0)}


def _dense_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"weight": _take(sw.tensors["weight"], -1, index, 0)}


def _tensor_scale_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-tensor scale: only the weight is cut."""
    return {**sw.tensors, "weight": _take(sw.tensors["weight"], -2, index, 0)}


def _row_scale_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-tensor or per-output-row scale: cutting input columns leaves the scale as is."""
    return {**sw.tensors, "weight": _take(sw.tensors["weight"], -1, index, 0)}


def _channel_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    t = sw.tensors
    return {"weight": _take(t["weight"], -2, index, 0), "weight_scale": _take(t["weight_scale"], -2, index, 1.0)}


def _fp8_block_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    bn = int(sw.params.get("block_size", (128, 128))[0])
    t = sw.tensors
    return {"weight": _take(t["weight"], -2, index, 0),
            "weight_scale_inv": _take(t["weight_scale_inv"], -2, _blocks(index, bn, what="fp8-block rows"), 1.0)}


def _fp8_block_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    bk = int(sw.params.get("block_size", (128, 128))[1])
    t = sw.tensors
    return {"weight": _take(t["weight"], -1, index, 0),
            "weight_scale_inv": _take(t["weight_scale_inv"], -1, _blocks(index, bk, what="fp8-block columns"), 1.0)}


def _mxfp8_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    t = sw.tensors
    return {"weight": _take(t["weight"], -2, index, 0), "weight_scale": _take(t["weight_scale"], -2, index, E8M0_ONE)}


def _mxfp8_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    t = sw.tensors
    return {"weight": _take(t["weight"], -1, index, 0),
            "weight_scale": _take(t["weight_scale"], -1, _blocks(index, 32, what="mx columns"), E8M0_ONE)}


def _mxfp4_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    t = sw.tensors
    return {"blocks": _take(t["blocks"], -3, index, 0), "scales": _take(t["scales"], -2, index, E8M0_ONE)}


def _mxfp4_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    t = sw.tensors
    blocks = _blocks(index, 32, what="mx columns")
    whole = index.reshape(-1, 32)
    if not bool(((whole >= 0).all(dim=1) | (whole < 0).all(dim=1)).all()):
        raise ShardingError("mxfp4: a 32-column block is partly padding; mxfp4 needs K to be a multiple of 32")
    return {"blocks": _take(t["blocks"], -2, blocks, 0), "scales": _take(t["scales"], -1, blocks, E8M0_ONE)}


def _gptq_params(sw: StackedWeight) -> tuple[int, int, bool, bool]:
    p = sw.params
    return int(p.get("bits", 4)), int(p.get("group_size", 128)), bool(p.get("sym", True)), \
        p.get("checkpoint_format", "gptq") == "gptq"


def _gptq_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    bits, _, _, v1 = _gptq_params(sw)
    mid = 1 << (bits - 1)
    t = sw.tensors
    out = {"qweight": _take(t["qweight"], -1, index, _word(mid, bits)),
           "scales": _take(t["scales"], -1, index, 1.0),
           "qzeros": _take_packed(t["qzeros"], -1, index, bits=bits, size=sw.rows, fill=mid - 1 if v1 else mid)}
    if "g_idx" in t:
        out["g_idx"] = t["g_idx"]
    return out


def _gptq_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    bits, gs, _, v1 = _gptq_params(sw)
    mid = 1 << (bits - 1)
    t = sw.tensors
    k, n = sw.cols, sw.rows
    g_idx = t.get("g_idx")
    if g_idx is not None and not _trivial_groups(g_idx, k, gs):
        raise ShardingError("gptq: act-order g_idx on w2's input channels cannot be split along the intermediate "
                            "dimension without re-ordering it; shard a checkpoint without desc_act")
    local_k = index.numel()
    groups = torch.zeros(1, dtype=torch.int64) if gs == -1 else _blocks(index, gs, what="gptq groups")
    stored_mid = mid - 1 if v1 else mid
    qzeros = _take(t["qzeros"], -2, groups, _word(stored_mid, bits))
    scales = _take(t["scales"], -2, groups, 1.0)
    # a padded input channel inside a real group takes that group's zero point as its code
    local_group = torch.zeros(local_k, dtype=torch.int64) if gs == -1 else torch.arange(local_k) // gs
    fill: int | torch.Tensor = mid  # padding groups have zero point mid
    if _padding_in_real_group(index, groups, local_group):
        zeros = unpack_int32(qzeros, bits=bits, dim=-1, size=n) + (1 if v1 else 0)  # true zeros [E, G, N]
        fill = zeros.index_select(-2, local_group.to(zeros.device))  # [E, K_local, N]
    qweight = _take_packed(t["qweight"], -2, index, bits=bits, size=k, fill=fill)
    out = {"qweight": qweight, "qzeros": qzeros, "scales": scales}
    if g_idx is not None:
        out["g_idx"] = local_group.to(device=g_idx.device, dtype=g_idx.dtype).expand(*g_idx.shape[:-1], local_k).contiguous()
    return out


def _ct_params(sw: StackedWeight) -> tuple[int, int | None, bool]:
    p = sw.params
    gs = p.get("group_size", 128)
    return int(p.get("bits", 4)), None if gs in (None, -1) else int(gs), bool(p.get("symmetric", True))


def _ct_rows(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    bits, _, sym = _ct_params(sw)
    mid = 1 << (bits - 1)
    t = sw.tensors
    out = {"weight_packed": _take(t["weight_packed"], -2, index, _word(mid, bits)),
           "weight_scale": _take(t["weight_scale"], -2, index, 1.0)}
    shape = t["weight_shape"].clone()
    shape[..., 0] = index.numel()
    out["weight_shape"] = shape
    if not sym:
        out["weight_zero_point"] = _take_packed(t["weight_zero_point"], -2, index, bits=bits, size=sw.rows, fill=mid)
    if "weight_g_idx" in t:
        out["weight_g_idx"] = t["weight_g_idx"]
    return out


def _ct_cols(sw: StackedWeight, index: torch.Tensor) -> dict[str, torch.Tensor]:
    bits, gs, sym = _ct_params(sw)
    mid = 1 << (bits - 1)
    t = sw.tensors
    k, n = sw.cols, sw.rows
    g_idx = t.get("weight_g_idx")
    if g_idx is not None and not _trivial_groups(g_idx, k, gs):
        raise ShardingError("ct-pack-quantized: act-order weight_g_idx on w2's input channels cannot be split along "
                            "the intermediate dimension without re-ordering it")
    local_k = index.numel()
    groups = torch.zeros(1, dtype=torch.int64) if gs is None else _blocks(index, gs, what="ct-pack groups")
    local_group = torch.zeros(local_k, dtype=torch.int64) if gs is None else torch.arange(local_k) // gs
    out = {"weight_scale": _take(t["weight_scale"], -1, groups, 1.0)}
    fill: int | torch.Tensor = mid
    if not sym:
        zp = unpack_int32(t["weight_zero_point"], bits=bits, dim=-2, size=n)  # [E, N, G] codes
        zp_local = _take(zp, -1, groups, mid)
        out["weight_zero_point"] = pack_int32(zp_local, bits=bits, dim=-2)
        if _padding_in_real_group(index, groups, local_group):
            fill = zp_local.index_select(-1, local_group.to(zp_local.device))  # [E, N, K_local]
    out["weight_packed"] = _take_packed(t["weight_packed"], -1, index, bits=bits, size=k, fill=fill)
    shape = t["weight_shape"].clone()
    shape[..., 1] = local_k
    out["weight_shape"] = shape
    if g_idx is not None:
        out["weight_g_idx"] = local_group.to(device=g_idx.device, dtype=g_idx.dtype).expand(
            *g_idx.shape[:-1], local_k).contiguous()
    return out


@dataclass(frozen=True)
class _FormatShard:
    rows: Taker
    cols: Taker
    row_unit: Callable[[Mapping[str, Any]], int]  # granularity needed along N (w13's intermediate rows)
    col_unit: Callable[[Mapping[str, Any]], int]  # granularity needed along K (w2's intermediate columns)


def _one(_: Mapping[str, Any]) -> int:
    return 1


def _packing(p: Mapping[str, Any]) -> int:
    return 32 // int(p.get("bits", 4))


def _gptq_col_unit(p: Mapping[str, Any]) -> int:
    gs = int(p.get("group_size", 128))
    return math.lcm(_packing(p), gs) if gs > 0 else _packing(p)


def _ct_row_unit(p: Mapping[str, Any]) -> int:
    return 1 if p.get("symmetric", True) else _packing(p)


def _ct_col_unit(p: Mapping[str, Any]) -> int:
    gs = p.get("group_size", 128)
    return 1 if gs in (None, -1) else int(gs)


_FORMATS: Mapping[str, _FormatShard] = {
    "dense": _FormatShard(_dense_rows, _dense_cols, _one, _one),
    "fp8-tensor": _FormatShard(_tensor_scale_rows, _row_scale_cols, _one, _one),
    "fp8-channel": _FormatShard(_channel_rows, _row_scale_cols, _one, _one),
    "int8-channel": _FormatShard(_channel_rows, _row_scale_cols, _one, _one),
    "fp8-block": _FormatShard(_fp8_block_rows, _fp8_block_cols,
                              lambda p: int(p.get("block_size", (128, 128))[0]),
                              lambda p: int(p.get("block_size", (128, 128))[1])),
    "mxfp8": _FormatShard(_mxfp8_rows, _mxfp8_cols, _one, lambda p: 32),
    "mxfp4": _FormatShard(_mxfp4_rows, _mxfp4_cols, _one, lambda p: 32),
    "gptq": _FormatShard(_gptq_rows, _gptq_cols, _packing, _gptq_col_unit),
    "ct-pack-quantized": _FormatShard(_ct_rows, _ct_cols, _ct_row_unit, _ct_col_unit),
}


def _format(fmt: str) -> _FormatShard:
    try:
        return _FORMATS[fmt]
    except KeyError:
        raise ShardingError(f"no tensor-parallel sharding for format {fmt!r}; shardable: {', '.join(_FORMATS)}") from None


def tp_granularity(weights: ExpertWeights, *, multiple: int = 1) -> int:
    """The unit (in intermediate columns) a TP cut must respect: the least common multiple of w13's
    row blocks / packing, w2's column blocks / groups / packing and ``multiple`` (a kernel's own
    alignment, e.g. 64). 1 for dense, per-tensor and per-channel formats."""
    mult = _positive("multiple", multiple)
    rows = _format(weights.w13.format).row_unit(weights.w13.params)
    cols = _format(weights.w2.format).col_unit(weights.w2.params)
    return math.lcm(rows, cols, mult)


# -- tensor parallelism ---------------------------------------------------------------------------------
def shard_experts_tp(weights: ExpertWeights, *, tp_rank: int, tp_size: int, multiple: int = 1) -> ExpertWeights:
    """Rank ``tp_rank``'s tensor-parallel shard of canonical ``weights`` (see the module docstring).

    Returns canonical :class:`ExpertWeights` with ``intermediate_size == plan.padded_size``
    (:func:`plan_tp_shard` with :func:`tp_granularity`), in the same formats, on the same device.
    ``tp_size=1`` returns the weights padded to ``multiple`` (unchanged when already aligned).
    """
    if weights.layout != CANONICAL:
        raise ShardingError(f"shard canonical experts (before to_layout); these are in layout {weights.layout!r}")
    inter = weights.intermediate_size
    plan = plan_tp_shard(intermediate_size=inter, tp_rank=tp_rank, tp_size=tp_size,
                         granularity=tp_granularity(weights, multiple=multiple))
    index = plan.index()
    if weights.gated:
        row_index = torch.cat([index, torch.where(index >= 0, index + inter, index)])
        if weights.w13.format == "fp8-block":
            bn = int(weights.w13.params.get("block_size", (128, 128))[0])
            if inter % bn:
                raise ShardingError(f"fp8-block: intermediate size {inter} is not a multiple of the {bn}-row block, "
                                    "so w13's up rows do not start on a block")
    else:
        row_index = index
    w13 = replace(weights.w13, tensors=_format(weights.w13.format).rows(weights.w13, row_index),
                  rows=row_index.numel())
    w2 = replace(weights.w2, tensors=_format(weights.w2.format).cols(weights.w2, index), cols=index.numel())
    w13_bias = None if weights.w13_bias is None else _take(weights.w13_bias, -1, row_index, 0)
    w2_bias = weights.w2_bias
    if w2_bias is not None and tp_rank != 0:
        w2_bias = torch.zeros_like(w2_bias)  # added once, by rank 0, before the all-reduce
    return replace(weights, w13=w13, w2=w2, w13_bias=w13_bias, w2_bias=w2_bias)
