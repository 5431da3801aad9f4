"""The reference fused-MoE computation on dense weights: the yardstick every backend is tested against.

Pure torch, any device. Tokens are grouped by expert (one pair of GEMMs per expert that is hit),
so it runs at a few thousand tokens on a CPU.
"""

from __future__ import annotations

import torch

from quantkeys import QuantKey

from ..activations import Activation, apply_activation
from .activation_quant import dequantize_activation, quantize_activation

__all__ = ["reference_moe_forward"]


def _fake_quant(
    x: torch.Tensor, key: QuantKey | None, static_scale: torch.Tensor | float | None, *, what: str
) -> torch.Tensor:
    """Quantize then dequantize ``x`` [rows, K] with ``key`` (float32 result); identity for None."""
    if key is None:
        if static_scale is not None:
            raise ValueError(f"{what}_static_scale was given but {what}_key is None")
        return x
    return dequantize_activation(quantize_activation(x, key, static_scale=static_scale))


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2)


def _check_float(name: str, t: object, ndim: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not _is_float(t):
        raise ValueError(f"{name} must be a dense float tensor (float32/float16/bfloat16/float64), got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _check_int(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {t.dtype}")
    return t


def reference_moe_forward(
    *,
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: Activation,
    a13_key: QuantKey | None = None,
    a2_key: QuantKey | None = None,
    a13_static_scale: torch.Tensor | float | None = None,
    a2_static_scale: torch.Tensor | float | None = None,
    w13_bias: torch.Tensor | None = None,
    w2_bias: torch.Tensor | None = None,
    expert_map: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
) -> torch.Tensor:
    """``out[t] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(x[t])`` on dense weights.

    Shapes: ``hidden_states`` [M, H]; ``w13`` [E, 2I, H] (gated, gate rows first) or [E, I, H]
    (non-gated); ``w2`` [E, H, I]; ``topk_weights`` float [M, k]; ``topk_ids`` integer [M, k];
    ``w13_bias`` [E, 2I or I]; ``w2_bias`` [E, H]; ``expert_map`` integer [E_global] mapping a
    global expert id to a local index in [0, E) or -1 (not on this rank). Returns [M, H] in
    ``out_dtype`` (default ``hidden_states.dtype``).

    Per (token, slot) with id ``e``: local = ``expert_map[e]`` (or ``e``); a negative id or a
    local -1 contributes exactly zero. Otherwise ``h = q13(x) @ w13[local].T (+ bias)``,
    ``a = q2(act(h))``, ``y = a @ w2[local].T (+ bias)``, and ``topk_weight * y`` is summed in
    ``compute_dtype``. ``q13`` / ``q2`` quantize-dequantize with ``a13_key`` / ``a2_key`` as the
    kernels do: the whole ``hidden_states`` at once before GEMM1 (so a per-tensor dynamic scale
    spans all M rows, padding included), and all valid (token, slot) rows of the intermediate at
    once before GEMM2. Quantization reads float32 (a float64 ``compute_dtype`` is rounded there).
    """
    # ---- validation -----------------------------------------------------------------------
    if not isinstance(activation, Activation):
        raise TypeError(f"activation must be an Activation, got {type(activation).__name__}")
    if not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
        raise ValueError(f"compute_dtype must be a floating dtype, got {compute_dtype}")
    x = _check_float("hidden_states", hidden_states, 2)
    _check_float("w13", w13, 3)
    _check_float("w2", w2, 3)
    m, hidden = x.shape
    num_local, n1, w13_hidden = w13.shape
    if w13_hidden != hidden:
        raise ValueError(f"hidden size mismatch: hidden_states has H = {hidden} but w13 [E, N, H] has H = {w13_hidden}")
    if activation.is_gated and n1 % 2 != 0:
        raise ValueError(f"gated activation {activation.value!r} needs w13 with 2I rows, got {n1}")
    inter = activation.output_size(n1)
    if tuple(w2.shape) != (num_local, hidden, inter):
        raise ValueError(
            f"w2 must be [E, H, I] = [{num_local}, {hidden}, {inter}] to match w13 {list(w13.shape)} "
            f"and activation {activation.value!r}, got {list(w2.shape)}"
        )
    ids = _check_int("topk_ids", topk_ids)
    if not isinstance(topk_weights, torch.Tensor) or not _is_float(topk_weights):
        got = topk_weights.dtype if isinstance(topk_weights, torch.Tensor) else type(topk_weights).__name__
        raise ValueError(f"topk_weights must be a float tensor, got {got}")
    if ids.dim() != 2 or ids.shape[0] != m:
        raise ValueError(f"topk_ids must be [M, k] with M = {m}, got shape {tuple(ids.shape)}")
    if tuple(topk_weights.shape) != tuple(ids.shape):
        raise ValueError(
            f"topk_weights {tuple(topk_weights.shape)} and topk_ids {tuple(ids.shape)} must have the same [M, k] shape"
        )
    if w13_bias is not None and tuple(w13_bias.shape) != (num_local, n1):
        raise ValueError(f"w13_bias must be [E, N] = [{num_local}, {n1}], got {list(w13_bias.shape)}")
    if w2_bias is not None and tuple(w2_bias.shape) != (num_local, hidden):
        raise ValueError(f"w2_bias must be [E, H] = [{num_local}, {hidden}], got {list(w2_bias.shape)}")

    if expert_map is not None:
        emap = _check_int("expert_map", expert_map)
        if emap.dim() != 1:
            raise ValueError(f"expert_map must be 1-D [E_global], got shape {tuple(emap.shape)}")
        num_global = emap.shape[0]
        if num_global < num_local:
            raise ValueError(
                f"expert_map has {num_global} entries (global experts) but the weights hold {num_local} local experts"
            )
        emap = emap.to(device=ids.device, dtype=torch.int64)
        if num_global and (int(emap.min()) < -1 or int(emap.max()) >= num_local):
            raise ValueError(
                f"expert_map values must be -1 or a local index in [0, {num_local}), "
                f"got range [{int(emap.min())}, {int(emap.max())}]"
            )
    else:
        emap = None
        num_global = num_local
    flat_ids = ids.reshape(-1).to(torch.int64)
    if flat_ids.numel() and int(flat_ids.max()) >= num_global:
        where = "expert_map length" if expert_map is not None else "number of experts in w13"
        raise ValueError(
            f"topk_ids holds expert id {int(flat_ids.max())}, outside [0, {num_global}) "
            f"(the {where}); negative ids mark padding slots"
        )
    out_dtype = x.dtype if out_dtype is None else out_dtype

    # ---- GEMM1 input (quantized once over the whole batch, as the kernels do) -----------------
    x_in = _fake_quant(x, a13_key, a13_static_scale, what="a13").to(compute_dtype)

    # ---- route: valid (token, slot) pairs sorted by local expert ------------------------------
    k = ids.shape[1]
    if emap is not None:
        local = torch.where(flat_ids >= 0, emap[flat_ids.clamp(min=0)], torch.full_like(flat_ids, -1))
    else:
        local = torch.where(flat_ids >= 0, flat_ids, torch.full_like(flat_ids, -1))
    pairs = torch.nonzero(local >= 0).reshape(-1)
    pair_expert = local[pairs]
    order = torch.argsort(pair_expert, stable=True)
    pairs, pair_expert = pairs[order], pair_expert[order]
    tokens = torch.div(pairs, k, rounding_mode="floor") if k else pairs
    counts = torch.bincount(pair_expert, minlength=num_local).tolist()
    bounds = [(e, start, start + c) for e, start, c in zip(range(num_local), _cumsum(counts), counts, strict=True) if c]

    # ---- GEMM1 + activation per expert --------------------------------------------------------
    num_pairs = pairs.numel()
    act = x_in.new_empty((num_pairs, inter))
    for e, lo, hi in bounds:
        h = x_in[tokens[lo:hi]] @ w13[e].to(compute_dtype).T
        if w13_bias is not None:
            h = h + w13_bias[e].to(compute_dtype)
        act[lo:hi] = apply_activation(activation, h, swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit)

    # ---- GEMM2 input: all valid rows quantized at once -------------------------------------------
    act = _fake_quant(act, a2_key, a2_static_scale, what="a2").to(compute_dtype)

    # ---- GEMM2, router weights, reduction over slots --------------------------------------------
    out = x_in.new_zeros((m, hidden))
    if num_pairs:
        weights = topk_weights.reshape(-1)[pairs].to(compute_dtype)
        y = x_in.new_empty((num_pairs, hidden))
        for e, lo, hi in bounds:
            ye = act[lo:hi] @ w2[e].to(compute_dtype).T
            if w2_bias is not None:
                ye = ye + w2_bias[e].to(compute_dtype)
            y[lo:hi] = ye
        out.index_add_(0, tokens, y * weights.unsqueeze(1))
    return out.to(out_dtype)


def _cumsum(counts: list[int]) -> list[int]:
    starts, total = [], 0
    for c in counts:
        starts.append(total)
        total += c
    return starts
