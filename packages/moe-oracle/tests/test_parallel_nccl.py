"""Expert and tensor parallelism over NCCL on several GPUs with the Triton experts, against the
single-process layer on each rank's GPU; the gloo suite's cases and bounds (test_parallel_gloo.py).

One launch per world size: ``world`` copies of ``_parallel_suite.py`` (suite ``triton-all``,
backend ``nccl``, a file-store rendezvous), rank ``r`` on ``cuda:r`` with every tensor, weight and
collective there. World sizes: every visible GPU rounded down to a power of two (the 8 experts
must split evenly) and capped at 8, plus 2 when there are more. Triton compiles its kernels once
per process (the on-disk cache serves the later launches).

Cases, all bfloat16 with the experts forced to ``triton``:

* every scheme the triton backend serves that ``write_tiny_checkpoint`` writes (E 8, H 256,
  I 128): data-parallel tokens with uneven counts per rank (one rank holds none; two at 8
  ranks), routing skewed towards two experts with the last two never chosen (at 4 and 8 ranks
  whole ranks receive no rows), all-to-all and naive, replicated tokens, quantized dispatch bit
  for bit equal to raw dispatch, the automatic choice; round-robin expert maps and top_k 4 for
  ``unquantized``, ``fp8_block`` and ``int8_w8a8``. Bounds as in the gloo suite: all-to-all
  ``|d| <= 2u (T + |ref|)``, naive ``|d| <= (ep + 1) u (T + |ref|)``, ``fp8_tensor_dynamic``
  Frobenius 5%.
  Every Triton layer of the suite (single-process and parallel) runs one pinned launch config
  (``_parallel_suite._pin_triton_configs``): the bounds above assume each row is computed the same
  way in both layers, which different configs for their different row counts do not give.
* TP at the world size for ``fp8_block`` (I 640) and ``int4_w4a16`` (I 384), padded shards
  (at TP 8 every shard is one 128-column unit or only padding): relative Frobenius
  ``(tp + 1) u`` against TP 1 on the same GPU.
* Against the reference experts on the CPU (an independent computation, not the triton layer):

  - ``unquantized``, ``fp8_block``, ``int4_w4a16``, ``mxfp8``: the triton all-to-all and naive
    outputs within a relative Frobenius error of ``0.03 + (ep + 1) u``: 3% is triton-experts'
    own bound against the reference (same dequantized weights and activation quantization; the
    bfloat16 GEMM inputs and rare one-step flips of a re-quantized activation differ), plus the
    parallel rounding. The gloo suite's elementwise bounds hold only between layers that run
    the same experts code: the triton layer rounds the intermediate to bfloat16 where the
    reference keeps float32, which is not bounded elementwise by ``u (T + |ref|)`` where
    ``w2 . a`` cancels.
  - ``unquantized`` (with round-robin and top_k 4) and ``int4_w4a16``: the reference experts
    run over NCCL on the GPUs, compared with the reference layer on the CPU within the gloo
    suite's bfloat16 bounds. The GPU's float32 GEMMs differ from the CPU's by ~1e-6 relative,
    far inside the bounds' slack; schemes that re-quantize the intermediate (fp8 / int8
    activation keys) are left out, since such a difference can flip one of its codes, which
    moves a whole output row by more than ``2u (T + |ref|)`` where it cancels.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def _load_suite():
    """The shared suite next to this file (pytest's importlib mode puts no test folder on sys.path)."""
    path = Path(__file__).with_name("_parallel_suite.py")
    if "_parallel_suite" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_parallel_suite", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["_parallel_suite"] = module
        spec.loader.exec_module(module)
    return sys.modules["_parallel_suite"]


suite = _load_suite()

LAUNCH_TIMEOUT_S = 420  # one launch; the first compiles every Triton kernel the suite needs
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
LARGEST = 1 << (min(GPUS, 8).bit_length() - 1) if GPUS else 0  # a power of two: E = 8 experts split evenly
WORLDS = sorted({2, LARGEST}) if GPUS >= 2 else [2]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(GPUS < 2, reason=f"needs at least 2 CUDA GPUs, found {GPUS}"),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    pytest.importorskip("triton")
    pytest.importorskip("triton_experts")
    return suite.write_checkpoints(tmp_path_factory.mktemp("parallel-ckpts"))


@pytest.mark.parametrize("world", WORLDS)
def test_expert_and_tensor_parallel_over_nccl(tmp_path, checkpoints, world):
    cases = suite.launch(tmp_path, world=world, suite="triton-all", payload=checkpoints, backend="nccl",
                         timeout_s=LAUNCH_TIMEOUT_S)
    print((tmp_path / "rank0.log").read_text(errors="replace"))  # per-scheme times (pytest -s)
    names = {c["case"] for c in cases}
    import quantkeys as qk

    served = [s for s in suite.EP_SCHEMES if qk.SCHEMES[s].support("triton") is not None]
    for scheme in served:
        assert any(n.startswith(f"{scheme} bfloat16 top2 contiguous all_to_all") for n in names), scheme
    for what in ("round-robin", "top4", "naive replicated", "quantized dispatch == raw dispatch", "auto choice",
                 "vs cpu reference", "reference vs cpu: ", f"tp{world} fp8_block", f"tp{world} int4_w4a16"):
        assert any(what in n for n in names), what
    suite.assert_cases(cases)
