"""Per-token-group FP8 activation quantization: the public function and its dispatch."""

from __future__ import annotations

import math

import torch

from .errors import InvalidInputError
from .fp8 import EPS, FP8_DTYPES, quant_max, representable_max
from .platform import LinearPlatform, QuantBackend, default_quant_backend, triton_options
from .reference import group_scales, quantize_groups
from .scale_layout import allocate_scale_storage
from .validation import FLOAT_INPUTS

GROUP_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)


def per_token_group_quant(
    x: torch.Tensor,
    group_size: int = 128,
    *,
    column_major: bool = False,
    ue8m0: bool = False,
    eps: float = EPS,
    dtype: torch.dtype | None = None,
    fp8_max: float | None = None,
    tma_aligned: bool = False,
    backend: QuantBackend | str | None = None,
    platform: LinearPlatform | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to FP8 with one float32 scale per token per ``group_size`` along K.

    Contract (vLLM's, so checkpoints and kernels interoperate), per group, in float32:
    ``scale = max(absmax, eps) / fp8_max``; with ``ue8m0`` the scale is rounded up to a power of
    two; ``q = fp8(clamp(x / scale, -fp8_max, fp8_max))`` (true division, round to nearest even).
    Dequantize with ``q * scale``.

    Args:
        x: bfloat16 / float16 / float32 [..., K], contiguous; K a multiple of ``group_size``.
        group_size: 128 by default; 16, 32, 64, 256 too.
        column_major: scales stored group-major (2-D strides ``(1, M)``), as cuBLAS and DeepGEMM
            want; ``tma_aligned`` pads that column stride to a multiple of 4 (16 bytes).
        ue8m0: power-of-two (UE8M0-representable) scales, still returned as float32.
        eps: floor of each group's absmax (1e-10).
        dtype: ``torch.float8_e4m3fn`` or ``torch.float8_e4m3fnuz`` (default: the platform's).
        fp8_max: the clamp bound (default 448 for e4m3fn, 224 for e4m3fnuz: vLLM's ROCm choice).
        backend: ``"triton"``, ``"custom_op"`` or ``"reference"`` (default: the platform's).
        platform: what to choose for (default: detected).

    Returns:
        ``(x_q, x_s)``: ``x_q`` of ``dtype`` shaped like ``x`` (contiguous; with the Triton and
        reference backends its storage holds ``round_up(M, 4)`` rows, the padding rows quantized
        zeros); ``x_s`` float32 of logical shape ``x.shape[:-1] + (K / group_size,)`` in the
        requested layout (see :mod:`fp8_linear.scale_layout`; ``tma_aligned`` padding entries hold
        ``eps / fp8_max``, the scale of an all-zero group).
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in GROUP_SIZES:
        raise InvalidInputError(f"group_size must be one of {list(GROUP_SIZES)}, got {group_size!r}")
    if x.dtype not in FLOAT_INPUTS:
        raise InvalidInputError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.ndim < 1:
        raise InvalidInputError("x must have at least one dim [..., K]")
    if not x.is_contiguous():
        raise InvalidInputError(f"x must be contiguous, got shape {list(x.shape)} strides {list(x.stride())}; "
                                "call .contiguous()")
    k = int(x.shape[-1])
    if k % group_size:
        raise InvalidInputError(f"K={k} (x's last dim) is not a multiple of group_size={group_size}")
    if tma_aligned and not column_major:
        raise InvalidInputError("tma_aligned=True pads column-major scales; it needs column_major=True")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (eps > 0 and math.isfinite(eps)):
        raise InvalidInputError(f"eps must be a positive finite float, got {eps!r}")
    platform = platform or _detected()
    dtype = platform.fp8_dtype if dtype is None else dtype
    if dtype not in FP8_DTYPES:
        raise InvalidInputError(f"dtype must be one of {list(FP8_DTYPES)}, got {dtype}")
    bound = quant_max(dtype) if fp8_max is None else fp8_max
    if not isinstance(bound, (int, float)) or isinstance(bound, bool) or not 0 < bound <= representable_max(dtype):
        raise InvalidInputError(f"fp8_max must lie in (0, {representable_max(dtype)}] for {dtype}, got {fp8_max!r}")
    chosen = _backend(backend, platform)
    return _quantize(x, group_size, column_major=column_major, tma_aligned=tma_aligned, ue8m0=ue8m0,
                     eps=float(eps), fp8_max=float(bound), dtype=dtype, backend=chosen, platform=platform)


def _detected() -> LinearPlatform:
    from .registry import detected_platform

    return detected_platform()


def _backend(backend: QuantBackend | str | None, platform: LinearPlatform) -> QuantBackend:
    if backend is None:
        return default_quant_backend(platform)
    try:
        chosen = backend if isinstance(backend, QuantBackend) else QuantBackend(backend)
    except ValueError:
        raise InvalidInputError(f"unknown quant backend {backend!r}; expected one of "
                                f"{[b.value for b in QuantBackend]}") from None
    if chosen is QuantBackend.TRITON and not platform.triton:
        raise InvalidInputError("quant backend 'triton' needs triton installed (pip install 'fp8-linear[triton]')")
    return chosen


def _quantize(
    x: torch.Tensor, group_size: int, *, column_major: bool, tma_aligned: bool, ue8m0: bool, eps: float,
    fp8_max: float, dtype: torch.dtype, backend: QuantBackend, platform: LinearPlatform,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated quantization (the module uses it directly).

    Triton and reference backends: ``x_q`` is a view of the first M rows of a ``[round_up(M, 4), K]``
    buffer whose padding rows hold the quantized zeros (+0 codes); TMA-aligned scales fill their
    padding entries with the zero group's scale ``eps / fp8_max`` (a power of two under UE8M0). So
    the cuBLAS path (M a multiple of 4) reads both without a copy. The custom op is unpadded."""
    lead = tuple(int(d) for d in x.shape[:-1])
    groups = int(x.shape[-1]) // group_size
    if backend is QuantBackend.CUSTOM_OP:
        from .custom_ops import per_token_group_quant_op

        q, s = per_token_group_quant_op(x, group_size, eps, fp8_max, ue8m0, column_major, tma_aligned, dtype)
        return q, s
    m = math.prod(lead)
    rows = -(-m // 4) * 4
    x_s, s2 = allocate_scale_storage(lead, groups, column_major=column_major, tma_aligned=tma_aligned,
                                     device=x.device)
    q_storage = torch.empty((rows, int(x.shape[-1])), dtype=dtype, device=x.device)
    x_q = q_storage[:m].view(x.shape)
    if m == 0 or groups == 0:
        return x_q, x_s
    x2 = x.view(m, -1)
    if backend is QuantBackend.REFERENCE:
        # the padding rows quantize zeros, as the Triton kernel's masked loads do
        xp = torch.cat((x2, x2.new_zeros((rows - m, x2.shape[1])))) if rows != m else x2
        scale = group_scales(xp, group_size, eps=eps, fp8_max=fp8_max, ue8m0=ue8m0)
        s2.copy_(scale[: s2.shape[0]])
        q_storage.copy_(quantize_groups(xp, scale, group_size, fp8_max=fp8_max, dtype=dtype))
        return x_q, x_s
    from .kernels.group_quant import launch_group_quant

    launch_group_quant(x2, q_storage, s2, group_size=group_size, eps=eps, fp8_max=fp8_max, ue8m0=ue8m0,
                       exact_rounding=triton_options(platform).exact_rounding)
    return x_q, x_s


def describe_backend(platform: LinearPlatform) -> str:
    """One line: who quantizes activations on ``platform`` and why."""
    choice = default_quant_backend(platform)
    why: dict[QuantBackend, str] = {
        QuantBackend.TRITON: "the Triton kernel",
        QuantBackend.CUSTOM_OP: "torch.ops.fp8_linear.per_token_group_quant (this Triton cannot convert to fp8e4nv)",
        QuantBackend.REFERENCE: "the torch reference (no Triton here)",
    }
    return f"{platform}: activation quant by {why[choice]}"
