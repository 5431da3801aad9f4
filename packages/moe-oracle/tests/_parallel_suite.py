"""The expert / tensor-parallel test suite shared by test_parallel_gloo.py and test_parallel_nccl.py.

Parent side (imported by the test modules from this folder): :func:`write_checkpoints`,
:func:`launch` (``world`` copies of this file as scripts, a file-store rendezvous, one JSON file
of case verdicts per rank) and :func:`assert_cases`. Child side (``python _parallel_suite.py
<rank> <world> <store> <suite> <out_dir> <gloo|nccl> <timeout_s>``): :func:`run_ep_suite`, parametrized by a
:class:`Setup` (where the layer runs, which experts backend, which schemes and dtypes, what the
single-process layer it is compared with is), and the tensor-parallel cases.

The bounds are explained in test_parallel_gloo.py's docstring (same-backend comparisons) and
test_parallel_nccl.py's (the cross checks against the reference experts on the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch

LAUNCH_TIMEOUT_S = 240
EP_SCHEMES = ("unquantized", "fp8_block", "fp8_tensor_dynamic", "fp8_tensor_static", "fp8_channel", "int8_w8a8",
              "int4_w4a16", "int4_w4a16_asym", "int8_w8a16", "int8_w8a16_asym", "mxfp8", "mxfp4_w4a16")
XPU_SCHEMES = ("unquantized", "fp8_block", "int4_w4a16", "mxfp8")
TRITON_SCHEMES = ("fp8_block", "int4_w4a16")
# triton experts vs the CPU reference layer (the single-process NCCL suite's cross check)
CROSS_SCHEMES = ("unquantized", "fp8_block", "int4_w4a16", "mxfp8")
# the reference experts over NCCL on the GPU vs the reference on the CPU: schemes whose GEMM inputs
# are never re-quantized (no activation key), so the GPU's float32 GEMMs cannot flip a code
REFERENCE_ON_GPU_SCHEMES = ("unquantized", "int4_w4a16")
BOUND_VS_REFERENCE = 0.03  # triton vs reference experts, relative Frobenius (triton-experts' own tests)
VARIANT_SCHEMES = ("unquantized", "fp8_block", "int8_w8a8")  # + round-robin placement and top_k 4
E, TOP_K, H, I_EP = 8, 2, 256, 128
TP_CASES = {"fp8_block": 640, "int4_w4a16": 384}  # scheme -> intermediate size; both need padding at TP 2 and 4
TP_PADDED = {(640, 2): 384, (640, 4): 256, (640, 8): 128, (384, 2): 256, (384, 4): 128, (384, 8): 128}
TOKENS_PER_RANK = {2: [7, 0], 4: [5, 0, 9, 3], 8: [5, 0, 9, 3, 1, 0, 6, 2]}  # one rank (or two) hold none
U16, U32 = 2.0**-8, 2.0**-24
# every process that may touch NCCL: NVLink SHARP (NVLS) and multicast stay off
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


# -- the launcher (parent side) -------------------------------------------------------------------
def write_checkpoints(root: Path) -> dict:
    """Tiny checkpoints of every EP scheme (E 8, H 256, I 128) and of the TP cases (E 4); paths by scheme."""
    from weight_layouts.writer import write_tiny_checkpoint

    ep = {s: str(write_tiny_checkpoint(root / s, scheme=s, num_experts=E, top_k=TOP_K, hidden_size=H,
                                       intermediate_size=I_EP, seed=7).path) for s in EP_SCHEMES}
    tp = {s: str(write_tiny_checkpoint(root / f"tp-{s}", scheme=s, num_experts=4, top_k=TOP_K, hidden_size=H,
                                       intermediate_size=i, seed=8).path) for s, i in TP_CASES.items()}
    return {"ep": ep, "tp": tp}


def launch(tmp: Path, *, world: int, suite: str, payload: dict, backend: str = "gloo",
           timeout_s: int = LAUNCH_TIMEOUT_S) -> list[dict]:
    """Run ``suite`` on ``world`` processes over ``backend``; return every rank's case verdicts."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "payload.json").write_text(json.dumps(payload))
    store = tmp / "store"
    store.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(NCCL_ENV if backend == "nccl" else {})}
    logs = [tmp / f"rank{rank}.log" for rank in range(world)]
    procs = []
    for rank in range(world):
        with logs[rank].open("wb") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, str(rank), str(world), str(store), suite, str(tmp),
                                           backend, str(timeout_s)], env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
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


