"""Expert parallelism over NCCL: dispatch, experts and combine of the DeepSeek-V3 MoE layer, timed apart.

One process per visible GPU (spawned by this script; NCCL; rank r on cuda:r), DeepSeek-V3's layer
(E 256 routed experts, top-8, H 7168, I 2048) with block-fp8 weights (128x128 weight blocks,
dynamic 1x128 activations) generated at random on each GPU directly in the canonical fp8-block
format, E / world experts per rank (contiguous placement), the experts forced to ``triton``.
Data-parallel tokens: each rank brings M tokens, M in {1, 8, 32, 128, 512, 2048}, routed uniformly
at random (8 distinct experts per token). For each M and each prepare/finalize (``all_to_all``,
``naive``; forced through ``ParallelConfig(kind=...)``):

* the three phases of ``MoEKernel.__call__`` timed apart: dispatch (``prepare_finalize.prepare``),
  experts (``experts.apply``), combine (``prepare_finalize.finalize``), each between fences (CUDA
  synchronize, barrier, synchronize) with CUDA events; and the whole layer call the same way;
* per iteration the slowest rank's time, then the median over the iterations (after warm-up);
* bytes each rank sends to the other ranks per layer call, from the actual split sizes and the
  wire's row widths (all-to-all: the rows routed to other ranks' experts; naive: the ring
  all-gather / reduce-scatter's ``(ep - 1)`` chunks of the largest batch), the busiest rank's;
  achieved GB/s = those bytes / the phase's time;
* a peer measured in the same run: the bare torch.distributed collectives the phase issues, with
  the same split sizes and bytes (what the transport alone costs), and our time over it;
* the cost model of docs/expert-parallel.md at ``ep = world`` next to the measured dispatch and
  combine (the assumptions that differ are printed below the table).

Results: benchmarks/results/ep-<world>x<device>.json and .txt (and copies in $OUT when set).

    python benchmarks/ep/run.py [--m 1,8,32] [--kinds all_to_all,naive] [--iters 20] [--warmup 5]
    python benchmarks/ep/run.py --backend gloo --device cpu --smoke   # the logic on the CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DEEPSEEK = dict(e=256, k=8, h=7168, i=2048)
SMOKE = dict(e=16, k=4, h=256, i=256)
MS = (1, 8, 32, 128, 512, 2048)
SMOKE_MS = (1, 8, 32)
KINDS = ("all_to_all", "naive")
PHASES = ("dispatch", "experts", "combine", "layer")

# docs/expert-parallel.md, "Cost model": bytes/s per GPU and direction, latency per collective (assumed there)
B_NVL, B_NET = 150e9, 45e9
ALPHA_NODE, ALPHA_NET = 15e-6, 30e-6
GPUS_PER_NODE = 8


# -- the cost model of docs/expert-parallel.md at ep = world ------------------------------------------
def model_seconds(ep: int, nvl_bytes: float, net_bytes: float, collectives: int) -> float:
    alpha = ALPHA_NODE if ep <= GPUS_PER_NODE else ALPHA_NET
    return collectives * alpha + max(nvl_bytes / B_NVL, net_bytes / B_NET)


def model_us(kind: str, *, ep: int, m: int, k: int, h: int) -> tuple[float, float]:
    """(dispatch, combine) in us for ``m`` tokens per GPU, fp8 1x128 dispatch, bf16 combine, as in the docs."""
    row_fp8 = h + 4 * (h // 128) + 4 + 4
    back = 2 * h
    row_naive = h + 4 * (h // 128) + 4 * k + 4 * k
    intra = min(ep, GPUS_PER_NODE)
    f_nvl, f_net = (intra - 1) / ep, (ep - intra) / ep
    if kind == "all_to_all":
        d = model_seconds(ep, m * k * f_nvl * row_fp8, m * k * f_net * row_fp8, 2)
        c = model_seconds(ep, m * k * f_nvl * back, m * k * f_net * back, 1)
    else:
        ag, rs = m * (ep - 1) * row_naive, m * (ep - 1) * back

        def split(b: float) -> tuple[float, float]:
            return (0.0, 0.0) if ep == 1 else (b * (intra - 1) / (ep - 1), b * (ep - intra) / (ep - 1))

        d = model_seconds(ep, *split(ag), 2)
        c = model_seconds(ep, *split(rs), 1)
    return d * 1e6, c * 1e6


# -- weights and routing -------------------------------------------------------------------------------
def make_fp8_block_weights(e: int, h: int, i: int, device: torch.device, seed: int):
    """Random canonical fp8-block ExpertWeights (``e`` experts) built on ``device``: valid e4m3 codes
    (no NaN), 128x128 block scales in [1e-4, 1.1e-3]; filled a few experts at a time (low peak memory)."""
    import quantkeys as qk
    from weight_layouts import ExpertWeights, StackedWeight

    gen = torch.Generator(device=device).manual_seed(seed)

    def sw(rows: int, cols: int) -> StackedWeight:
        codes = torch.empty((e, rows, cols), dtype=torch.uint8, device=device)
        for lo in range(0, e, 8):
            chunk = codes[lo: lo + 8]
            chunk.random_(0, 256, generator=gen)
            chunk[(chunk & 0x7F) == 0x7F] = 0x38  # no NaN codes
        scale = torch.rand((e, rows // 128, cols // 128), device=device, generator=gen) * 1e-3 + 1e-4
        return StackedWeight(format="fp8-block", tensors={"weight": codes.view(torch.float8_e4m3fn),
                                                          "weight_scale_inv": scale},
                             params={"block_size": (128, 128)}, rows=rows, cols=cols)

    return ExpertWeights(w13=sw(2 * i, h), w2=sw(h, i), weight_key=qk.kFp8Static128BlockSym,
                         activation_key=qk.kFp8Dynamic128Sym)


def uniform_routing(m: int, e: int, k: int, device: torch.device, seed: int):
    """``k`` distinct experts per token, uniformly at random; softmax weights over them (float32)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    ids = torch.rand((m, e), device=device, generator=gen).topk(k, dim=-1).indices
    weights = torch.softmax(torch.randn((m, k), device=device, generator=gen), dim=-1)
    return weights.float(), ids.to(torch.int32)


