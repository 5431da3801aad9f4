"""Choosing a layer's prepare/finalize from its MoEConfig and ParallelConfig, with the reason.

Rules (an explicit ``ParallelConfig.kind`` wins and is reported as forced):

* no ParallelConfig: ``local``, as before expert parallelism existed (with ``ep_size > 1`` the
  output is this rank's partial sum; the caller reduces).
* ``ep_size == 1``: ``local``: every expert is here, nothing crosses the wire.
* tokens ``REPLICATED``: ``naive``: every rank already holds the batch, so running the local
  experts on it and all-reducing ``[M, H]`` dispatches nothing.
* tokens ``DATA_PARALLEL``: ``all_to_all`` when ``top_k < ep_size``: with uniform routing it moves
  ``top_k * (ep - 1) / ep`` rows per token each way against ``ep - 1`` for an all-gather plus
  reduce-scatter; else ``naive`` (the all-to-all would move no fewer bytes).

A tensor-parallel group of more than one rank adds the all-reduce after the down projection.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import MoEConfig, MoEQuantConfig
from .all_to_all import AllToAllPrepareFinalize
from .base import ParallelConfig, PrepareFinalize, PrepareFinalizeKind, TokenLayout
from .collectives import group_rank, group_size, resolve_group
from .local import LocalPrepareFinalize
from .naive import NaivePrepareFinalize
from .tensor_parallel import TensorParallelReduce
from .wire import choose_codec


@dataclass(frozen=True, kw_only=True)
class PrepareFinalizeSelection:
    """The chosen prepare/finalize and why; ``dispatch`` says how rows cross the wire (empty: they don't)."""

    kind: PrepareFinalizeKind
    reason: str
    forced: bool = False
    dispatch: str = ""
    tensor_parallel: int = 1

    def explain(self) -> str:
        how = "forced by ParallelConfig.kind" if self.forced else "automatic"
        lines = [f"prepare/finalize: {self.kind.value} ({how}): {self.reason}"]
        if self.dispatch:
            lines.append(f"  dispatch: {self.dispatch}")
        if self.tensor_parallel > 1:
            lines.append(f"  tensor parallel: partial outputs all-reduced over {self.tensor_parallel} ranks after the "
                         "down projection")
        return "\n".join(lines)


def _dispatches(kind: PrepareFinalizeKind, parallel: ParallelConfig) -> bool:
    return kind is PrepareFinalizeKind.ALL_TO_ALL or (
        kind is PrepareFinalizeKind.NAIVE and parallel.tokens is TokenLayout.DATA_PARALLEL)


def select_prepare_finalize(*, config: MoEConfig, parallel: ParallelConfig | None,
                            quant: MoEQuantConfig | None = None, tp_size: int = 1) -> PrepareFinalizeSelection:
    """The prepare/finalize for this layer (see the module docstring). Pure: no collective runs.

    ``quant`` (optional) fills in how dispatched rows are encoded; ``tp_size`` is the size of the
    tensor-parallel group.
    """
    ep, k = config.ep_size, config.top_k
    if parallel is None:
        reason = "no ParallelConfig: single-rank call"
        if ep > 1:
            reason += f"; with ep_size={ep} the output is this rank's partial sum over its experts (the caller reduces)"
        return PrepareFinalizeSelection(kind=PrepareFinalizeKind.LOCAL, reason=reason)
    forced = parallel.kind is not PrepareFinalizeKind.AUTO
    if forced:
        kind = parallel.kind
        reason = f"requested for ep_size={ep}, top_k={k}, {parallel.tokens.value} tokens"
    elif ep == 1:
        kind, reason = PrepareFinalizeKind.LOCAL, "ep_size=1: every expert is on this rank, nothing to dispatch"
    elif parallel.tokens is TokenLayout.REPLICATED:
        kind = PrepareFinalizeKind.NAIVE
        reason = (f"tokens are replicated over the {ep} EP ranks: each runs its local experts on the whole batch and "
                  "the [M, H] partial outputs are all-reduced; nothing is dispatched")
    elif k < ep:
        kind = PrepareFinalizeKind.ALL_TO_ALL
        reason = (f"data-parallel tokens, top_k={k} < ep_size={ep}: all-to-all sends each (token, slot) to its expert's "
                  f"rank, {k * (ep - 1) / ep:.2f} rows per token each way against {ep - 1} for all-gather + "
                  "reduce-scatter")
    else:
        kind = PrepareFinalizeKind.NAIVE
        reason = (f"data-parallel tokens, top_k={k} >= ep_size={ep}: all-gather + reduce-scatter move {ep - 1} rows "
                  f"per token each way, no more than all-to-all's {k * (ep - 1) / ep:.2f}")
    dispatch = ""
    if quant is not None and _dispatches(kind, parallel):
        dispatch = choose_codec(config=config, quant=quant, quantize=parallel.quantize_dispatch)[1]
    return PrepareFinalizeSelection(kind=kind, reason=reason, forced=forced, dispatch=dispatch, tensor_parallel=tp_size)


def _check_group(config: MoEConfig, group: object) -> None:
    size, rank = group_size(group), group_rank(group)
    if (size, rank) != (config.ep_size, config.ep_rank):
        raise ValueError(f"MoEConfig says ep_rank={config.ep_rank} of ep_size={config.ep_size}, but this process is "
                         f"rank {rank} of an EP group of {size}; pass ParallelConfig(ep_group=...) or fix the config")


def build_prepare_finalize(*, config: MoEConfig, quant: MoEQuantConfig,
                           parallel: ParallelConfig | None) -> tuple[PrepareFinalize, PrepareFinalizeSelection]:
    """Select (:func:`select_prepare_finalize`) and construct the prepare/finalize.

    Collective when it must be: with an explicit ``expert_map`` all-to-all gathers the ranks' maps,
    so every rank of the EP group builds its kernel together.
    """
    tp_group = None if parallel is None or parallel.tp_group is None else parallel.tp_group
    tp_size = group_size(tp_group) if tp_group is not None else 1
    choice = select_prepare_finalize(config=config, parallel=parallel, quant=quant, tp_size=tp_size)
    pf: PrepareFinalize
    if choice.kind is PrepareFinalizeKind.LOCAL:
        pf = LocalPrepareFinalize(config=config)
    else:
        assert parallel is not None
        group = resolve_group(parallel.ep_group)
        _check_group(config, group)
        codec = choose_codec(config=config, quant=quant, quantize=parallel.quantize_dispatch)[0]
        if choice.kind is PrepareFinalizeKind.NAIVE:
            pf = NaivePrepareFinalize(config=config, codec=codec, tokens=parallel.tokens, group=group)
        else:
            pf = AllToAllPrepareFinalize(config=config, codec=codec, group=group)
    if tp_size > 1:
        pf = TensorParallelReduce(inner=pf, group=tp_group)
    return pf, choice
