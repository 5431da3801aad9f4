"""The small kernels around the grouped GEMMs (scheme independent, so written by hand).

* ``align_rows``: group the (token, slot) rows by local expert in one launch and no host
  synchronization (the Triton form of :func:`triton_experts.align.align_by_expert`;
  rows of one expert land in arbitrary order inside its run, which no result depends on).
* ``act_quant``: the expert activation (or none) fused with the dynamic activation quantization
  of the next GEMM's input (fp8 e4m3 per 1xG group or per token, or a plain cast).
* ``reduce_topk``: the sum over each token's k slots of GEMM2's rows, skipping slots that were
  never computed (padding ids, other ranks' experts), cast to the output dtype; it is also where a
  GPU checks the ids: an id at or past the expert count fails a device-side assertion (the last
  launch of a call reads every id anyway, so the check costs no launch of its own; the GEMMs before
  it skip such ids).

Expert validity is one rule (:func:`local_expert`) in all of them and in the generated GEMMs' direct
rows: a global id ``g`` is local expert ``expert_map[g]`` when ``0 <= g < E_GLOBAL`` and the map holds a
value in [0, E_LOCAL) (without a map: ``g`` itself when ``g < E_LOCAL``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# activation codes (constexpr ACT)
ACT_NONE, ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_SWIGLUOAI, ACT_RELU2, ACT_SILU_NO_MUL, ACT_GELU_NO_MUL = range(8)
GATED = {ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_SWIGLUOAI}
# quantization codes (constexpr QUANT)
Q_NONE, Q_FP8_GROUP = 0, 1


@triton.jit
def local_expert(g, emap_ptr, mask, E_GLOBAL, E_LOCAL, HAS_MAP: tl.constexpr):
    inside = mask & (g >= 0) & (g < E_GLOBAL)
    if HAS_MAP:
        local = tl.load(emap_ptr + tl.where(inside, g, 0), mask=inside, other=-1)
    else:
        local = g
    return tl.where(inside & (local >= 0) & (local < E_LOCAL), local, -1)


@triton.jit(do_not_specialize=["num_valid", "cap", "num_blocks"])
def align_rows(ids_ptr, emap_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_padded_ptr, cursor_ptr,
               num_valid, cap, num_blocks, E_GLOBAL, E_LOCAL,
               HAS_MAP: tl.constexpr, BLOCK_M: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr,
               BLOCK_B: tl.constexpr):
    """One program, one launch: per-expert counts, padded run starts (into ``cursor``), the expert
    of every BLOCK_M block (-1 past the end), the padded length, ``sorted_ids`` filled with the
    sentinel; then every kept row takes the next slot of its expert's run (an atomic cursor).
    Ids at or past E_GLOBAL are left out (``reduce_topk`` asserts on them)."""
    counts = tl.zeros((NB,), dtype=tl.int32)
    for start in range(0, num_valid, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < num_valid
        g = tl.load(ids_ptr + offs, mask=mask, other=-1).to(tl.int32)
        local = local_expert(g, emap_ptr, mask, E_GLOBAL, E_LOCAL, HAS_MAP)
        counts += tl.histogram(tl.where(local >= 0, local, NB - 1), NB)
    bins = tl.arange(0, NB)
    counts = tl.where(bins < E_LOCAL, counts, 0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    total = tl.sum(padded, 0)
    tl.store(cursor_ptr + bins, ends - padded)
    tl.store(num_post_padded_ptr, total)
    ends = tl.where(bins < E_LOCAL, ends, 2147483647)
    for b0 in range(0, num_blocks, BLOCK_B):
        blocks = b0 + tl.arange(0, BLOCK_B)
        pos = blocks * BLOCK_M
        expert = tl.sum((ends[None, :] <= pos[:, None]).to(tl.int32), 1)
        tl.store(expert_ids_ptr + blocks, tl.where(pos < total, expert, -1), mask=blocks < num_blocks)
    for start in range(0, cap, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(sorted_ids_ptr + offs, tl.zeros((BLOCK,), dtype=tl.int32) + num_valid, mask=offs < cap)
    tl.debug_barrier()  # the cursors and the sentinel fill before any row is placed (one CTA)
    for start in range(0, num_valid, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < num_valid
        g = tl.load(ids_ptr + offs, mask=mask, other=-1).to(tl.int32)
        local = local_expert(g, emap_ptr, mask, E_GLOBAL, E_LOCAL, HAS_MAP)
        keep = local >= 0
        slot = tl.atomic_add(cursor_ptr + tl.where(keep, local, 0), 1, mask=keep)
        tl.store(sorted_ids_ptr + slot, offs, mask=keep)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _round_e4m3(v):
    """``v`` (|v| <= 448) rounded half-to-even onto the e4m3 grid, in float32 (so the cast after it
    is exact; the CPU interpreter's own float -> e4m3 cast loses the carry into the exponent)."""
    exp = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    ulp_exp = tl.maximum(exp, -6) - 3  # 3 mantissa bits; subnormals below 2^-6 share the ulp 2^-9
    magic = ((ulp_exp + 23 + 127) << 23).to(tl.float32, bitcast=True) * 1.5  # 1.5 * 2^23 * ulp
    return (v + magic) - magic


@triton.jit
def _load_row(x_row, cols, mask, stride_xp, PARTS: tl.constexpr, EVEN: tl.constexpr):
    """float32 sum of PARTS partial rows (split-K GEMM outputs) at ``x_row + p * stride_xp``."""
    x = tl.zeros(cols.shape, dtype=tl.float32)
    for p in tl.static_range(PARTS):
        if EVEN:
            x += tl.load(x_row + p * stride_xp + cols).to(tl.float32)
        else:
            x += tl.load(x_row + p * stride_xp + cols, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def act_quant(x_ptr, q_ptr, s_ptr, WIDTH, stride_xm, stride_xp, stride_qm, stride_sm,
              ACT: tl.constexpr, QUANT: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr,
              EVEN: tl.constexpr, PARTS: tl.constexpr):
    """Row ``pid(0)``, columns ``pid(1) * BLOCK ...``: ``y = act(x)`` (gated: ``x = [gate | up]`` of
    width ``2 * WIDTH``; x the sum of PARTS split-K partials ``stride_xp`` apart), computed in
    float32, then stored as a plain cast (Q_NONE) or as fp8 e4m3
    codes with one float32 scale per GROUP columns (Q_FP8_GROUP; a whole row when GROUP = BLOCK):
    ``scale = max(absmax, 1e-10) / 448``, ``q = fp8(clamp(y / scale, -448, 448))`` with true divisions,
    as moe_oracle.reference.activation_quant does."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < WIDTH
    x_row = x_ptr + row * stride_xm
    x = _load_row(x_row, cols, mask, stride_xp, PARTS, EVEN)
    if ACT == 1 or ACT == 2 or ACT == 3 or ACT == 4:  # noqa: PLR1714 (constexpr compares in a Triton kernel)
        up = _load_row(x_row + WIDTH, cols, mask, stride_xp, PARTS, EVEN)
    if ACT == 1:
        y = x * _sigmoid(x) * up
    elif ACT == 2:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476)) * up
    elif ACT == 3:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = 0.5 * x * (1.0 + (2.0 * _sigmoid(2.0 * inner) - 1.0)) * up
    elif ACT == 4:
        gate = tl.minimum(x, 7.0)
        upc = tl.minimum(tl.maximum(up, -7.0), 7.0)
        y = (upc + 1.0) * (gate * _sigmoid(1.702 * gate))
    elif ACT == 5:
        r = tl.maximum(x, 0.0)
        y = r * r
    elif ACT == 6:
        y = x * _sigmoid(x)
    elif ACT == 7:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:
        y = x
    q_row = q_ptr + row * stride_qm
    if QUANT == 0:
        if EVEN:
            tl.store(q_row + cols, y.to(q_ptr.dtype.element_ty))
        else:
            tl.store(q_row + cols, y.to(q_ptr.dtype.element_ty), mask=mask)
    else:
        y2 = tl.where(mask, y, 0.0).reshape(BLOCK // GROUP, GROUP)
        amax = tl.max(tl.abs(y2), 1)
        scale = tl.math.div_rn(tl.maximum(amax, 1e-10), tl.full(amax.shape, 448.0, tl.float32))
        q = tl.math.div_rn(y2, tl.broadcast_to(scale[:, None], y2.shape))
        q = _round_e4m3(tl.minimum(tl.maximum(q, -448.0), 448.0)).reshape(BLOCK).to(q_ptr.dtype.element_ty)
        if EVEN:
            tl.store(q_row + cols, q)
        else:
            tl.store(q_row + cols, q, mask=mask)
        groups = tl.program_id(1) * (BLOCK // GROUP) + tl.arange(0, BLOCK // GROUP)
        tl.store(s_ptr + row * stride_sm + groups, scale, mask=groups * GROUP < WIDTH)


# debug=True: compiled with its device assertion (Triton drops them otherwise)
@triton.jit(debug=True)
def reduce_topk(y_ptr, ids_ptr, emap_ptr, out_ptr, H, stride_ym, stride_yp, stride_om, E_GLOBAL, E_LOCAL,
                TOP_K: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK: tl.constexpr, PARTS: tl.constexpr):
    """``out[t] = sum_j y[t * TOP_K + j]`` over the slots j whose expert is local (others add 0);
    each y row the sum of PARTS split-K partials ``stride_yp`` apart. Asserts every id < E_GLOBAL
    (negative ids are padding)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < H
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        g = tl.load(ids_ptr + t * TOP_K + j).to(tl.int32)
        tl.device_assert(g < E_GLOBAL, "expert id out of range: every top-k id must be below the expert count")
        all_true = g == g  # noqa: PLR0124 (a mask of g's shape, all true)
        local = local_expert(g, emap_ptr, all_true, E_GLOBAL, E_LOCAL, HAS_MAP)
        width = tl.where(local >= 0, H, 0)  # a skipped slot reads nothing
        for p in tl.static_range(PARTS):
            acc += tl.load(y_ptr + p * stride_yp + (t * TOP_K + j) * stride_ym + cols, mask=cols < width, other=0.0)
    tl.store(out_ptr + t * stride_om + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)
