"""The experts of one MoE layer, stacked over experts, in one format and one layout.

Canonical orientation (what :func:`weight_layouts.load_experts` returns, layout ``"canonical"``):

* ``w13``: gate and up projections fused, ``[E, 2I, H]`` logically: rows ``[0, I)`` are the
  gate projection (``gate_proj`` / ``w1``) and rows ``[I, 2I)`` the up projection (``up_proj``
  / ``w3``). GPT-OSS's interleaved rows are de-interleaved at load. Non-gated experts have
  ``[E, I, H]``.
* ``w2``: the down projection, ``[E, H, I]``.
* Each projection is stored in its checkpoint format (``StackedWeight.format``) with the
  format's own tensor names, every tensor carrying a leading expert dim ``E``.
* Biases, when present, are ``[E, 2I]`` and ``[E, H]`` in the model dtype.
* Static activation scales (schemes whose activation key is static), when present, are float32
  ``[1]``: ``a13_scale`` for GEMM1's input, ``a2_scale`` for GEMM2's input, each the maximum of
  the checkpoint's per-expert ``input_scale`` values (kernels take one scale per GEMM input).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from quantkeys import QuantKey

CANONICAL = "canonical"


def _freeze(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, kw_only=True)
class StackedWeight:
    """One projection of ``num_experts`` experts: format tensors with a leading expert dim.

    ``rows`` x ``cols`` is the logical ``[out, in]`` shape of one expert's matrix.
    """

    format: str
    tensors: Mapping[str, torch.Tensor]
    params: Mapping[str, Any] = field(default_factory=dict)
    rows: int
    cols: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", _freeze(self.tensors))
        object.__setattr__(self, "params", _freeze(self.params))
        sizes = {name: int(t.shape[0]) for name, t in self.tensors.items() if t.dim() > 0}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{self.format} tensors disagree on the expert count (dim 0): {sizes}")

    @property
    def num_experts(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def dequantize(self, *, experts: slice | None = None) -> torch.Tensor:
        """Dense float32 ``[E, rows, cols]`` (or a slice of the experts)."""
        from .formats import decode

        tensors = self.tensors if experts is None else {k: v[experts] for k, v in self.tensors.items()}
        return decode(self.format, tensors, **self.params)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to(self, device: torch.device | str) -> StackedWeight:
        return replace(self, tensors={k: v.to(device) for k, v in self.tensors.items()})


@dataclass(frozen=True, kw_only=True)
class ExpertWeights:
    """A MoE layer's experts (see the module docstring for orientation and order).

    ``layout`` names the layout the tensors are in; :func:`weight_layouts.to_layout` converts
    between layouts and is a no-op when the layout is already the target.
    """

    w13: StackedWeight
    w2: StackedWeight
    weight_key: QuantKey | None
    activation_key: QuantKey | None
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None
    a13_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    gated: bool = True
    layout: str = CANONICAL
    # Backend-specific extras a layout adds (e.g. a kernel's preprocessed tensors); canonical has none.
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extras", _freeze(self.extras))
        e = self.w13.num_experts
        if self.w2.num_experts != e:
            raise ValueError(f"w13 has {e} experts but w2 has {self.w2.num_experts}")
        hidden, inter = self.w13.cols, self.w2.cols
        expected_rows = 2 * inter if self.gated else inter
        if self.w13.rows != expected_rows or self.w2.rows != hidden:
            raise ValueError(
                f"inconsistent expert shapes: w13 [{self.w13.rows}, {self.w13.cols}], w2 [{self.w2.rows}, "
                f"{self.w2.cols}]; expected w13 [{expected_rows}, H] and w2 [H, I] with H={hidden}, I={inter}"
            )
        if self.w13_bias is not None and tuple(self.w13_bias.shape) != (e, self.w13.rows):
            raise ValueError(f"w13_bias shape {tuple(self.w13_bias.shape)}, expected {(e, self.w13.rows)}")
        if self.w2_bias is not None and tuple(self.w2_bias.shape) != (e, hidden):
            raise ValueError(f"w2_bias shape {tuple(self.w2_bias.shape)}, expected {(e, hidden)}")

    @property
    def num_experts(self) -> int:
        return self.w13.num_experts

    @property
    def hidden_size(self) -> int:
        return self.w13.cols

    @property
    def intermediate_size(self) -> int:
        return self.w2.cols

    def dequantize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense float32 ``(w13 [E, 2I, H], w2 [E, H, I])`` from the canonical tensors."""
        if self.layout != CANONICAL:
            raise ValueError(f"dequantize() reads canonical tensors; these are in layout {self.layout!r}")
        return self.w13.dequantize(), self.w2.dequantize()

    def nbytes(self) -> int:
        total = self.w13.nbytes() + self.w2.nbytes()
        for bias in (self.w13_bias, self.w2_bias):
            if bias is not None:
                total += bias.numel() * bias.element_size()
        return total

    def to(self, device: torch.device | str) -> ExpertWeights:
        return replace(
            self,
            w13=self.w13.to(device),
            w2=self.w2.to(device),
            w13_bias=None if self.w13_bias is None else self.w13_bias.to(device),
            w2_bias=None if self.w2_bias is None else self.w2_bias.to(device),
            a13_scale=None if self.a13_scale is None else self.a13_scale.to(device),
            a2_scale=None if self.a2_scale is None else self.a2_scale.to(device),
        )
