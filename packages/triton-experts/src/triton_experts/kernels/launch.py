"""Thin launchers: validate once per shape, then run the generated grouped-GEMM variants and the
small fused kernels with as little per-call Python as possible.

:func:`plan_gemm` checks the weight operands and freezes everything about one GEMM that does not
change between calls (kernel, weight / scale / bias tensors and strides, constexprs);
:func:`run_gemm` launches it on one call's activations. :func:`grouped_gemm` does both (tuner,
tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..align import Alignment, DirectRows
from ..tuning import Kernel, LaunchConfig

_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# inline PTX (the 4-bit codes' prmt/lop3 dequantization) on NVIDIA GPUs only: not under the
# interpreter, not on ROCm (whose torch also reports its devices as "cuda")
_PTX = not _INTERPRETED and torch.version.hip is None
_DUMMIES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _dummies(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholders for absent operands (never read: the kernel's constexpr flags skip them)."""
    if device not in _DUMMIES:
        _DUMMIES[device] = (torch.zeros(1, device=device, dtype=torch.float32),
                            torch.zeros(1, 1, 1, device=device, dtype=torch.uint8))
    return _DUMMIES[device]


def fits_group(block_k: int, group: int) -> bool:
    """BLOCK_K divides the quantization group, or holds a power of two of whole groups."""
    if group % block_k == 0:
        return True
    q, r = divmod(block_k, group)
    return r == 0 and q & (q - 1) == 0


def gluon_unsupported(*, variant: str, weight: torch.Tensor, zero: torch.Tensor | None, group_k: int,
                      config: LaunchConfig) -> str:
    """Why the Gluon decode kernel of ``variant`` (``config.KERNEL``: per tile or persistent) cannot run
    this GEMM with ``config``'s tile ('' when it can): it needs 64-byte K tiles ``[E, K/128, N, 64]``
    (contiguous), groups of 128 k, zero points, BLOCK_K 128 with BLOCK_M 16 (aligned blocks) or 1
    (direct rows) and an NVIDIA GPU of sm80 or newer; the persistent form also SPLIT_K dividing K / 128
    (see ``_generated_gluon.py``)."""
    from ._generated_gluon import GLUON_KERNELS

    need = []
    if variant not in GLUON_KERNELS:
        need.append(f"a variant with a Gluon kernel ({sorted(GLUON_KERNELS)})")
    if config.BLOCK_M not in (16, 1) or config.BLOCK_K != 128:
        need.append(f"BLOCK_M=16 (aligned blocks) or 1 (direct rows) and BLOCK_K=128 (got {config.BLOCK_M} and "
                    f"{config.BLOCK_K})")
    k_steps = weight.shape[1] if weight.dim() == 4 else 0
    if config.KERNEL is Kernel.GLUON_PERSISTENT and k_steps and k_steps % config.SPLIT_K:
        need.append(f"SPLIT_K dividing the {k_steps} K tiles (got SPLIT_K={config.SPLIT_K})")
    if weight.dim() != 4 or weight.shape[-1] != 64 or not weight.is_contiguous():
        need.append(f"contiguous 64-byte K tiles [E, K/128, N, 64] (got shape {list(weight.shape)}, strides "
                    f"{weight.stride()})")
    if group_k != 128:
        need.append(f"groups of 128 k (got {group_k})")
    if zero is None:
        need.append("zero points (the symmetric offset where the checkpoint has none)")
    if _INTERPRETED or not weight.is_cuda or torch.version.hip is not None \
            or torch.cuda.get_device_capability(weight.device) < (8, 0):
        need.append(f"an NVIDIA GPU of sm80 or newer, not the interpreter (weights on {weight.device})")
    return f"{variant}: KERNEL={config.KERNEL.value} needs " + "; ".join(need) if need else ""


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