@dataclass(frozen=True, kw_only=True)
class Setup:
    """One run of the EP suite: where the layers run and what they are compared with.

    ``platform``: ``Platform.parse`` text, None for ``Platform.detect()``. ``force``: the experts
    backend to force (None: the oracle's choice); ``backend``: the one every kernel must report.
    ``device``: ``"cpu"``, or ``"cuda"`` for ``cuda:{rank}`` (inputs, weights and collectives; the
    verdicts compare on the CPU). ``single_on_cpu``: the single-process layer is the reference
    experts on the CPU (else: the same backend, platform and device as the parallel layer).
    ``cross_reference``: schemes whose outputs are also compared with the reference experts on the
    CPU (relative Frobenius, for a backend other than the reference). ``variants``: the extra
    round-robin and top_k 4 cases for :data:`VARIANT_SCHEMES`.
    """

    platform: str | None = "cpu"
    force: str | None = "reference"
    backend: str = "reference"
    schemes: tuple[str, ...] = (*EP_SCHEMES, "mxfp4_w4a8")
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    tp: bool = True
    variants: bool = True
    device: str = "cpu"
    single_on_cpu: bool = False
    cross_reference: tuple[str, ...] = ()
    label: str = ""


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
    """``T = sum_j |w_j y_j|`` per element (on the CPU), from single-slot runs of the single-process layer."""
    total = torch.zeros(x.shape, dtype=torch.float64)
    for j in range(ids.shape[1]):
        only = torch.full_like(ids, -1)
        only[:, j] = ids[:, j]
        total += kernel(hidden_states=x, topk_weights=weights, topk_ids=only).cpu().double().abs()
    return total


def _device(setup: Setup, rank: int) -> torch.device:
    return torch.device("cuda", rank) if setup.device == "cuda" else torch.device("cpu")


def _on(weights, dev: torch.device):
    """``weights`` on ``dev`` (the same object on the CPU)."""
    return weights if dev.type == "cpu" else weights.to(dev)


def run_ep_suite(v: Verdicts, rank: int, world: int, payload: dict, setup: Setup) -> None:
    """Expert parallelism (and, with ``setup.tp``, tensor parallelism) against the single-process layer."""
    import torch.distributed as dist

    from moe_oracle import MoEConfig, ParallelConfig, Platform, make_kernel
    from moe_oracle import PrepareFinalizeKind as Kind
    from moe_oracle import TokenLayout as Tokens
    from weight_layouts import select_experts

    plat = Platform.detect() if setup.platform is None else Platform.parse(setup.platform)
    cpu_plat = Platform.parse("cpu")
    dev = _device(setup, rank)
    force, backend, dtypes, label = setup.force, setup.backend, setup.dtypes, setup.label
    counts = TOKENS_PER_RANK[world]
    start, stop = sum(counts[:rank]), sum(counts[: rank + 1])
    for scheme in setup.schemes:
        t0 = time.perf_counter()
        path = payload["ep"]["mxfp4_w4a16" if scheme == "mxfp4_w4a8" else scheme]
        weights, activation = _layer(path, scheme)
        bias = weights.w13_bias is not None
        single_weights = weights if setup.single_on_cpu else _on(weights, dev)
        cases = [(TOP_K, "contiguous")] + ([(TOP_K, "round-robin"), (4, "contiguous")] if setup.variants and scheme in
                                           VARIANT_SCHEMES else [])
        for top_k, placement in cases:
            x, tw, ids = _routing(sum(counts), E, top_k, seed=3 + top_k)
            if placement == "contiguous":
                per = E // world
                mine = list(range(rank * per, (rank + 1) * per))
                emap = None
            else:
                mine = list(range(rank, E, world))
                emap = tuple(mine.index(g) if g in mine else -1 for g in range(E))
            local = _on(select_experts(weights, mine), dev)
            for dtype in dtypes:
                tag = f"{label}{scheme} {str(dtype)[6:]} top{top_k} {placement}"
                common = dict(num_experts=E, top_k=top_k, hidden_size=H, intermediate_size=I_EP,
                              activation=activation, has_bias=bias, in_dtype=dtype)
                xd = x.to(dtype)
                xd_dev, tw_dev, ids_dev = xd.to(dev), tw.to(dev), ids.to(dev)
                if setup.single_on_cpu:
                    full = make_kernel(weights=single_weights, config=MoEConfig(**common), platform=cpu_plat,
                                       force="reference")
                    single_in = (xd, tw, ids)
                else:
                    full = make_kernel(weights=single_weights, config=MoEConfig(**common), platform=plat, force=force)
                    single_in = (xd_dev, tw_dev, ids_dev)
                ref = full(hidden_states=single_in[0], topk_weights=single_in[1], topk_ids=single_in[2]).cpu()
                mag = _slot_magnitude(full, *single_in) + ref.double().abs()
                cfg = MoEConfig(**common, ep_rank=rank, ep_size=world, expert_map=emap)
                build = dict(weights=local, config=cfg, platform=plat, force=force)
                inputs = (xd_dev, tw_dev, ids_dev, start, stop)

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
                if scheme in setup.cross_reference and placement == "contiguous" and top_k == TOP_K:
                    cpu_ref = make_kernel(weights=weights, config=MoEConfig(**common), platform=cpu_plat,
                                          force="reference")(hidden_states=xd, topk_weights=tw, topk_ids=ids)
                    rel = BOUND_VS_REFERENCE + (world + 1) * U16
                    v.frobenius(f"{tag} all_to_all vs cpu reference", a2a, cpu_ref[start:stop], rel)
                    v.frobenius(f"{tag} naive vs cpu reference", naive, cpu_ref[start:stop], rel)
        dist.barrier()
        print(f"[rank {rank}] {label}{scheme}: {time.perf_counter() - t0:.1f} s", flush=True)
    if setup.tp:
        t0 = time.perf_counter()
        _suite_tensor_parallel(v, rank, world, payload, setup=setup, plat=plat, dev=dev)
        print(f"[rank {rank}] {label}tensor parallel: {time.perf_counter() - t0:.1f} s", flush=True)


