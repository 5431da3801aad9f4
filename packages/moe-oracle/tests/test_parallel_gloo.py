"""Expert and tensor parallelism over torch.distributed with the gloo backend on the CPU, 2 and 4
processes, against the single-process layer (``make_kernel`` on all experts, same tokens).

Each test launches ``world`` copies of this file as scripts (``python test_parallel_gloo.py
<rank> ...``, a file store for the rendezvous) that run a whole suite of cases and write their
verdicts as JSON; the test then asserts on every case of every rank. One launch per world size
keeps the process start-up (~2-3 s) out of the per-case cost.

Cases (reference experts, every scheme ``write_tiny_checkpoint`` writes, plus ``mxfp4_w4a8`` by
re-keying the mxfp4 weights): data-parallel tokens with uneven counts per rank (one rank holds
none), routing skewed towards two experts with the last two experts never chosen (so with 4
ranks one rank's experts receive no rows), default contiguous and round-robin expert maps,
top_k 2 and 4. Replicated tokens for the naive all-reduce path. Tensor parallelism at TP 2 and 4
for ``fp8_block`` (``I = 640``: 320 and 160 columns per rank against 128-wide blocks, as
Qwen3-30B-A3B's 768 / 4 = 192; shards of whole 128-column units padded to 384 and 256) and
``int4_w4a16`` (``I = 384`` against 128-wide groups: padded to 256 and 128; at TP 4 the last
rank holds only padding).

The same suite runs in bfloat16 on the xpu backend (its torch emulation, ``xpu_sim`` marker) and
on the triton backend (the real kernels under ``TRITON_INTERPRET=1``, ``triton`` marker), with
the same bounds: both round each slot's row once, as the reference does.

Bounds (``ref`` the single-process output, ``T = sum_j |w_j y_j|`` per element from single-slot
runs of the single-process layer, ``u = 2**-8`` the bfloat16 unit roundoff, ``u32 = 2**-24``):

* float32 activations, all-to-all, every scheme but ``fp8_tensor_dynamic``: bit for bit (same
  GEMM rows per expert, same codes and scales after quantized dispatch, same float32 additions
  in ascending expert order).
* float32, naive, top_k 2: bit for bit (at most two non-zero partial sums per token, and adding
  exact zeros is exact); top_k 4: ``|d| <= (k + ep + 1) * u32 * (T + |ref|)`` (the reduction
  regroups the float32 sum).
* bfloat16, all-to-all: ``|d| <= 2u * (T + |ref|)`` (each slot's row is rounded once before the
  float32 sum, and both sides round the sum once); quantized dispatch is bit for bit equal to
  raw dispatch.
* bfloat16, naive (data-parallel or replicated): ``|d| <= (ep + 1) * u * (T + |ref|)`` (per-rank
  partial sums rounded to bfloat16, then summed in bfloat16 by the collective).
* ``fp8_tensor_dynamic`` (per-tensor dynamic activation scales span the rows each rank's
  experts see, not the whole batch): ``||d|| <= 0.05 ||ref||`` (Frobenius; each GEMM input is
  rounded to e4m3 under two different scales, ~2% RMS each; measured <= 1.7%).
* TP vs TP 1, float32: ``||d|| <= 1e-5 ||ref||`` (the down projection's float32 reduction over
  ``I`` is split across ranks; block-aligned shards keep every weight scale and every 1x128
  activation group of the GEMM2 input identical; measured <= 2.5e-7); bfloat16:
  ``||d|| <= (tp + 1) * u ||ref||`` (partial outputs rounded, then summed in bfloat16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch

LAUNCH_TIMEOUT_S = 240
EP_SCHEMES = ("unquantized", "fp8_block", "fp8_tensor_dynamic", "fp8_tensor_static", "fp8_channel", "int8_w8a8",
              "int4_w4a16", "int4_w4a16_asym", "int8_w8a16", "int8_w8a16_asym", "mxfp8", "mxfp4_w4a16")
XPU_SCHEMES = ("unquantized", "fp8_block", "int4_w4a16", "mxfp8")
TRITON_SCHEMES = ("fp8_block", "int4_w4a16")
E, TOP_K, H, I_EP = 8, 2, 256, 128
TP_CASES = {"fp8_block": 640, "int4_w4a16": 384}  # scheme -> intermediate size; both need padding at TP 2 and 4
U16, U32 = 2.0**-8, 2.0**-24


# -- the launcher (parent side) -------------------------------------------------------------------
def launch(tmp: Path, *, world: int, suite: str, payload: dict) -> list[dict]:
    """Run ``suite`` on ``world`` gloo processes; return every rank's case verdicts."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "payload.json").write_text(json.dumps(payload))
    store = tmp / "store"
    store.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [tmp / f"rank{rank}.log" for rank in range(world)]
    procs = []
    for rank in range(world):
        with logs[rank].open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, str(rank), str(world), str(store), suite, str(tmp)],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:  # a rank that fails leaves the others blocked in a collective: stop them all at once
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        killed = [p.poll() is None for p in procs]
        for p, kill in zip(procs, killed, strict=True):
            if kill:
                p.kill()
                p.wait()
    # report the ranks that failed on their own first (the killed ones only waited for them)
    for rank in sorted(range(world), key=lambda r: killed[r]):
        code = procs[rank].returncode
        why = "killed after another rank failed or the time ran out" if killed[rank] else f"exit {code}"
        assert code == 0, f"rank {rank} of {world} failed ({why}):\n{logs[rank].read_text(errors='replace')[-6000:]}"
    cases = []
    for rank in range(world):
        cases += json.loads((tmp / f"rank{rank}.json").read_text())
    assert cases, "no case ran"
    return cases