@dataclass(frozen=True)
class GemmPlan:
    """What one grouped GEMM launch needs besides the call's activations (see :func:`plan_gemm`)."""

    kernel: object
    variant: str
    n: int
    k: int
    top_k: int
    config: LaunchConfig
    weight_args: tuple  # weight, scale, zero, bias pointers
    weight_strides: tuple  # weight (4: expert, K tile, n, k), scale (3), bias (2)
    k_tile: int  # bytes per row of a K tile of packed 4-bit weights; 0: untiled rows
    has_bias: bool
    group_k: int
    even_k: bool
    n_blocks: int


def plan_gemm(*, variant: str, weight: torch.Tensor, scale: torch.Tensor | None, zero: torch.Tensor | None,
              bias: torch.Tensor | None, top_k: int, n: int, k: int, group_k: int,
              config: LaunchConfig) -> GemmPlan:
    """Validate the weight side of a grouped GEMM and freeze it. ``weight`` [E, N, K]; packed 4-bit:
    [E, N, K/2] rows or [E, K/2/T, N, T] K tiles of T bytes (see the kernels' module docstring)."""
    from ._generated_moe import KERNELS, VARIANTS

    kernel = KERNELS[variant]
    meta = VARIANTS[variant]
    packed = meta["bits"] == 4
    k_stored = k // 2 if packed else k
    if weight.dim() == 4 and packed:
        k_tile = weight.shape[-1]
        expected = (weight.shape[0], k_stored // k_tile, n, k_tile)
        if k_stored % k_tile or tuple(weight.shape) != expected:
            raise ValueError(f"{variant}: K-tiled weights must be [E, K/2/T, N, T] = {list(expected)} for "
                             f"N={n}, K={k}, got {list(weight.shape)}")
        if k_tile & (k_tile - 1) or k_tile < 16 or weight.stride(1) % k_tile or weight.stride(2) % 16:
            raise ValueError(f"{variant}: K tiles must be a power of two of at least 16 bytes, with tile and row "
                             f"strides multiples of it and of 16; got T={k_tile}, strides {weight.stride()}")
        w_strides = (weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3))
    elif weight.dim() == 3 and tuple(weight.shape[1:]) == (n, k_stored):
        k_tile = 0
        w_strides = (weight.stride(0), 0, weight.stride(1), weight.stride(2))
    else:
        form = "[E, N, K/2] or [E, K/2/T, N, T]" if packed else "[E, N, K]"
        raise ValueError(f"{variant}: weights must be {form} for N={n}, K={k}, got {list(weight.shape)}")
    if weight.stride(-1) != 1:
        raise ValueError("weights must be contiguous along K")
    bk = config.BLOCK_K
    bm = config.BLOCK_M
    if bm < 1 or bm & (bm - 1):
        raise ValueError(f"BLOCK_M={bm} must be a power of two (1-8: CUDA-core multiply-adds, 1: no alignment; "
                         "16 and up: tensor-core dots)")
    if meta["k_granule"] and meta["k_granule"] % bk:
        raise ValueError(f"{variant}: BLOCK_K={bk} must divide the {meta['k_granule']}-wide scale groups")
    packed_or_grouped = meta["b"] in ("int_group", "mxfp4")
    if meta["b"] == "int_group" and not fits_group(bk, group_k):
        raise ValueError(f"{variant}: BLOCK_K={bk} must divide the quantization group {group_k} or be a "
                         "power-of-two multiple of it")
    if packed_or_grouped and k % bk:
        raise ValueError(f"{variant}: BLOCK_K={bk} must divide K={k}")
    if not 1 <= config.SPLIT_K <= triton_cdiv(k, bk):
        raise ValueError(f"SPLIT_K={config.SPLIT_K} must be between 1 and the {triton_cdiv(k, bk)} K steps of "
                         f"K={k} in BLOCK_K={bk}")
    if config.KERNEL.is_gluon:
        from ._generated_gluon import GLUON_KERNELS, GLUON_PERSISTENT_KERNELS

        refusal = gluon_unsupported(variant=variant, weight=weight, zero=zero, group_k=group_k, config=config)
        if refusal:
            raise ValueError(refusal)
        kernel = (GLUON_PERSISTENT_KERNELS if config.KERNEL is Kernel.GLUON_PERSISTENT else GLUON_KERNELS)[variant]
    dummy, dummy_u8 = _dummies(weight.device)
    s = scale if scale is not None else dummy
    z = zero if zero is not None else dummy_u8
    b = bias if bias is not None else dummy
    s3 = s if s.dim() == 3 else (s.reshape(s.shape[0], -1, 1) if s.dim() == 2 else s.reshape(-1, 1, 1))
    b2 = b if b.dim() == 2 else b.reshape(1, -1)
    if zero is not None and zero.stride() != s3.stride():
        raise ValueError("zero points must share the scales' strides")
    return GemmPlan(
        kernel=kernel, variant=variant, n=n, k=k, top_k=top_k, config=config,
        weight_args=(weight, s, z, b),
        weight_strides=(*w_strides, s3.stride(0), s3.stride(1), s3.stride(2), b2.stride(0), b2.stride(1)),
        k_tile=k_tile,
        has_bias=bias is not None, group_k=group_k, even_k=k % bk == 0,
        n_blocks=triton_cdiv(n, config.BLOCK_N),
    )