def _run_parallel(build: dict, inputs: tuple, parallel):
    """Build an EP kernel and run it on this rank's tokens (all tokens when they are replicated); output on the CPU."""
    from moe_oracle import TokenLayout, make_kernel

    x, tw, ids, start, stop = inputs
    kernel = make_kernel(**build, parallel=parallel)
    if parallel.tokens is not TokenLayout.REPLICATED:
        x, tw, ids = x[start:stop], tw[start:stop], ids[start:stop]
    return kernel, kernel(hidden_states=x, topk_weights=tw, topk_ids=ids).cpu()


def _suite_tensor_parallel(v: Verdicts, rank: int, world: int, payload: dict, *, setup: Setup, plat,
                           dev: torch.device) -> None:
    import torch.distributed as dist

    from moe_oracle import MoEConfig, ParallelConfig, make_kernel
    from weight_layouts import shard_experts_tp

    force, backend, label = setup.force, setup.backend, setup.label
    for scheme, path in payload["tp"].items():
        weights, activation = _layer(path, scheme)
        shard = shard_experts_tp(weights, tp_rank=rank, tp_size=world)
        padded = TP_PADDED[(weights.intermediate_size, world)]
        v.add(f"{label}tp{world} {scheme} padded", shard.intermediate_size == padded,
              f"padded intermediate {shard.intermediate_size}, expected {padded}")
        weights, shard = _on(weights, dev), _on(shard, dev)
        x, tw, ids = _routing(19, 4, TOP_K, seed=11, skew=False)
        tw, ids = tw.to(dev), ids.to(dev)
        for dtype in setup.dtypes:
            common = dict(num_experts=4, top_k=TOP_K, hidden_size=H, activation=activation, in_dtype=dtype)
            xd = x.to(dtype).to(dev)
            full = make_kernel(weights=weights, config=MoEConfig(**common, intermediate_size=weights.intermediate_size),
                               platform=plat,
                               force=force)
            ref = full(hidden_states=xd, topk_weights=tw, topk_ids=ids).cpu()
            kernel = make_kernel(weights=shard, config=MoEConfig(**common, intermediate_size=shard.intermediate_size),
                                 platform=plat, force=force, parallel=ParallelConfig(tp_group=dist.group.WORLD))
            out = kernel(hidden_states=xd, topk_weights=tw, topk_ids=ids).cpu()
            v.add(f"{label}tp{world} {scheme} {kernel.prepare_finalize.name}", kernel.prepare_finalize.name == "local+tp"
                  and kernel.selection.backend == backend, kernel.explain())
            rel = 1e-5 if dtype == torch.float32 else (world + 1) * U16
            v.frobenius(f"{label}tp{world} {scheme} {str(dtype)[6:]} vs tp1", out, ref, rel)


