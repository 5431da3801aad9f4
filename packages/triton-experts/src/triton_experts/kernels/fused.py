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

Expert validity is one rule in all of them: a global id ``g`` is local expert ``expert_map[g]`` when
``0 <= g < E_GLOBAL`` and the map holds a value >= 0 (without a map: ``g`` itself when ``g < E_LOCAL``).
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
def _local_expert(g, emap_ptr, mask, E_GLOBAL, E_LOCAL, HAS_MAP: tl.constexpr):
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
        local = _local_expert(g, emap_ptr, mask, E_GLOBAL, E_LOCAL, HAS_MAP)
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
        local = _local_expert(g, emap_ptr, mask, E_GLOBAL, E_LOCAL, HAS_MAP)
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
def _load_sum(ptrs, mask, stride_p, PARTS: tl.constexpr, EVEN: tl.constexpr):
    """float32 sum of PARTS partial tiles (split-K GEMM outputs) at ``ptrs + p * stride_p``."""
    x = tl.zeros(ptrs.shape, dtype=tl.float32)
    for p in tl.static_range(PARTS):
        if EVEN:
            x += tl.load(ptrs + p * stride_p).to(tl.float32)
        else:
            x += tl.load(ptrs + p * stride_p, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def activation(x, up, ACT: tl.constexpr):
    """The expert activation in float32 on ``x`` (the gate half for the gated ACT codes, whose ``up``
    is the other half; ``up`` is unused otherwise)."""
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
    return y


@triton.jit
def act_tile(x_ptrs, up_offset, mask, stride_xp, ACT: tl.constexpr, PARTS: tl.constexpr, EVEN: tl.constexpr):
    """:func:`activation` of a tile of a GEMM1 output (each element the sum of PARTS split-K partials
    ``stride_xp`` apart); the gated codes read the up half at ``x_ptrs + up_offset``. float32."""
    x = _load_sum(x_ptrs, mask, stride_xp, PARTS, EVEN)
    if ACT == 1 or ACT == 2 or ACT == 3 or ACT == 4:  # noqa: PLR1714 (constexpr compares in a Triton kernel)
        up = _load_sum(x_ptrs + up_offset, mask, stride_xp, PARTS, EVEN)
    else:
        up = x
    return activation(x, up, ACT)


@triton.jit
def quant_fp8_groups(y, GROUP: tl.constexpr):
    """Dynamic fp8 e4m3 quantization of float32 ``y`` [R, C] per 1xGROUP group (C a multiple of GROUP;
    zeros in masked-off columns): ``scale = max(absmax, 1e-10) / 448``, ``q = clamp(y / scale, -448, 448)``
    rounded to the e4m3 grid, with true divisions, as moe_oracle.reference.activation_quant does.
    Returns (q [R, C] float32 on the e4m3 grid: its cast to e4m3 is exact, scale [R, C / GROUP])."""
    R: tl.constexpr = y.shape[0]
    C: tl.constexpr = y.shape[1]
    y3 = y.reshape(R, C // GROUP, GROUP)
    amax = tl.max(tl.abs(y3), 2)
    scale = tl.math.div_rn(tl.maximum(amax, 1e-10), tl.full(amax.shape, 448.0, tl.float32))
    q = tl.math.div_rn(y3, tl.broadcast_to(scale[:, :, None], y3.shape))
    return _round_e4m3(tl.minimum(tl.maximum(q, -448.0), 448.0)).reshape(R, C), scale


@triton.jit
def act_quant(x_ptr, q_ptr, s_ptr, WIDTH, stride_xm, stride_xp, stride_qm, stride_sm,
              ACT: tl.constexpr, QUANT: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr,
              EVEN: tl.constexpr, PARTS: tl.constexpr):
    """Row ``pid(0)``, columns ``pid(1) * BLOCK ...``: ``y = activation(x)`` (gated: ``x = [gate | up]``
    of width ``2 * WIDTH``; x the sum of PARTS split-K partials ``stride_xp`` apart), computed in
    float32, then stored as a plain cast (Q_NONE) or as fp8 e4m3 codes with one float32 scale per
    GROUP columns (Q_FP8_GROUP, :func:`quant_fp8_groups`; a whole row when GROUP = BLOCK)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < WIDTH
    y = act_tile(x_ptr + row * stride_xm + cols, WIDTH, mask, stride_xp, ACT, PARTS, EVEN)
    q_row = q_ptr + row * stride_qm
    if QUANT == 0:
        if EVEN:
            tl.store(q_row + cols, y.to(q_ptr.dtype.element_ty))
        else:
            tl.store(q_row + cols, y.to(q_ptr.dtype.element_ty), mask=mask)
    else:
        q, scale = quant_fp8_groups(tl.where(mask, y, 0.0).reshape(1, BLOCK), GROUP)
        q = q.reshape(BLOCK).to(q_ptr.dtype.element_ty)
        if EVEN:
            tl.store(q_row + cols, q)
        else:
            tl.store(q_row + cols, q, mask=mask)
        groups = tl.program_id(1) * (BLOCK // GROUP) + tl.arange(0, BLOCK // GROUP)
        tl.store(s_ptr + row * stride_sm + groups, scale.reshape(BLOCK // GROUP), mask=groups * GROUP < WIDTH)


@triton.jit
def sum_slots(y_ptr, ids_ptr, emap_ptr, t, cols, width, stride_ym, stride_yp, E_GLOBAL, E_LOCAL,
              TOP_K: tl.constexpr, HAS_MAP: tl.constexpr, PARTS: tl.constexpr, FROM_L2: tl.constexpr):
    """float32 ``sum_j y[t * TOP_K + j, cols]`` (columns below ``width``; others 0) over the slots j whose
    expert is local (others add 0),
    each y row the sum of PARTS split-K partials ``stride_yp`` apart; asserts every id < E_GLOBAL
    (negative ids are padding; the assertion exists in kernels compiled with debug). FROM_L2: read
    past L1 (rows other CTAs of the running kernel wrote)."""
    acc = tl.zeros(cols.shape, dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        g = tl.load(ids_ptr + t * TOP_K + j).to(tl.int32)
        tl.device_assert(g < E_GLOBAL, "expert id out of range: every top-k id must be below the expert count")
        all_true = g == g  # noqa: PLR0124 (a mask of g's shape, all true)
        local = _local_expert(g, emap_ptr, all_true, E_GLOBAL, E_LOCAL, HAS_MAP)
        keep = cols < tl.where(local >= 0, width, 0)  # a skipped slot reads nothing
        for p in tl.static_range(PARTS):
            ptrs = y_ptr + p * stride_yp + (t * TOP_K + j) * stride_ym + cols
            if FROM_L2:
                acc += tl.load(ptrs, mask=keep, other=0.0, cache_modifier=".cg").to(tl.float32)
            else:
                acc += tl.load(ptrs, mask=keep, other=0.0).to(tl.float32)
    return acc


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
    acc = sum_slots(y_ptr, ids_ptr, emap_ptr, t, cols, H, stride_ym, stride_yp, E_GLOBAL, E_LOCAL, TOP_K, HAS_MAP,
                    PARTS, False)
    tl.store(out_ptr + t * stride_om + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)