def gemm_out_shape(config: LaunchConfig, *, rows: int, n: int) -> tuple[int, ...]:
    """What a GEMM launch writes: [rows, N], or [SPLIT_K, rows, N] partials."""
    return (rows, n) if config.SPLIT_K == 1 else (config.SPLIT_K, rows, n)


def new_gemm_out(plan: GemmPlan, *, rows: int, dtype: torch.dtype, device: torch.device,
                 alloc=torch.empty) -> torch.Tensor:
    """An output buffer for ``plan``: [rows, N] in ``dtype``, or [SPLIT_K, rows, N] float32 partials."""
    return alloc(gemm_out_shape(plan.config, rows=rows, n=plan.n), device=device,
                 dtype=dtype if plan.config.SPLIT_K == 1 else torch.float32)


@dataclass(frozen=True)
class _RowSource:
    """Where a GEMM launch takes its rows from, as both kernel families' arguments spell it: the
    (sorted ids, expert ids, padded length, expert map) pointers, the row blocks of the grid (a host
    bound for an alignment), the global / local expert counts and the DIRECT / HAS_MAP constexprs.
    Direct rows pass the flat top-k ids where the alignment's arrays go (the kernels read only the
    expert-id slot and the map)."""

    pointers: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    blocks: int
    e_global: int
    e_local: int
    direct: bool
    has_map: bool

    @staticmethod
    def of(alignment: Alignment | DirectRows, *, block_m: int) -> _RowSource:
        if isinstance(alignment, DirectRows):
            ids, emap = alignment.topk_ids, alignment.expert_map
            return _RowSource(pointers=(ids, ids, ids, emap if emap is not None else ids), blocks=alignment.num_valid,
                              e_global=alignment.num_experts, e_local=alignment.num_local_experts, direct=True,
                              has_map=emap is not None)
        padded = alignment.num_post_padded
        return _RowSource(pointers=(alignment.sorted_ids, alignment.expert_ids, padded, padded),
                          blocks=alignment.sorted_ids.shape[0] // block_m, e_global=0, e_local=0, direct=False,
                          has_map=False)


