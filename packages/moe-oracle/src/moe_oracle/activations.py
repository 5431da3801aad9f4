"""MoE expert activations: the gated (``act(gate) * up``) and non-gated variants.

Canonical layout: for a gated activation GEMM1's output row is ``[gate | up]``, gate in the
first half and up in the second (vLLM's ``[w1; w3]``). GPT-OSS checkpoints interleave gate and
up rows; that is undone when the weights are loaded, never here.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F

__all__ = ["Activation", "apply_activation"]

_ALIASES = {"relu2_no_mul": "relu2"}


class Activation(enum.Enum):
    """An expert activation; the value is the lower-case name engines use (``"silu"``).

    Gated members map ``[..., 2I] -> [..., I]``; the ``*_NO_MUL`` members and ``RELU2`` map
    ``[..., I] -> [..., I]`` (GEMM1 then holds only the up projection, ``w13`` is ``[E, I, H]``).
    ``Activation("relu2_no_mul")`` (vLLM's spelling) is accepted as ``RELU2``.
    """

    SILU = "silu"  # silu(gate) * up
    GELU = "gelu"  # gelu_erf(gate) * up
    GELU_TANH = "gelu_tanh"  # gelu_tanh(gate) * up
    SWIGLUOAI = "swigluoai"  # GPT-OSS clamped SwiGLU, see apply_activation
    RELU2 = "relu2"  # relu(x)^2, non-gated
    SILU_NO_MUL = "silu_no_mul"  # silu(x), non-gated
    GELU_NO_MUL = "gelu_no_mul"  # gelu_erf(x), non-gated

    @classmethod
    def _missing_(cls, value: object) -> Activation | None:
        if isinstance(value, str):
            text = value.strip().lower().replace("-", "_")
            text = _ALIASES.get(text, text)
            for member in cls:
                if member.value == text:
                    return member
        return None

    @property
    def is_gated(self) -> bool:
        """True when the activation consumes ``[gate | up]`` and halves the last dimension."""
        return self in _GATED

    def output_size(self, gemm1_out: int) -> int:
        """Width of the activation's output for a GEMM1 output of width ``gemm1_out``."""
        return gemm1_out // 2 if self.is_gated else gemm1_out

    def __str__(self) -> str:
        return self.value


_GATED = frozenset({Activation.SILU, Activation.GELU, Activation.GELU_TANH, Activation.SWIGLUOAI})


def apply_activation(
    activation: Activation,
    x: torch.Tensor,
    *,
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
) -> torch.Tensor:
    """Apply ``activation`` to GEMM1's output ``x``.

    Gated: ``x`` is ``[..., 2I]`` (gate first, up second) and the result ``[..., I]``.
    Non-gated: ``[..., I] -> [..., I]``. The arithmetic runs in ``x.dtype`` (so float64 in,
    float64 throughout); ``x`` is never modified.

    ``swiglu_alpha`` / ``swiglu_limit`` only affect ``SWIGLUOAI``:
    ``gate = min(gate, limit)``, ``up = clamp(up, -limit, limit)``,
    ``out = (up + 1) * gate * sigmoid(alpha * gate)``.
    """
    if not isinstance(activation, Activation):
        raise TypeError(f"activation must be an Activation, got {type(activation).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"apply_activation needs a floating-point tensor, got {kind}")
    if x.dim() == 0:
        raise ValueError("apply_activation needs a tensor with at least one dimension")

    if not activation.is_gated:
        if activation is Activation.RELU2:
            r = torch.relu(x)
            return r * r
        if activation is Activation.SILU_NO_MUL:
            return F.silu(x)
        return F.gelu(x)  # GELU_NO_MUL

    width = x.shape[-1]
    if width % 2 != 0:
        raise ValueError(f"gated activation {activation.value!r} needs an even last dimension [gate | up], got {width}")
    half = width // 2
    gate, up = x[..., :half], x[..., half:]
    if activation is Activation.SILU:
        return F.silu(gate) * up
    if activation is Activation.GELU:
        return F.gelu(gate) * up
    if activation is Activation.GELU_TANH:
        return F.gelu(gate, approximate="tanh") * up
    # SWIGLUOAI
    if not swiglu_limit > 0:
        raise ValueError(f"swiglu_limit must be positive, got {swiglu_limit}")
    gate = gate.clamp(max=swiglu_limit)
    up = up.clamp(min=-swiglu_limit, max=swiglu_limit)
    return (up + 1) * (gate * torch.sigmoid(swiglu_alpha * gate))
