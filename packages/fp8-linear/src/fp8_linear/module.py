"""``Fp8BlockLinear``: an inference linear layer over a block-FP8 checkpoint weight."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from weight_layouts import FormatError, get_format

from ._generated_variants import Granularity
from .errors import InvalidInputError
from .fp8 import E4M3FNUZ, quant_max, to_fnuz
from .gemm import run_choice
from .platform import LinearPlatform, default_quant_backend
from .problem import OUT_DTYPES, GemmProblem
from .quant import _quantize
from .registry import KernelChoice, detected_platform, select_kernel
from .validation import FLOAT_INPUTS, GemmOperands, check_block_size
from .variant_types import ScaleDtype


class Fp8BlockLinear(torch.nn.Module):
    """``y = x @ W^T + b`` with ``W`` stored as block FP8 (DeepSeek-V3 / Qwen3-FP8 checkpoints).

    Buffers: ``weight`` FP8 [N, K]; ``weight_scale_inv`` float32 [ceil(N/bn), K/bk] (a multiplier,
    despite its name: ``W = fp8 * scale`` per block); ``bias`` [N] or None. On ROCm gfx94x the
    weight is converted to float8_e4m3fnuz at construction (exact). Each forward quantizes ``x``
    per token per bk (dynamic, vLLM's contract) in the scale layout the chosen kernel reads best,
    then runs the kernel the registry selects for this M (or ``kernel``).

    ``x``: [..., K] bfloat16 / float16 / float32 (any strides); output [..., N] of ``out_dtype``
    (default: ``x.dtype``).
    """

    weight: torch.Tensor
    weight_scale_inv: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale_inv: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        block_size: tuple[int, int] = (128, 128),
        out_dtype: torch.dtype | None = None,
        kernel: str | None = None,
        platform: LinearPlatform | None = None,
    ) -> None:
        super().__init__()
        bn, bk = check_block_size(block_size)
        try:
            shape = get_format("fp8-block").validate({"weight": weight, "weight_scale_inv": weight_scale_inv},
                                                     block_size=(bn, bk))
        except FormatError as exc:
            raise InvalidInputError(f"Fp8BlockLinear: {exc}") from exc
        if shape.batch:
            raise InvalidInputError(f"Fp8BlockLinear: weight must be 2-D [N, K], got shape {list(weight.shape)}")
        if shape.k % bk:
            raise InvalidInputError(f"Fp8BlockLinear: K={shape.k} is not a multiple of bk={bk}; activation groups "
                                    "of 1 x bk must be whole")
        if out_dtype is not None and out_dtype not in OUT_DTYPES:
            raise InvalidInputError(f"out_dtype must be one of {list(OUT_DTYPES)}, got {out_dtype}")
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (shape.n,)
                                 or bias.dtype not in FLOAT_INPUTS):
            got = f"{list(bias.shape)} {bias.dtype}" if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise InvalidInputError(f"bias must be a float tensor [N={shape.n}], got {got}")
        self.in_features, self.out_features = shape.k, shape.n
        self.block_size = (bn, bk)
        self.out_dtype = out_dtype
        self.kernel = kernel
        self.platform = platform
        w = weight.detach().contiguous()
        s = weight_scale_inv.detach().to(torch.float32).contiguous()
        if self._platform().fp8_dtype == E4M3FNUZ and w.dtype != E4M3FNUZ:
            w, s = to_fnuz(w, s)
        self.register_buffer("weight", w)
        self.register_buffer("weight_scale_inv", s)
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous())

    @classmethod
    def from_checkpoint(cls, tensors: Mapping[str, torch.Tensor], *, prefix: str = "",
                        block_size: tuple[int, int] = (128, 128), **kwargs: object) -> Fp8BlockLinear:
        """From a checkpoint's ``{prefix}weight``, ``{prefix}weight_scale_inv`` and optional ``{prefix}bias``."""
        missing = [n for n in ("weight", "weight_scale_inv") if prefix + n not in tensors]
        if missing:
            raise InvalidInputError(f"checkpoint tensors lack {[prefix + n for n in missing]}; have {sorted(tensors)}")
        return cls(tensors[prefix + "weight"], tensors[prefix + "weight_scale_inv"], tensors.get(prefix + "bias"),
                   block_size=block_size, **kwargs)  # type: ignore[arg-type]

    def _platform(self) -> LinearPlatform:
        return self.platform or detected_platform()

    def extra_repr(self) -> str:
        bn, bk = self.block_size
        return (f"in_features={self.in_features}, out_features={self.out_features}, block_size=({bn}, {bk}), "
                f"bias={self.bias is not None}, weight={self.weight.dtype}")

    def choice(self, m: int, out_dtype: torch.dtype) -> KernelChoice:
        """The kernel selection for a batch of ``m`` tokens (explain() says why)."""
        problem = GemmProblem(m=m, n=self.out_features, k=self.in_features, granularity=Granularity.BLOCK,
                              block_size=self.block_size, fp8_dtype=self.weight.dtype, scale_dtype=ScaleDtype.FLOAT32,
                              out_dtype=out_dtype, has_bias=self.bias is not None)
        return select_kernel(problem, platform=self._platform(), force=self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_INPUTS:
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidInputError(f"Fp8BlockLinear input must be a bfloat16 / float16 / float32 tensor, got {got}")
        k = self.in_features
        if x.ndim < 1 or int(x.shape[-1]) != k:
            raise InvalidInputError(f"Fp8BlockLinear expects [..., {k}], got shape {list(x.shape)}")
        lead = tuple(int(d) for d in x.shape[:-1])
        x2 = x.reshape(-1, k).contiguous()
        out_dtype = self.out_dtype or x.dtype
        choice = self.choice(int(x2.shape[0]), out_dtype)
        platform = choice.platform
        column_major = choice.implementation.column_major_scales
        # tma_aligned: scale columns padded to round_up(M, 4), which cuBLAS reads without a copy
        x_q, x_s = _quantize(x2, self.block_size[1], column_major=column_major,
                             tma_aligned=column_major, ue8m0=False, eps=1e-10, fp8_max=quant_max(self.weight.dtype),
                             dtype=self.weight.dtype, backend=default_quant_backend(platform), platform=platform)
        ops = GemmOperands(a=x_q, a_s=x_s, w=self.weight, w_s=self.weight_scale_inv, bias=self.bias,
                           out_shape=(*lead, self.out_features))
        return run_choice(choice, ops).reshape(ops.out_shape)