def run_gemm(plan: GemmPlan, *, a: torch.Tensor, a_scale: torch.Tensor | None, out: torch.Tensor,
             topk_weights: torch.Tensor | None, alignment: Alignment | DirectRows) -> object:
    """``out[row, :n] = A[row // top_k] @ W[e].T`` (scaled, + bias, * top-k weight) for every aligned
    row (every row of a local expert, for :class:`DirectRows`); other rows are left untouched. With
    SPLIT_K > 1 ``out`` is [SPLIT_K, rows, N] and holds partials that sum to that. Shapes are the
    caller's contract (:func:`grouped_gemm` checks them). Returns Triton's launch handle (``.asm``
    holds the compiled code, for diagnostics)."""
    c = plan.config
    weight, s, z, b = plan.weight_args
    dummy = _dummies(a.device)[0] if (a_scale is None or topk_weights is None) else None
    if c.KERNEL.is_gluon:
        return _run_gluon(plan, a=a, out=out, topk_weights=topk_weights, alignment=alignment)
    a_s = a_scale if a_scale is not None else dummy
    if a_s.dim() == 2:
        sa0, sa1 = a_s.stride(0), a_s.stride(1)
    else:
        sa0, sa1 = a_s.stride(0) if a_s.numel() > 1 else 0, 0
    ws = plan.weight_strides
    r = _RowSource.of(alignment, block_m=c.BLOCK_M)
    return plan.kernel[(r.blocks * plan.n_blocks * c.SPLIT_K,)](
        a, a_s, weight, s, z, b, out, topk_weights if topk_weights is not None else dummy,
        *r.pointers,
        plan.n, plan.k, alignment.num_valid, r.blocks, r.e_global, r.e_local,
        a.stride(0), a.stride(1), sa0, sa1,
        ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6], ws[7], ws[8],
        out.stride(-2), out.stride(-1), out.stride(0) if out.dim() == 3 else 0,
        GROUP_K=plan.group_k, TOP_K=plan.top_k, MUL_WEIGHT=topk_weights is not None, HAS_BIAS=plan.has_bias,
        DOT_UPCAST=_INTERPRETED and a.dtype in (torch.bfloat16, torch.float16), PTX=_PTX and a.is_cuda,
        EVEN_K=plan.even_k,
        BLOCK_M=c.BLOCK_M, BLOCK_N=c.BLOCK_N, BLOCK_K=c.BLOCK_K, GROUP_M=c.GROUP_M, K_TILE=plan.k_tile, SPLIT_K=c.SPLIT_K,
        DIRECT=r.direct, HAS_MAP=r.has_map,
        # the K loop's explicit pipelining: the CUDA-core path's loads are pipelined only when asked; the
        # tensor-core path keeps Triton's default, which ran 5% faster on the H100 than the explicit form
        LOOP_STAGES=c.num_stages if c.BLOCK_M < 16 else None,
        num_warps=c.num_warps, num_stages=c.num_stages,
    )


def _run_gluon(plan: GemmPlan, *, a: torch.Tensor, out: torch.Tensor, topk_weights: torch.Tensor | None,
               alignment: Alignment | DirectRows) -> object:
    """:func:`run_gemm` for a Gluon plan: A is read as int32 (even, odd) k pairs, so it must be 16-bit,
    K-contiguous, with an even row stride and a 4-byte aligned base. BLOCK_M 1 runs direct rows (one
    real row per 16-row mma tile), BLOCK_M 16 the alignment's blocks."""
    if a.dtype not in (torch.bfloat16, torch.float16) or a.stride(-1) != 1 or a.stride(0) % 2 or a.data_ptr() % 4:
        raise ValueError(f"KERNEL=gluon needs bf16/fp16 activations, K-contiguous with an even row stride and a "
                         f"4-byte aligned base; got {a.dtype}, strides {a.stride()}")
    c = plan.config
    weight, s, z, b = plan.weight_args
    ws = plan.weight_strides
    tw = topk_weights if topk_weights is not None else _dummies(a.device)[0]
    r = _RowSource.of(alignment, block_m=c.BLOCK_M)
    tiles = r.blocks * plan.n_blocks * c.SPLIT_K
    args = (a, weight, s, z, b, out, tw, *r.pointers,
            plan.n, plan.k, plan.k // 128, alignment.num_valid, r.e_global, r.e_local,
            a.stride(0), ws[4], ws[5], ws[6], ws[7], ws[8], out.stride(-2), out.stride(-1),
            out.stride(0) if out.dim() == 3 else 0)
    consts = dict(TOP_K=plan.top_k, MUL_WEIGHT=topk_weights is not None, HAS_BIAS=plan.has_bias, BLOCK_N=c.BLOCK_N,
                  SPLIT_K=c.SPLIT_K, STAGES=c.num_stages, WARPS=c.num_warps, DIRECT=r.direct, HAS_MAP=r.has_map,
                  num_warps=c.num_warps)
    if c.KERNEL is Kernel.GLUON_PERSISTENT:
        tiles = min(tiles, persistent_grid(plan.kernel, args, consts, shape=(plan.n, plan.k), a=a, out=out))
    return plan.kernel[(tiles,)](*args, **consts)