# -- the suites: name -> what runs (the process group's backend comes from the launcher) ----------
def _suite_reference(v: Verdicts, rank: int, world: int, payload: dict, backend: str) -> None:
    run_ep_suite(v, rank, world, payload, Setup())


def _suite_xpu(v: Verdicts, rank: int, world: int, payload: dict, backend: str) -> None:
    run_ep_suite(v, rank, world, payload, Setup(platform="xpu", force=None, backend="xpu", schemes=XPU_SCHEMES,
                                                dtypes=(torch.bfloat16,)))


def _pin_triton_configs(device: torch.device) -> None:
    """One Triton launch config for every M of the suite's shapes (``QMOE_TRITON_CONFIG_DIR``, files
    in the tuned-config format), so the single-process and the parallel layers run each row through
    the same tiles. Otherwise their different row counts pick different configs (16-row mma vs
    64-row wgmma tiles), whose float32 sums round differently; where a scheme re-quantizes the
    intermediate (fp8 / int8 activations) that can flip one code, which the same-backend
    elementwise bounds do not allow for. Config choice itself is triton-experts' own tests' concern."""
    import tempfile

    from triton_experts.kernels._generated_moe import VARIANTS
    from triton_experts.tuning import ENV_DIR, file_name

    folder = Path(tempfile.mkdtemp(prefix="qmoe-pinned-configs-"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    for variant, meta in VARIANTS.items():
        block_k = min(128, meta["k_granule"] or 128)  # a K tile never spans two activation scale groups
        pinned = {"1": dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=block_k, GROUP_M=1, num_warps=4, num_stages=2)}
        for n, k in ((2 * I_EP, H), (I_EP, H), (H, I_EP)):  # GEMM1 (gated or not), GEMM2; EP ranks read the model's E
            (folder / file_name(e=E, n=n, k=k, variant=variant, device=name)).write_text(json.dumps(pinned))
    os.environ[ENV_DIR] = str(folder)


def _suite_triton(v: Verdicts, rank: int, world: int, payload: dict, backend: str) -> None:
    _pin_triton_configs(torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu"))
    run_ep_suite(v, rank, world, payload, Setup(platform="cuda:9.0", force=None, backend="triton",
                                                schemes=TRITON_SCHEMES, dtypes=(torch.bfloat16,), variants=False))


def _triton_ep_schemes() -> tuple[str, ...]:
    import quantkeys as qk

    return tuple(s for s in EP_SCHEMES if qk.SCHEMES[s].support("triton") is not None)


def _suite_triton_all(v: Verdicts, rank: int, world: int, payload: dict, backend: str) -> None:
    """Every scheme the triton backend serves, every case, forced to triton, bfloat16; then the reference
    experts on the same devices against the reference on the CPU.

    Over NCCL each rank runs on ``cuda:{rank}`` and the single-process layer is the triton layer on
    that GPU. Over gloo (a dry run of the same logic on the CPU) the kernels need TRITON_INTERPRET=1.
    """
    on_gpu = backend == "nccl"
    device, platform = ("cuda", None) if on_gpu else ("cpu", "cuda:9.0")
    _pin_triton_configs(torch.device("cuda", rank) if on_gpu else torch.device("cpu"))
    run_ep_suite(v, rank, world, payload, Setup(platform=platform, force="triton", backend="triton",
                                                schemes=_triton_ep_schemes(), dtypes=(torch.bfloat16,),
                                                device=device, cross_reference=CROSS_SCHEMES))
    run_ep_suite(v, rank, world, payload, Setup(platform=platform, force="reference", backend="reference",
                                                schemes=REFERENCE_ON_GPU_SCHEMES, dtypes=(torch.bfloat16,),
                                                tp=False, device=device, single_on_cpu=True,
                                                label="reference vs cpu: "))


SUITES = {"reference": _suite_reference, "xpu": _suite_xpu, "triton": _suite_triton, "triton-all": _suite_triton_all}


def _worker(rank: int, world: int, store: str, suite: str, out_dir: str, backend: str, timeout_s: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    options: dict = {}
    if backend == "nccl":
        os.environ.update(NCCL_ENV)
        torch.cuda.set_device(rank)
        options["device_id"] = torch.device("cuda", rank)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s // 2), **options)
    try:
        t0 = time.perf_counter()
        payload = json.loads((Path(out_dir) / "payload.json").read_text())
        verdicts = Verdicts(rank)
        SUITES[suite](verdicts, rank, world, payload, backend)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(verdicts.items))
        print(f"[rank {rank}] suite {suite} over {backend}: {len(verdicts.items)} cases in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7]))
