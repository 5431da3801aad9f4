"""Expert and tensor parallelism over torch.distributed: prepare/finalize implementations and their selection.

>>> pf, why = build_prepare_finalize(config=cfg, quant=quant, parallel=ParallelConfig())
>>> print(why.explain())   # which prepare/finalize, why, and how rows cross the wire

* :class:`LocalPrepareFinalize`: one rank, identity.
* :class:`NaivePrepareFinalize`: all-gather tokens (data-parallel) or nothing (replicated), local
  experts on every token, reduce-scatter / all-reduce the partial outputs.
* :class:`AllToAllPrepareFinalize`: ``all_to_all_single`` of (token, slot) rows to the ranks owning
  their experts, and back, with a weighted sum on the source rank.
* :class:`TensorParallelReduce`: the all-reduce after the down projection of TP-sharded experts.
"""

from .all_to_all import AllToAllPrepareFinalize
from .base import ParallelConfig, Prepared, PrepareFinalize, PrepareFinalizeKind, TokenLayout, check_inputs
from .local import LocalPrepareFinalize
from .naive import NaivePrepareFinalize
from .placement import expert_owners
from .selection import PrepareFinalizeSelection, build_prepare_finalize, select_prepare_finalize
from .tensor_parallel import TensorParallelReduce
from .wire import RowCodec, choose_codec

__all__ = [
    "AllToAllPrepareFinalize",
    "LocalPrepareFinalize",
    "NaivePrepareFinalize",
    "ParallelConfig",
    "PrepareFinalize",
    "PrepareFinalizeKind",
    "PrepareFinalizeSelection",
    "Prepared",
    "RowCodec",
    "TensorParallelReduce",
    "TokenLayout",
    "build_prepare_finalize",
    "check_inputs",
    "choose_codec",
    "expert_owners",
    "select_prepare_finalize",
]