def assert_cases(cases: list[dict]) -> None:
    failed = [c for c in cases if not c["ok"]]
    assert not failed, f"{len(failed)} of {len(cases)} cases failed:\n" + "\n".join(
        f"  rank {c['rank']} {c['case']}: {c['detail']}" for c in failed[:40])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    from weight_layouts.writer import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("parallel-ckpts")
    ep = {s: str(write_tiny_checkpoint(root / s, scheme=s, num_experts=E, top_k=TOP_K, hidden_size=H,
                                       intermediate_size=I_EP, seed=7).path) for s in EP_SCHEMES}
    tp = {s: str(write_tiny_checkpoint(root / f"tp-{s}", scheme=s, num_experts=4, top_k=TOP_K, hidden_size=H,
                                       intermediate_size=i, seed=8).path) for s, i in TP_CASES.items()}
    return {"ep": ep, "tp": tp}


@pytest.mark.parametrize("world", [2, 4])
def test_expert_and_tensor_parallel_match_single_process(tmp_path, checkpoints, world):
    cases = launch(tmp_path, world=world, suite="reference", payload=checkpoints)
    names = {c["case"] for c in cases}
    assert any("all_to_all" in n and "float32" in n for n in names) and any("tp" in n for n in names)
    assert_cases(cases)


@pytest.mark.xpu_sim
def test_expert_parallel_with_xpu_emulation(tmp_path, checkpoints):
    pytest.importorskip("xpu_experts")
    assert_cases(launch(tmp_path, world=2, suite="xpu", payload=checkpoints))


@pytest.mark.triton
def test_expert_parallel_with_triton_kernels(tmp_path, checkpoints):
    """The real Triton kernels (interpreted on the CPU: TRITON_INTERPRET=1, the triton-interpret config)."""
    pytest.importorskip("triton_experts")
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("gloo runs on the CPU: the Triton kernels need TRITON_INTERPRET=1 here")
    assert_cases(launch(tmp_path, world=2, suite="triton", payload=checkpoints))


