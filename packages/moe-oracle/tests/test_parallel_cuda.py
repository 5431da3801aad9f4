"""The NCCL path at world size 1 on one GPU: all-to-all and naive prepare/finalize over a real NCCL
group (collectives on CUDA tensors, counts exchanged on the device), with the backend the oracle
picks on this GPU and with the reference experts, against the same layer without parallelism.

Bounds (``ref`` the local layer, ``T = sum_j |w_j y_j|`` per element from single-slot runs, ``u =
2**-8``): all-to-all ``|d| <= 2u (T + |ref|)`` (each (token, slot) row is rounded to bfloat16 once
before the float32 sum); naive at world size 1 gathers and reduces nothing but the identity, so
``|d| <= 2u (T + |ref|)`` holds trivially and in practice it is bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from moe_oracle import MoEConfig, ParallelConfig, Platform, PrepareFinalizeKind, TokenLayout, make_kernel
from weight_layouts import load_experts
from weight_layouts.writer import write_tiny_checkpoint

pytestmark = pytest.mark.cuda
U16 = 2.0**-8


@pytest.fixture(scope="module")
def nccl_world_1(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    torch.cuda.set_device(0)
    store = tmp_path_factory.mktemp("nccl") / "store"
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.mark.parametrize("force", [None, "reference"])
@pytest.mark.parametrize("scheme", ["unquantized", "fp8_block", "int4_w4a16", "mxfp8"])
def test_nccl_world_size_1(tmp_path, nccl_world_1, scheme, force):
    import torch.distributed as dist

    assert dist.get_backend() == "nccl"
    ckpt = write_tiny_checkpoint(tmp_path / scheme, scheme=scheme, num_experts=8, top_k=2, hidden_size=256,
                                 intermediate_size=128, seed=5)
    weights = load_experts(ckpt.path, 0).to("cuda")
    config = MoEConfig(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128, in_dtype=torch.bfloat16)
    platform = Platform.detect()
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(45, 256, generator=gen).to("cuda", torch.bfloat16)
    logits = torch.randn(45, 8, generator=gen)
    logits[:, -1] = -1e9  # an expert with no tokens
    tw, ids = torch.softmax(logits, -1).topk(2)
    tw, ids = tw.cuda(), ids.cuda()
    local = make_kernel(weights=weights, config=config, platform=platform, force=force)
    ref = local(hidden_states=x, topk_weights=tw, topk_ids=ids)
    mag = ref.double().abs()
    for j in range(2):
        only = torch.full_like(ids, -1)
        only[:, j] = ids[:, j]
        mag += local(hidden_states=x, topk_weights=tw, topk_ids=only).double().abs()
    for kind, tokens in ((PrepareFinalizeKind.ALL_TO_ALL, TokenLayout.DATA_PARALLEL),
                         (PrepareFinalizeKind.NAIVE, TokenLayout.DATA_PARALLEL),
                         (PrepareFinalizeKind.NAIVE, TokenLayout.REPLICATED)):
        kernel = make_kernel(weights=weights, config=config, platform=platform, force=force,
                             parallel=ParallelConfig(kind=kind, tokens=tokens))
        assert kernel.selection.backend == local.selection.backend
        assert kernel.prepare_finalize.name == kind.value
        out = kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        assert out.device.type == "cuda" and out.dtype == torch.bfloat16 and out.shape == ref.shape
        d = (out.double() - ref.double()).abs()
        assert bool((d <= 2 * U16 * mag).all()), f"{kind.value}: max |d| / bound = {float((d / (2 * U16 * mag)).max())}"
        empty = kernel(hidden_states=x[:0], topk_weights=tw[:0], topk_ids=ids[:0])
        assert tuple(empty.shape) == (0, 256)