# -- timing --------------------------------------------------------------------------------------------
class Clock:
    """Phase times in us between fences: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def fence(self) -> None:
        import torch.distributed as dist

        self.sync()
        dist.barrier()
        self.sync()

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def us(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) * 1e3
        return (end - start) * 1e6


def slowest_median(samples: list[list[float]], device: torch.device) -> list[float]:
    """``samples`` [iters][n] on every rank -> per column: median over iterations of the max over ranks."""
    import torch.distributed as dist

    mine = torch.tensor(samples, dtype=torch.float64, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    worst = torch.stack(every).amax(dim=0).cpu()  # [iters, n]
    return [statistics.median(worst[:, j].tolist()) for j in range(worst.shape[1])]


def gather_max(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


# -- one (M, kind) ---------------------------------------------------------------------------------------
def wire_bytes(kind: str, pf, prepared, *, rank: int, world: int, k: int, h: int, weight_size: int,
               out_size: int) -> dict:
    """Bytes this rank sends to other ranks per layer call, from the actual split sizes and row widths."""
    state = prepared.state
    if kind == "all_to_all":
        row = pf.codec.row_bytes + 4 + weight_size  # codes + scales, int32 expert id, router weight
        send, recv = list(state.send_counts), list(state.recv_counts)
        sent_rows = sum(send) - send[rank]
        back_rows = sum(recv) - recv[rank]
        return dict(dispatch=sent_rows * row + 8 * (world - 1), combine=back_rows * h * out_size,
                    dispatch_rows=sent_rows, row_bytes=row, send=send, recv=recv, experts_rows=sum(recv))
    row = pf.codec.row_bytes + 4 * k + weight_size * k  # codes + scales, k int32 ids, k router weights
    counts = list(state.counts)
    most = max(counts)
    return dict(dispatch=(world - 1) * (most * row + 8), combine=(world - 1) * most * h * out_size,
                dispatch_rows=(world - 1) * most, row_bytes=row, counts=counts, experts_rows=sum(counts))


def bench_case(kernel, kind: str, m: int, *, dims: dict, rank: int, world: int, device: torch.device,
               iters: int, warmup: int) -> tuple[dict, torch.Tensor]:
    """One (M, kind): the timings and bytes (the same on every rank) and this rank's layer output."""
    import torch.distributed as dist

    from moe_oracle.parallel.collectives import (
        all_gather_counts,
        all_gather_rows,
        all_to_all_rows,
        exchange_counts,
        reduce_scatter_rows,
    )

    e, k, h = dims["e"], dims["k"], dims["h"]
    clock = Clock(device)
    x = torch.randn((m, h), device=device, dtype=torch.bfloat16, generator=torch.Generator(device=device)
                    .manual_seed(1000 * rank + m))
    tw, ids = uniform_routing(m, e, k, device, seed=7919 * rank + m)
    pf, experts = kernel.prepare_finalize, kernel.experts

    def phases() -> list[float]:
        clock.fence()
        t0 = clock.mark()
        prepared = pf.prepare(hidden_states=x, topk_weights=tw, topk_ids=ids)
        t1 = clock.mark()
        clock.fence()
        t2 = clock.mark()
        out = experts.apply(hidden_states=prepared.hidden_states, topk_weights=prepared.topk_weights,
                            topk_ids=prepared.topk_ids)
        t3 = clock.mark()
        clock.fence()
        t4 = clock.mark()
        pf.finalize(output=out, prepared=prepared)
        t5 = clock.mark()
        clock.fence()
        t6 = clock.mark()
        kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)
        t7 = clock.mark()
        return [clock.us(t0, t1), clock.us(t2, t3), clock.us(t4, t5), clock.us(t6, t7)]

    prepared = pf.prepare(hidden_states=x, topk_weights=tw, topk_ids=ids)
    out = experts.apply(hidden_states=prepared.hidden_states, topk_weights=prepared.topk_weights,
                        topk_ids=prepared.topk_ids)
    wire = wire_bytes(kind, pf, prepared, rank=rank, world=world, k=k, h=h, weight_size=tw.element_size(),
                      out_size=out.element_size())
    result = pf.finalize(output=out, prepared=prepared)

    # the peer: the same collectives, same sizes, nothing else
    row_bytes = wire["row_bytes"]
    if kind == "all_to_all":
        send, recv = wire["send"], wire["recv"]
        counts_t = torch.tensor(send, dtype=torch.int64, device=device)
        rows = torch.zeros((sum(send), row_bytes), dtype=torch.uint8, device=device)
        back = torch.zeros((sum(recv), h), dtype=out.dtype, device=device)

        def peer_dispatch() -> None:
            exchange_counts(counts_t, group=dist.group.WORLD).tolist()  # the host reads the split sizes
            all_to_all_rows(rows, send_counts=send, recv_counts=recv, group=dist.group.WORLD)

        def peer_combine() -> None:
            all_to_all_rows(back, send_counts=recv, recv_counts=send, group=dist.group.WORLD)
    else:
        counts = wire["counts"]
        rows = torch.zeros((m, row_bytes), dtype=torch.uint8, device=device)
        partial = torch.zeros((sum(counts), h), dtype=out.dtype, device=device)

        def peer_dispatch() -> None:
            all_gather_counts(m, group=dist.group.WORLD, device=device)  # read back to the host
            all_gather_rows(rows, counts=counts, group=dist.group.WORLD)

        def peer_combine() -> None:
            reduce_scatter_rows(partial, counts=counts, rank=rank, group=dist.group.WORLD)

    def peers() -> list[float]:
        clock.fence()
        t0 = clock.mark()
        peer_dispatch()
        t1 = clock.mark()
        clock.fence()
        t2 = clock.mark()
        peer_combine()
        t3 = clock.mark()
        return [clock.us(t0, t1), clock.us(t2, t3)]

    for _ in range(warmup):
        phases()
        peers()
    ours = [phases() for _ in range(iters)]
    theirs = [peers() for _ in range(iters)]
    d, ex, c, layer = slowest_median(ours, device)
    pd, pc = slowest_median(theirs, device)
    busiest = gather_max([wire["dispatch"], wire["combine"], wire["experts_rows"]], device)
    md, mc = model_us(kind, ep=world, m=m, k=k, h=h)
    total = d + ex + c
    row = dict(kind=kind, m=m, dispatch_us=d, experts_us=ex, combine_us=c, layer_us=layer,
               share_dispatch=d / total, share_experts=ex / total, share_combine=c / total,
               dispatch_bytes=busiest[0], combine_bytes=busiest[1], experts_rows_max=int(busiest[2]),
               dispatch_row_bytes=row_bytes, dispatch_gbps=busiest[0] / d * 1e-3 if d else 0.0,
               combine_gbps=busiest[1] / c * 1e-3 if c else 0.0,
               peer_dispatch_us=pd, peer_combine_us=pc, dispatch_over_peer=d / pd if pd else float("nan"),
               combine_over_peer=c / pc if pc else float("nan"),
               peer_dispatch_gbps=busiest[0] / pd * 1e-3 if pd else 0.0,
               peer_combine_gbps=busiest[1] / pc * 1e-3 if pc else 0.0,
               model_dispatch_us=md, model_combine_us=mc)
    return row, result