_RESIDENT: dict[tuple, int] = {}


def persistent_grid(kernel, args: tuple, consts: dict, *, shape: tuple[int, int], a: torch.Tensor,
                    out: torch.Tensor) -> int:
    """Programs of a persistent launch: the CTAs of ``kernel`` (compiled for ``args`` and ``consts``) that
    fit on the device at once, from its registers and shared memory; cached per what selects the
    compiled kernel: the GEMM's (N, K) ``shape`` (compile-time constants there), the dtypes of ``a``
    and ``out``, the device and the constexprs."""
    key = (kernel, a.device, a.dtype, out.dtype, shape, tuple(sorted(consts.items())))
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **consts)
        compiled._init_handles()
        props = torch.cuda.get_device_properties(a.device)
        warps = consts["num_warps"]
        regs_per_warp = -(-compiled.n_regs * 32 // 256) * 256  # allocated per warp in units of 256
        by_regs = getattr(props, "regs_per_multiprocessor", 65536) // regs_per_warp // warps
        smem_sm = getattr(props, "shared_memory_per_multiprocessor", 233472)
        by_smem = smem_sm // (compiled.metadata.shared + 1024)  # 1 KB reserved per CTA
        per_sm = max(1, min(by_regs, by_smem, 64 // warps, 32))
        _RESIDENT[key] = per_sm * props.multi_processor_count
    return _RESIDENT[key]


def grouped_gemm(
    *,
    variant: str,
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    zero: torch.Tensor | None,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    topk_weights: torch.Tensor | None,
    alignment: Alignment | DirectRows,
    top_k: int,
    n: int,
    k: int,
    group_k: int,
    config: LaunchConfig,
) -> None:
    """``out[row, :n] (+)= A[row // top_k] @ W[e].T`` for every aligned row (see the kernels' docstring).

    ``a`` [M, K] (quantized per variant), ``weight`` as :func:`plan_gemm` takes it, ``out``
    [M * top_k, N]; rows not listed in the alignment (not of a local expert, for
    :class:`DirectRows`) are left untouched.
    """
    if a.dim() != 2 or a.shape[1] != k:
        raise ValueError(f"A must be [M, {k}], got {list(a.shape)}")
    expected = gemm_out_shape(config, rows=a.shape[0] * top_k, n=n)
    if out.shape != expected:
        raise ValueError(f"out must be {list(expected)} (SPLIT_K={config.SPLIT_K}), got {list(out.shape)}")
    if alignment.block_m != config.BLOCK_M:
        kind = "direct rows (no alignment) serve" if isinstance(alignment, DirectRows) else "the alignment serves"
        raise ValueError(f"{kind} BLOCK_M={alignment.block_m}, not BLOCK_M={config.BLOCK_M}")
    plan = plan_gemm(variant=variant, weight=weight, scale=scale, zero=zero, bias=bias, top_k=top_k, n=n, k=k,
                     group_k=group_k, config=config)
    run_gemm(plan, a=a, a_scale=a_scale, out=out, topk_weights=topk_weights, alignment=alignment)
