"""The reference experts backend: every scheme of the spec table, pure torch, any device.

It dequantizes the canonical checkpoint tensors once (float32, so 4 bytes per weight: it is a
yardstick, not a fast path) and runs :func:`reference_moe_forward`, which quantizes activations
the way the kernels do. Kernel backends are tested against it; it is tested against float64
math on the dense weights.
"""

from __future__ import annotations

import torch

from quantkeys import SCHEMES, PlatformKind

from ..activations import Activation
from ..config import ActivationFormat
from ..experts_base import Capabilities, Experts
from .moe_math import reference_moe_forward


def _served_pairs() -> frozenset:
    pairs = set()
    for scheme in SCHEMES.values():
        support = scheme.support("reference")
        if support is not None:
            pairs.update((wk, scheme.activation_key) for wk in support.weight_keys)
    return frozenset(pairs)


class ReferenceExperts(Experts):
    """Reference experts (backend ``reference``, layout ``reference``)."""

    backend = "reference"
    layout = "reference"
    capabilities = Capabilities(
        quant_pairs=_served_pairs(),
        platforms=frozenset(PlatformKind),
        activations=frozenset(Activation),
        activation_formats=frozenset({ActivationFormat.STANDARD}),
        bias=True,
        expert_parallel=True,
        lora=False,
    )

    def prepare(self) -> None:
        self.w13_dense = self.weights.w13.dequantize()
        self.w2_dense = self.weights.w2.dequantize()

    def forward(
        self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        device = hidden_states.device
        if self.w13_dense.device != device:
            self.w13_dense = self.w13_dense.to(device)
            self.w2_dense = self.w2_dense.to(device)
        a13, a2 = self.quant.a13, self.quant.a2
        return reference_moe_forward(
            hidden_states=hidden_states,
            w13=self.w13_dense,
            w2=self.w2_dense,
            topk_weights=topk_weights,
            topk_ids=topk_ids,
            activation=self.config.activation,
            a13_key=a13.key,
            a2_key=a2.key,
            a13_static_scale=a13.scale,
            a2_static_scale=a2.scale,
            w13_bias=None if self.weights.w13_bias is None else self.weights.w13_bias.to(device),
            w2_bias=None if self.weights.w2_bias is None else self.weights.w2_bias.to(device),
            expert_map=None if self.expert_map is None else self.expert_map.to(device),
            out_dtype=self.config.result_dtype,
        )