# -- the report ------------------------------------------------------------------------------------------
HEADER = (f"{'kind':10} {'M':>5} {'exp.rows':>8} | {'dispatch':>9} {'experts':>9} {'combine':>9} {'layer':>9} us | "
          f"{'d%':>3} {'e%':>3} {'c%':>3} | {'disp MB':>8} {'GB/s':>6} {'comb MB':>8} {'GB/s':>6} | "
          f"{'peer d':>7} {'x':>5} {'peer c':>7} {'x':>5} | {'model d':>7} {'x':>5} {'model c':>7} {'x':>5} | {'vs 1st':>7}")


def format_row(r: dict) -> str:
    return (f"{r['kind']:10} {r['m']:5d} {r['experts_rows_max']:8d} | {r['dispatch_us']:9.1f} {r['experts_us']:9.1f} "
            f"{r['combine_us']:9.1f} {r['layer_us']:9.1f}    | {100 * r['share_dispatch']:3.0f} "
            f"{100 * r['share_experts']:3.0f} {100 * r['share_combine']:3.0f} | {r['dispatch_bytes'] / 1e6:8.3f} "
            f"{r['dispatch_gbps']:6.1f} {r['combine_bytes'] / 1e6:8.3f} {r['combine_gbps']:6.1f} | "
            f"{r['peer_dispatch_us']:7.1f} {r['dispatch_over_peer']:5.2f} {r['peer_combine_us']:7.1f} "
            f"{r['combine_over_peer']:5.2f} | {r['model_dispatch_us']:7.1f} "
            f"{r['dispatch_us'] / r['model_dispatch_us']:5.2f} {r['model_combine_us']:7.1f} "
            f"{r['combine_us'] / r['model_combine_us']:5.2f} | "
            f"{next((v for key, v in r.items() if key.startswith('rel_diff_vs_')), 0.0):7.1e}")


