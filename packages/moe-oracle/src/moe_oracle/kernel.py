"""The kernel factory: selection + experts + prepare/finalize, built and validated at load time.

``make_kernel(weights=..., config=...)`` selects a backend (with reasons), builds the runtime
quant config from the weights' own QuantKeys (so the selection key is the runtime config),
converts the weights to the backend's layout through weight-layouts (a no-op when they already
are, so a reload never converts twice) and constructs the experts, which validate everything.

Prepare/finalize: on one rank the experts quantize their own inputs (kernels fuse it) and reduce
the top-k slots themselves, so prepare and finalize are the identity. With ``parallel=`` (a
:class:`~moe_oracle.parallel.ParallelConfig`) the layer runs over torch.distributed: the
oracle picks naive (all-gather / reduce-scatter) or all-to-all dispatch/combine from the config
and says why (:meth:`MoEKernel.explain`); see :mod:`moe_oracle.parallel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weight_layouts import ExpertWeights

from .config import MoEConfig, MoEQuantConfig
from .experts_base import Experts
from .parallel import LocalPrepareFinalize, ParallelConfig, PrepareFinalize, PrepareFinalizeSelection
from .parallel import build_prepare_finalize as _build_prepare_finalize
from .platform import Platform
from .selection import Selection, select_backend

__all__ = ["LocalPrepareFinalize", "MoEKernel", "make_kernel"]


@dataclass(frozen=True, kw_only=True)
class MoEKernel:
    """A ready-to-run MoE layer kernel: call it with keyword arguments."""

    selection: Selection
    experts: Experts
    prepare_finalize: PrepareFinalize
    prepare_finalize_selection: PrepareFinalizeSelection | None = None

    def __call__(self, *, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor) -> torch.Tensor:
        prepared = self.prepare_finalize.prepare(hidden_states=hidden_states, topk_weights=topk_weights,
                                                 topk_ids=topk_ids)
        out = self.experts.apply(hidden_states=prepared.hidden_states, topk_weights=prepared.topk_weights,
                                 topk_ids=prepared.topk_ids)
        return self.prepare_finalize.finalize(output=out, prepared=prepared)

    def explain(self) -> str:
        """The backend choice and the prepare/finalize choice, each with its reasons."""
        text = self.selection.explain()
        if self.prepare_finalize_selection is not None:
            text += "\n" + self.prepare_finalize_selection.explain()
        return text


def make_kernel(
    *,
    weights: ExpertWeights,
    config: MoEConfig,
    platform: Platform | None = None,
    force: str | None = None,
    a13_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    parallel: ParallelConfig | None = None,
) -> MoEKernel:
    """Select, convert and build (see the module docstring). Raises on anything invalid, now.

    ``parallel``: how the layer spans processes (None: this rank alone). Building is then a
    collective on the EP group when ``config.expert_map`` is explicit (all-to-all gathers the maps).
    """
    quant = MoEQuantConfig.from_weights(weights, a13_scale=a13_scale, a2_scale=a2_scale)
    selection = select_backend(weight_key=quant.weight_key, activation_key=quant.activation_key, config=config,
                               platform=platform, force=force)
    experts = selection.experts_cls(config=config, quant=quant, weights=weights, platform=selection.platform)
    prepare_finalize, why = _build_prepare_finalize(config=config, quant=quant, parallel=parallel)
    return MoEKernel(selection=selection, experts=experts, prepare_finalize=prepare_finalize,
                     prepare_finalize_selection=why)
