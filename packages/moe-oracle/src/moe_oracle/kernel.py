"""The kernel factory: selection + experts + prepare/finalize, built and validated at load time.

``make_kernel(weights=..., config=...)`` selects a backend (with reasons), builds the runtime
quant config from the weights' own QuantKeys (so the selection key is the runtime config),
converts the weights to the backend's layout through weight-layouts (a no-op when they already
are, so a reload never converts twice) and constructs the experts, which validate everything.

Prepare/finalize: on one rank (no expert parallelism across processes) the experts quantize
their own inputs (kernels fuse it) and reduce the top-k slots themselves, so prepare and
finalize are the identity here; the expert-parallel implementations (dispatch / combine over
torch.distributed) plug in at the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weight_layouts import ExpertWeights

from .config import MoEConfig, MoEQuantConfig
from .experts_base import Experts
from .platform import Platform
from .selection import Selection, select_backend


class LocalPrepareFinalize:
    """Single-rank prepare/finalize: tokens stay where they are; experts reduce the top-k slots."""

    name = "local"

    def prepare(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return hidden_states, topk_weights, topk_ids

    def finalize(self, *, output: torch.Tensor) -> torch.Tensor:
        return output


@dataclass(frozen=True, kw_only=True)
class MoEKernel:
    """A ready-to-run MoE layer kernel: call it with keyword arguments."""

    selection: Selection
    experts: Experts
    prepare_finalize: LocalPrepareFinalize

    def __call__(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> torch.Tensor:
        x, w, ids = self.prepare_finalize.prepare(hidden_states=hidden_states, topk_weights=topk_weights,
                                                  topk_ids=topk_ids)
        out = self.experts.apply(hidden_states=x, topk_weights=w, topk_ids=ids)
        return self.prepare_finalize.finalize(output=out)


def make_kernel(
    *,
    weights: ExpertWeights,
    config: MoEConfig,
    platform: Platform | None = None,
    force: str | None = None,
    a13_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
) -> MoEKernel:
    """Select, convert and build (see the module docstring). Raises on anything invalid, now."""
    quant = MoEQuantConfig.from_weights(weights, a13_scale=a13_scale, a2_scale=a2_scale)
    selection = select_backend(weight_key=quant.weight_key, activation_key=quant.activation_key, config=config,
                               platform=platform, force=force)
    experts = selection.experts_cls(config=config, quant=quant, weights=weights, platform=selection.platform)
    return MoEKernel(selection=selection, experts=experts, prepare_finalize=LocalPrepareFinalize())