LEGEND = """\
Columns: exp.rows = rows the busiest rank's experts ran (all-to-all: (token, slot) rows received,
each a token of one slot; naive: every rank's tokens); dispatch / experts / combine =
prepare, experts.apply, finalize, each between fences, and layer = the whole kernel call (median
over iterations of the slowest rank, us); d% e% c% = each phase's share of their sum; disp / comb
MB = bytes the busiest rank sends to other ranks per call and GB/s = those bytes / the phase time;
peer d / c = the bare collectives with the same splits and bytes (all-to-all: split-size exchange
read back to the host + rows; naive: count all-gather + padded all-gather / reduce-scatter), x =
ours / peer; model d / c = docs/expert-parallel.md's cost model at ep = world, x = measured / model;
vs 1st = relative Frobenius distance of the layer's output to the first kind's on the same tokens
(the slowest rank's; a sanity check of what was timed: bf16 roundings apart, the same layer)."""


def model_notes(world: int, rows: list[dict], *, k: int, cuda: bool) -> list[str]:
    largest = [r for r in rows if r["m"] == max(x["m"] for x in rows)]
    best = max([r["peer_dispatch_gbps"] for r in largest] + [r["peer_combine_gbps"] for r in largest], default=0.0)
    notes = [
        f"Bandwidth: the model assumes {B_NVL / 1e9:.0f} GB/s per GPU and direction over NVLink; the bare "
        "collectives (peer) reach " + ", ".join(
            f"{r['kind']} dispatch {r['peer_dispatch_gbps']:.0f} / combine {r['peer_combine_gbps']:.0f} GB/s"
            for r in largest) + f" at M = {largest[0]['m'] if largest else 0} and our phases "
        + ", ".join(f"{r['kind']} {r['dispatch_gbps']:.0f} / {r['combine_gbps']:.0f} GB/s" for r in largest)
        + f" ({'above' if best > B_NVL / 1e9 else 'below'} the model's figure for the bare transport).",
        f"Latency: the model charges {ALPHA_NODE * 1e6:.0f} us per collective (dispatch 2, combine 1); the bare "
        "collectives at the smallest M take " + ", ".join(
            f"{r['kind']} {r['peer_dispatch_us']:.0f} / {r['peer_combine_us']:.0f} us"
            for r in rows if r["m"] == min(x["m"] for x in rows)) + " (dispatch / combine), the host read-back "
        "of the split sizes included.",
        "Compute: the model leaves out everything but the wire; the measured dispatch also quantizes the "
        "rows (fp8 1x128, torch ops), groups them by destination (argsort, bincount, gather, cat), reads the "
        "split sizes back to the host and decodes the received rows; the combine also runs the float32 "
        "weighted sum (index_add) and the cast. ours / peer isolates that overhead.",
        "Rows: the model counts only the k (ep-1)/ep off-GPU slots per token; all_to_all_single also copies "
        "the 1/ep local rows through NCCL (not counted in MB here), and the combine returns every received row.",
        f"Routing: uniform, as in the model ({k} distinct experts per token, drawn uniformly); real routing is "
        "skewed and the busiest rank sets the time.",
        (f"Topology: {world} GPUs of one node, every byte over NVLink (the model's network term is 0 at ep <= 8)."
         if cuda else f"Topology: {world} CPU processes over gloo (shared memory / loopback): the model does not apply; "
         "this run checks the script's logic only."),
        "Naive: the model's all-gather row (codes + scales + k ids + k weights) and bf16 reduce-scatter are what "
        "runs here; batches are equal, so the padding to the largest batch sends nothing extra.",
    ]
    return notes


