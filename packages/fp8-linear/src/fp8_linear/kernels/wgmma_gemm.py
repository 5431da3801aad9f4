"""Launch the Gluon Hopper kernels (``_generated_wgmma``): where they can run, and the launch.

:func:`wgmma_unusable` says why the kernel cannot take a call (None when it can); the caller then
runs the pointer kernel instead. The kernel needs, beyond what :func:`fp8_linear.validation.check_gemm`
already guarantees: an sm90 GPU (wgmma exists only there), native float8_e4m3fn operands, a Triton
with Gluon, 128 x 128 weight blocks, float32 scales, and what TMA descriptors need (16-byte aligned
bases and row strides, a contiguous output).
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import torch
import triton

from ..platform import TritonOptions
from ..problem import GemmProblem
from ..tuned import WGMMA_TILE, GemmConfig
from ..validation import GemmOperands

CONSUMER_REGS = 232  # registers per thread of the two consumer warpgroups (the producer warp gets 40)
_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@lru_cache(maxsize=1)
def _generated() -> ModuleType | None:
    try:
        from . import _generated_wgmma
    except ImportError:  # a Triton without Gluon
        return None
    return _generated_wgmma


@lru_cache(maxsize=8)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0 and (t.dim() < 2 or (t.stride(0) * t.element_size()) % 16 == 0)


def wgmma_unusable(ops: GemmOperands, problem: GemmProblem, options: TritonOptions, out: torch.Tensor,
                   a_s: torch.Tensor, w_s: torch.Tensor) -> str | None:
    """Why the Gluon kernel cannot run this call, or None when it can."""
    a = ops.a
    if a.device.type != "cuda" or getattr(torch.version, "hip", None):
        return "needs a CUDA GPU"
    if torch.cuda.get_device_capability(a.device)[0] != 9:
        return "wgmma exists only on sm90"
    if options.fp8_as_bytes or a.dtype != torch.float8_e4m3fn or ops.w.dtype != torch.float8_e4m3fn:
        return "needs native float8_e4m3fn operands"
    module = _generated()
    if module is None or problem.variant.name not in module.WGMMA_KERNELS:
        return f"no Gluon kernel for the {problem.variant.name} variant in this Triton"
    if problem.block_size != (WGMMA_TILE, WGMMA_TILE):
        return f"needs {WGMMA_TILE} x {WGMMA_TILE} weight blocks, got {problem.block_size}"
    if a_s.dtype != torch.float32 or w_s.dtype != torch.float32 or a_s.dim() != 2 or w_s.dim() != 2:
        return "needs 2-D float32 scales"
    if out.dtype not in _OUT_DTYPES or not out.is_contiguous():
        return "needs a contiguous bf16, fp16 or float32 output"
    if not (_aligned(a) and _aligned(ops.w) and _aligned(out)):
        return "TMA needs 16-byte aligned bases and row strides (N a multiple of 8 for a 16-bit output)"
    return None


def wgmma_gemm(ops: GemmOperands, problem: GemmProblem, config: GemmConfig, a_s: torch.Tensor, w_s: torch.Tensor,
               out: torch.Tensor) -> None:
    """Write ``out`` [M, N] with the Gluon kernel (the caller checked :func:`wgmma_unusable`)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    module = _generated()
    assert module is not None
    m, n, k = problem.m, problem.n, problem.k
    tile = WGMMA_TILE
    fp8 = gl.NVMMASharedLayout.get_default_for([tile, tile], gl.float8e4nv)
    out_gl = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}[out.dtype]
    a_desc = TensorDescriptor.from_tensor(ops.a, [tile, tile], fp8)
    w_desc = TensorDescriptor.from_tensor(ops.w, [tile, tile], fp8)
    c_desc = TensorDescriptor.from_tensor(out, [tile // 2, tile],
                                          gl.NVMMASharedLayout.get_default_for([tile // 2, tile], out_gl))
    index = ops.a.device.index if ops.a.device.index is not None else torch.cuda.current_device()
    programs = min(triton.cdiv(m, tile) * triton.cdiv(n, tile), _num_sms(index))
    bias = ops.bias if ops.bias is not None else out  # never read without HAS_BIAS
    module.WGMMA_KERNELS[problem.variant.name][(programs,)](
        a_desc, w_desc, c_desc, a_s, w_s, bias, m, n, k,
        a_s.stride(0), a_s.stride(1), w_s.stride(0), w_s.stride(1),
        HAS_BIAS=ops.bias is not None, GROUP_M=config.group_m, STAGES=config.num_stages, NUM_PROGRAMS=programs,
        CONSUMER_REGS=CONSUMER_REGS, num_warps=4,
    )