# -- the workers (child side) ---------------------------------------------------------------------
class Verdicts:
    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.items: list[dict] = []

    def add(self, case: str, ok: bool, detail: str = "") -> None:
        self.items.append({"rank": self.rank, "case": case, "ok": bool(ok), "detail": detail})

    def bitwise(self, case: str, out: torch.Tensor, ref: torch.Tensor) -> None:
        same = out.dtype == ref.dtype and out.shape == ref.shape and torch.equal(out, ref)
        diff = float((out.double() - ref.double()).abs().max()) if out.numel() and out.shape == ref.shape else 0.0
        self.add(case, same, f"bitwise expected: max |d| = {diff:.3g}, shapes {list(out.shape)} / {list(ref.shape)}")

    def elementwise(self, case: str, out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
        d = (out.double() - ref.double()).abs()
        ratio = float((d / bound.double().clamp(min=1e-30)).max()) if d.numel() else 0.0
        self.add(case, out.shape == ref.shape and bool((d <= bound.double()).all()), f"max |d| / bound = {ratio:.3g}")

    def frobenius(self, case: str, out: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
        err = float((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30))
        self.add(case, out.shape == ref.shape and err <= rel, f"relative error {err:.3g} (bound {rel:.3g})")


def _layer(path: str, scheme: str):
    """Canonical weights and layer facts of a tiny checkpoint (mxfp4_w4a8: the mxfp4 weights re-keyed)."""
    import quantkeys as qk
    from moe_oracle import moe_layer_info
    from weight_layouts import load_experts, read_config

    info = moe_layer_info(read_config(path))
    weights = load_experts(path, 0)
    if scheme == "mxfp4_w4a8":
        weights = replace(weights, activation_key=qk.kMxfp8Dynamic)
    return weights, info.activation


def _routing(m: int, num_experts: int, top_k: int, seed: int, *, skew: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens and routing; ``skew``: experts 0 and 1 popular, the last two never chosen."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, H, generator=gen)
    logits = torch.randn(m, num_experts, generator=gen)
    if skew:
        logits[:, :2] += 2.0
        logits[:, -2:] = -1e9
    weights, ids = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
    return x, weights / weights.sum(-1, keepdim=True), ids


def _slot_magnitude(kernel, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``T = sum_j |w_j y_j|`` per element, from single-slot runs of the single-process layer."""
    total = torch.zeros(x.shape, dtype=torch.float64)
    for j in range(ids.shape[1]):
        only = torch.full_like(ids, -1)
        only[:, j] = ids[:, j]
        total += kernel(hidden_states=x, topk_weights=weights, topk_ids=only).double().abs()
    return total


def _suite_reference(v: Verdicts, rank: int, world: int, payload: dict, *, platform: str = "cpu",
                     force: str | None = "reference", backend: str = "reference", schemes: tuple[str, ...] = (*EP_SCHEMES, "mxfp4_w4a8"),
                     dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16), tp: bool = True,
                     variants: bool = True) -> None:
    import torch.distributed as dist

    from moe_oracle import MoEConfig, ParallelConfig, Platform, make_kernel
    from moe_oracle import PrepareFinalizeKind as Kind
    from moe_oracle import TokenLayout as Tokens
    from weight_layouts import select_experts

    plat = Platform.parse(platform)
    counts = {2: [7, 0], 4: [5, 0, 9, 3]}[world]  # tokens per rank: one rank holds none
    start, stop = sum(counts[:rank]), sum(counts[: rank + 1])
    for scheme in schemes:
        path = payload["ep"]["mxfp4_w4a16" if scheme == "mxfp4_w4a8" else scheme]
        weights, activation = _layer(path, scheme)
        bias = weights.w13_bias is not None
        cases = [(TOP_K, "contiguous")] + ([(TOP_K, "round-robin"), (4, "contiguous")] if variants and scheme in (
            "unquantized", "fp8_block", "int8_w8a8") else [])
        for top_k, placement in cases:
            x, tw, ids = _routing(sum(counts), E, top_k, seed=3 + top_k)
            if placement == "contiguous":
                per = E // world
                mine = list(range(rank * per, (rank + 1) * per))
                emap = None
            else:
                mine = list(range(rank, E, world))
                emap = tuple(mine.index(g) if g in mine else -1 for g in range(E))
            local = select_experts(weights, mine)
            for dtype in dtypes:
                tag = f"{scheme} {str(dtype)[6:]} top{top_k} {placement}"
                common = dict(num_experts=E, top_k=top_k, hidden_size=H, intermediate_size=I_EP,
                              activation=activation, has_bias=bias, in_dtype=dtype)
                full = make_kernel(weights=weights, config=MoEConfig(**common), platform=plat, force=force)
                xd = x.to(dtype)
                ref = full(hidden_states=xd, topk_weights=tw, topk_ids=ids)
                mag = _slot_magnitude(full, xd, tw, ids) + ref.double().abs()
                cfg = MoEConfig(**common, ep_rank=rank, ep_size=world, expert_map=emap)
                build = dict(weights=local, config=cfg, platform=plat, force=force)
                inputs = (xd, tw, ids, start, stop)

                def run(kind, tokens=Tokens.DATA_PARALLEL, quantize=None, *, build=build, inputs=inputs):
                    return _run_parallel(build, inputs, ParallelConfig(kind=kind, tokens=tokens,
                                                                       quantize_dispatch=quantize))

                mine_ref, mine_mag = ref[start:stop], mag[start:stop]
                a2a_kernel, a2a = run(Kind.ALL_TO_ALL)
                backends = {full.selection.backend, a2a_kernel.selection.backend}
                v.add(f"{tag} backend", backends == {backend}, f"ran {backends}, expected {backend}")
                _, naive = run(Kind.NAIVE)
                per_tensor = scheme == "fp8_tensor_dynamic"
                if per_tensor:
                    v.frobenius(f"{tag} all_to_all", a2a, mine_ref, 0.05)
                    v.frobenius(f"{tag} naive", naive, mine_ref, 0.05)
                elif dtype == torch.float32:
                    v.bitwise(f"{tag} all_to_all", a2a, mine_ref)
                    if top_k <= 2:
                        v.bitwise(f"{tag} naive", naive, mine_ref)
                    else:
                        v.elementwise(f"{tag} naive", naive, mine_ref, (top_k + world + 1) * U32 * mine_mag)
                else:
                    v.elementwise(f"{tag} all_to_all", a2a, mine_ref, 2 * U16 * mine_mag)
                    v.elementwise(f"{tag} naive", naive, mine_ref, (world + 1) * U16 * mine_mag)
                    _, replicated = run(Kind.NAIVE, Tokens.REPLICATED)
                    v.elementwise(f"{tag} naive replicated", replicated, ref, (world + 1) * U16 * mag)
                codec = a2a_kernel.prepare_finalize.codec
                if codec.quantized and not per_tensor:
                    _, raw = run(Kind.ALL_TO_ALL, quantize=False)
                    v.bitwise(f"{tag} all_to_all quantized dispatch == raw dispatch", a2a, raw)
                if placement == "contiguous" and top_k == TOP_K and dtype == dtypes[0]:
                    auto = make_kernel(weights=local, config=cfg, platform=plat, force=force, parallel=ParallelConfig())
                    want = "all_to_all" if world > TOP_K else "naive"
                    v.add(f"{tag} auto choice", auto.prepare_finalize.name == want, auto.explain())
        dist.barrier()
    if tp:
        _suite_tensor_parallel(v, rank, world, payload, plat=plat, force=force, backend=backend, dtypes=dtypes)


def _run_parallel(build: dict, inputs: tuple, parallel):
    """Build an EP kernel and run it on this rank's tokens (all tokens when they are replicated)."""
    from moe_oracle import TokenLayout, make_kernel

    x, tw, ids, start, stop = inputs
    kernel = make_kernel(**build, parallel=parallel)
    if parallel.tokens is not TokenLayout.REPLICATED:
        x, tw, ids = x[start:stop], tw[start:stop], ids[start:stop]
    return kernel, kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)


def _suite_tensor_parallel(v: Verdicts, rank: int, world: int, payload: dict, *, plat, force, backend: str,
                           dtypes: tuple[torch.dtype, ...]) -> None:
    import torch.distributed as dist

    from moe_oracle import MoEConfig, ParallelConfig, make_kernel
    from weight_layouts import shard_experts_tp

    for scheme, path in payload["tp"].items():
        weights, activation = _layer(path, scheme)
        shard = shard_experts_tp(weights, tp_rank=rank, tp_size=world)
        padded = {(640, 2): 384, (640, 4): 256, (384, 2): 256, (384, 4): 128}[(weights.intermediate_size, world)]
        v.add(f"tp{world} {scheme} padded", shard.intermediate_size == padded,
              f"padded intermediate {shard.intermediate_size}, expected {padded}")
        x, tw, ids = _routing(19, 4, TOP_K, seed=11, skew=False)
        for dtype in dtypes:
            common = dict(num_experts=4, top_k=TOP_K, hidden_size=H, activation=activation, in_dtype=dtype)
            full = make_kernel(weights=weights, config=MoEConfig(**common, intermediate_size=weights.intermediate_size),
                               platform=plat,
                               force=force)
            ref = full(hidden_states=x.to(dtype), topk_weights=tw, topk_ids=ids)
            kernel = make_kernel(weights=shard, config=MoEConfig(**common, intermediate_size=shard.intermediate_size),
                                 platform=plat, force=force, parallel=ParallelConfig(tp_group=dist.group.WORLD))
            out = kernel(hidden_states=x.to(dtype), topk_weights=tw, topk_ids=ids)
            v.add(f"tp{world} {scheme} {kernel.prepare_finalize.name}", kernel.prepare_finalize.name == "local+tp"
                  and kernel.selection.backend == backend, kernel.explain())
            rel = 1e-5 if dtype == torch.float32 else (world + 1) * U16
            v.frobenius(f"tp{world} {scheme} {str(dtype)[6:]} vs tp1", out, ref, rel)


def _suite_xpu(v: Verdicts, rank: int, world: int, payload: dict) -> None:
    _suite_reference(v, rank, world, payload, platform="xpu", force=None, backend="xpu", schemes=XPU_SCHEMES,
                     dtypes=(torch.bfloat16,), tp=True)


def _suite_triton(v: Verdicts, rank: int, world: int, payload: dict) -> None:
    _suite_reference(v, rank, world, payload, platform="cuda:9.0", force=None, backend="triton", schemes=TRITON_SCHEMES,
                     dtypes=(torch.bfloat16,), tp=True, variants=False)


SUITES = {"reference": _suite_reference, "xpu": _suite_xpu, "triton": _suite_triton}


def _worker(rank: int, world: int, store: str, suite: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=LAUNCH_TIMEOUT_S // 2))
    try:
        payload = json.loads((Path(out_dir) / "payload.json").read_text())
        verdicts = Verdicts(rank)
        SUITES[suite](verdicts, rank, world, payload)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(verdicts.items))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