def write_results(result: dict, text: str, *, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.txt"]
    paths[0].write_text(json.dumps(result, indent=1))
    paths[1].write_text(text)
    if os.environ.get("OUT"):
        for p in paths:
            (Path(os.environ["OUT"]) / p.name).write_text(p.read_text())
    return paths


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


# -- the worker ------------------------------------------------------------------------------------------
def worker(rank: int, world: int, args: argparse.Namespace, store: str) -> None:
    import torch.distributed as dist

    from moe_oracle import MoEConfig, ParallelConfig, Platform, PrepareFinalizeKind, make_kernel

    os.environ.update(NCCL_ENV)
    cuda = args.device == "cuda"
    options: dict = {}
    if cuda:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        if args.backend == "nccl":
            options["device_id"] = device
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or world) // world))
    dist.init_process_group(args.backend, init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600), **options)
    try:
        dims = SMOKE if args.smoke else DEEPSEEK
        e, k, h, i = dims["e"], dims["k"], dims["h"], dims["i"]
        if e % world:
            raise SystemExit(f"{e} experts do not split over {world} ranks")
        t0 = time.perf_counter()
        local = make_fp8_block_weights(e // world, h, i, device, seed=rank)
        config = MoEConfig(num_experts=e, top_k=k, hidden_size=h, intermediate_size=i, ep_rank=rank, ep_size=world,
                           in_dtype=torch.bfloat16)
        plat = Platform.detect() if cuda else Platform.parse("cpu")
        kernels = {kind: make_kernel(weights=local, config=config, platform=plat, force=args.experts,
                                     parallel=ParallelConfig(kind=PrepareFinalizeKind(kind))) for kind in args.kinds}
        del local
        build_s = time.perf_counter() - t0
        first = kernels[args.kinds[0]]
        if rank == 0:
            print(f"weights: {e // world} experts per rank, {first.experts.weights.nbytes() / 1e9:.2f} GB, built in "
                  f"{build_s:.1f} s", flush=True)
            for kind, kern in kernels.items():
                print(f"--- {kind}\n{kern.explain()}", flush=True)
            print(HEADER, flush=True)
        rows = []
        for m in args.m:
            first_out = None
            for kind in args.kinds:
                t1 = time.perf_counter()
                row, out = bench_case(kernels[kind], kind, m, dims=dims, rank=rank, world=world, device=device,
                                      iters=args.iters, warmup=args.warmup)
                # a sanity check of what was timed: every kind computes the same layer (bf16 roundings apart)
                if first_out is None:
                    first_out, rel = out, 0.0
                else:
                    rel = float((out.double() - first_out.double()).norm() / first_out.double().norm().clamp(min=1e-30))
                row["rel_diff_vs_" + args.kinds[0]] = gather_max([rel], device)[0]
                row["seconds"] = time.perf_counter() - t1
                rows.append(row)
                if rank == 0:
                    print(format_row(row), flush=True)
        if rank == 0:
            report(rows, args=args, world=world, dims=dims, device=device, build_s=build_s,
                   explain={kind: kern.explain() for kind, kern in kernels.items()},
                   backend_name=first.selection.backend)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def report(rows: list[dict], *, args, world: int, dims: dict, device: torch.device, build_s: float,
           explain: dict, backend_name: str) -> None:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        nccl = torch.cuda.nccl.version() if args.backend == "nccl" else ""
        versions = {"device": name, "cuda": str(torch.version.cuda),
                    "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)}
    else:
        name = "cpu"
        versions = {"device": platform.processor() or "cpu"}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = ""
    versions.update(torch=torch.__version__, python=platform.python_version())
    stem = f"ep-{world}x{safe_name(name)}" + ("-smoke" if args.smoke else "")
    title = (f"# benchmarks/ep/run.py: {world} x {name}, {args.backend}, experts {backend_name}, "
             f"{'smoke shape' if args.smoke else 'DeepSeek-V3 layer'} E {dims['e']} top-{dims['k']} H {dims['h']} "
             f"I {dims['i']}, fp8_block, bf16 activations, uniform routing; median of {args.iters} iterations "
             f"after {args.warmup}, slowest rank\n# " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    notes = model_notes(world, rows, k=dims["k"], cuda=device.type == "cuda")
    text = "\n".join([title, HEADER, *map(format_row, rows), "", LEGEND, "",
                      "Cost model (docs/expert-parallel.md) vs this run, assumptions that differ:",
                      *(f"* {n}" for n in notes), ""])
    result = {**versions, "world": world, "backend": args.backend, "experts_backend": backend_name,
              "shape": dims, "scheme": "fp8_block", "activations": "bfloat16", "routing": "uniform top-k",
              "iters": args.iters, "warmup": args.warmup, "timing": "median over iterations of the slowest rank",
              "build_s": build_s, "explain": explain,
              "model": {"B_NVL": B_NVL, "B_NET": B_NET, "alpha_node": ALPHA_NODE, "alpha_net": ALPHA_NET,
                        "gpus_per_node": GPUS_PER_NODE, "ep": world},
              "model_notes": notes, "rows": rows}
    out_dir = args.out or (Path(tempfile.gettempdir()) / "qmoe-ep-smoke" if args.smoke else RESULTS)
    paths = write_results(result, text, out_dir=out_dir, stem=stem)
    print("\n" + LEGEND + "\n\nCost model (docs/expert-parallel.md) vs this run, assumptions that differ:")
    for n in notes:
        print(f"* {n}")
    print("results: " + ", ".join(map(str, paths)), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--backend", choices=("nccl", "gloo"), default=None, help="default: nccl on cuda, gloo on cpu")
    ap.add_argument("--world", type=int, default=None, help="processes (default: every visible GPU; 2 on the CPU)")
    ap.add_argument("--smoke", action="store_true", help=f"tiny shapes {SMOKE}, M {SMOKE_MS}, 3 iterations")
    ap.add_argument("--m", default=None, help=f"tokens per rank, comma-separated (default {','.join(map(str, MS))})")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 20; smoke 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 5; smoke 1)")
    ap.add_argument("--experts", default=None, help="experts backend to force (default: triton on cuda, "
                    "reference on cpu)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results; "
                    "smoke: a temporary folder)")
    args = ap.parse_args(argv)
    args.backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    args.experts = args.experts or ("triton" if args.device == "cuda" else "reference")
    args.m = [int(x) for x in args.m.split(",")] if args.m else list(SMOKE_MS if args.smoke else MS)
    args.kinds = [kind for kind in args.kinds.split(",") if kind]
    for kind in args.kinds:
        if kind not in KINDS:
            ap.error(f"--kinds: {kind!r} is not one of {', '.join(KINDS)}")
    args.iters = args.iters if args.iters is not None else (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    if args.backend == "nccl" and args.device != "cuda":
        ap.error("NCCL needs --device cuda")
    if args.world is None:
        if args.device == "cuda":
            args.world = torch.cuda.device_count() if torch.cuda.is_available() else 0
        else:
            args.world = 2
    if args.device == "cuda" and not 1 <= args.world <= (torch.cuda.device_count() if torch.cuda.is_available() else 0):
        ap.error(f"--device cuda needs {args.world or 'some'} visible GPUs, found "
                 f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} (try --backend gloo --device cpu "
                 "--smoke)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.update(NCCL_ENV)  # the spawned ranks inherit them
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="qmoe-ep-") as tmp:
        store = str(Path(tmp) / "store")
        t0 = time.perf_counter()
        mp.spawn(worker, args=(args.world, args, store), nprocs=args.world, join=True)
        print(f"done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
