"""Fused-MoE Triton kernels on the GPU vs torch's grouped GEMMs and the weight-bandwidth floor.

Models: DeepSeek-V3 (E 256, top-8, H 7168, I 2048), Qwen3-30B-A3B (E 128, top-8, H 2048, I 768),
Mixtral-8x7B (E 8, top-2, H 4096, I 14336); tokens M in {1, 8, 32, 128, 512, 2048, 8192};
schemes bf16, fp8_block (128x128 weights, dynamic 1x128 activations), int4_w4a16 (GPTQ g128).

Each row: the whole MoE layer call through moe-oracle's kernel (alignment, activation quant,
GEMM1, activation, GEMM2, top-k reduce) in us; TFLOPS (2 * M * k * 3 * H * I); GB/s of the distinct
experts' weight bytes hit; the weight-bandwidth floor (those bytes / the measured copy bandwidth)
and our time over it; and, measured in the same run on the same routing, torch._grouped_mm bf16 and
torch._scaled_grouped_mm fp8 row-wise doing the same two expert GEMMs plus the activation (tokens
pre-sorted by expert; no alignment, quantization of the input or reduce counted for them), with
the ratio peer_time / our_time (> 1 means we are faster).

Decode rows (M <= 32) also replay the call from a CUDA graph (``graph_us``: one call per graph, so
the graph's launch latency is in it); M = 1 rows also time a graph of up to 8 calls on disjoint
expert sets (``per_layer_us``: as an engine's decode graph runs consecutive layers, each reading
its own experts from HBM; the floor per call is the same k experts' bytes).

    python benchmarks/triton_experts/run.py [--models qwen3,mixtral,deepseek] [--m 1,8,...] [--schemes ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

MODELS = {
    "deepseek": dict(e=256, k=8, h=7168, i=2048),
    "qwen3": dict(e=128, k=8, h=2048, i=768),
    "mixtral": dict(e=8, k=2, h=4096, i=14336),
}
MS = (1, 8, 32, 128, 512, 2048, 8192)
RESULTS = Path(__file__).resolve().parents[1] / "results"


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


def make_weights(scheme: str, e: int, h: int, i: int):
    """Random canonical ExpertWeights built directly on the GPU (valid codes and scales)."""
    import quantkeys as qk
    from weight_layouts import ExpertWeights, StackedWeight

    dev = "cuda"

    def fp8(rows, cols):
        raw = torch.randint(0, 256, (e, rows, cols), dtype=torch.uint8, device=dev)
        raw[(raw & 0x7F) == 0x7F] = 0x38  # no NaN codes
        return raw.view(torch.float8_e4m3fn)

    if scheme == "bf16":
        def sw(rows, cols):
            return StackedWeight(format="dense", tensors={"weight": torch.randn(e, rows, cols, device=dev,
                                 dtype=torch.bfloat16) / cols**0.5}, rows=rows, cols=cols)
        keys = (None, None)
    elif scheme == "fp8_block":
        def sw(rows, cols):
            s = torch.rand(e, rows // 128, cols // 128, device=dev) * 1e-3 + 1e-4
            return StackedWeight(format="fp8-block", tensors={"weight": fp8(rows, cols), "weight_scale_inv": s},
                                 params={"block_size": (128, 128)}, rows=rows, cols=cols)
        keys = (qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym)
    else:
        def sw(rows, cols):
            qweight = torch.randint(-(2**31), 2**31 - 1, (e, cols // 8, rows), dtype=torch.int32, device=dev)
            qzeros = torch.full((e, cols // 128, rows // 8), 0x77777777, dtype=torch.int32, device=dev)
            scales = (torch.rand(e, cols // 128, rows, device=dev) * 1e-2 + 1e-3).to(torch.float16)
            g_idx = (torch.arange(cols, device=dev, dtype=torch.int32) // 128).expand(e, cols).contiguous()
            return StackedWeight(format="gptq", tensors={"qweight": qweight, "qzeros": qzeros, "scales": scales,
                                 "g_idx": g_idx}, params={"bits": 4, "group_size": 128, "sym": True,
                                                          "desc_act": False, "checkpoint_format": "gptq"},
                                 rows=rows, cols=cols)
        keys = (qk.kInt4Static, None)
    return ExpertWeights(w13=sw(2 * i, h), w2=sw(h, i), weight_key=keys[0], activation_key=keys[1])


def routing(m: int, e: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.rand(m, e, device="cuda", generator=gen)
    weights, ids = torch.softmax(logits, -1).topk(k, dim=-1)
    return (weights / weights.sum(-1, keepdim=True)).float(), ids.to(torch.int32)


def peer_inputs(x, ids, e):
    """Tokens sorted by expert (what a grouped GEMM consumes) and int32 cumulative offsets."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    rows = x[order // ids.shape[1]]
    counts = torch.bincount(flat, minlength=e)
    return rows.contiguous(), torch.cumsum(counts, 0).to(torch.int32)


def layer_chain_ms(*, fn_for, e: int, k: int, layers: int = 8) -> tuple[float, int] | None:
    """One token's call as an engine's decode graph runs it: ``layers`` calls (at most E / k) captured in
    one CUDA graph, each routed to k experts no other call of the graph hits (so each reads its
    weights from HBM, as consecutive layers do), L2 flushed before each replay; returns (time per
    call, calls). The graph's own launch latency (~4.7 us on the H100, benchmarks/results/
    triton_experts-decode_diag_s9-*) is paid once per graph here, once per call in ``graph_us``."""
    import triton.testing

    count = min(layers, e // k)
    gen = torch.Generator(device="cuda").manual_seed(1234)
    sets = torch.randperm(e, device="cuda", generator=gen)[:count * k].to(torch.int32).view(count, 1, k)
    try:
        for j in range(count):
            fn_for(sets[j])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for j in range(count):
                fn_for(sets[j])
        total = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    except Exception as exc:
        print(f"  layer-chain graph failed: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
        return None
    return total / count, count


def bench_model(name: str, dims: dict, schemes: list[str], ms: list[int], bw: float) -> list[dict]:
    import triton.testing

    from moe_oracle import MoEConfig, Platform, make_kernel

    e, k, h, i = dims["e"], dims["k"], dims["h"], dims["i"]
    plat = Platform.detect()
    rows = []
    for scheme in schemes:
        weights = make_weights(scheme, e, h, i)
        per_expert = weights.nbytes() / e
        config = MoEConfig(num_experts=e, top_k=k, hidden_size=h, intermediate_size=i, in_dtype=torch.bfloat16)
        t0 = time.perf_counter()
        kernel = make_kernel(weights=weights, config=config, platform=plat, force="triton")
        build_s = time.perf_counter() - t0
        del weights
        # peers use weights of their own dtype, same shapes ([E, N, K] storage, passed transposed)
        w13_bf = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) if scheme == "bf16" else None
        w2_bf = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) if scheme == "bf16" else None
        if scheme == "fp8_block":
            w13_f8 = kernel.experts.w13["weight"]
            w2_f8 = kernel.experts.w2["weight"]
            s13 = torch.rand(e, 2 * i, device="cuda") + 0.5
            s2 = torch.rand(e, h, device="cuda") + 0.5
        for m in ms:
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
            tw, ids = routing(m, e, k, seed=m)
            fn = lambda: kernel(hidden_states=x, topk_weights=tw, topk_ids=ids)  # noqa: E731
            fn()
            torch.cuda.synchronize()
            ms_ours = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            if m <= 32:  # decode as engines run it: the whole call replayed from a CUDA graph
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        fn()
                    row_graph_ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
                except Exception as exc:
                    row_graph_ms = None
                    print(f"  graph capture failed: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
            else:
                row_graph_ms = None
            layers_ms = layer_chain_ms(fn_for=lambda ids_j: kernel(hidden_states=x, topk_weights=tw, topk_ids=ids_j),
                                       e=e, k=k) if m == 1 else None
            hit = int(torch.unique(ids).numel())
            bytes_hit = hit * per_expert
            floor_ms = bytes_hit / bw * 1e3
            flops = 2 * m * k * 3 * h * i
            row = dict(model=name, scheme=scheme, m=m, us=ms_ours * 1e3, tflops=flops / (ms_ours * 1e-3) / 1e12,
                       weight_gbps=bytes_hit / (ms_ours * 1e-3) / 1e9, floor_us=floor_ms * 1e3,
                       over_floor=ms_ours / floor_ms, experts_hit=hit, build_s=build_s,
                       tuned=[bool(t) for _, t in kernel.experts.last_configs])
            if row_graph_ms is not None:
                row["graph_us"] = row_graph_ms * 1e3
                row["graph_over_floor"] = row_graph_ms / floor_ms
            if layers_ms is not None:
                row["layers_in_graph"] = layers_ms[1]
                row["per_layer_us"] = layers_ms[0] * 1e3
                row["per_layer_over_floor"] = layers_ms[0] / floor_ms
            a, offs = peer_inputs(x, ids, e)
            if scheme == "bf16":
                def peer():
                    g1 = torch._grouped_mm(a, w13_bf.transpose(-2, -1), offs=offs)
                    act = torch.nn.functional.silu(g1[:, :i]) * g1[:, i:]
                    return torch._grouped_mm(act, w2_bf.transpose(-2, -1), offs=offs)
                row["peer"] = "torch._grouped_mm bf16"
            elif scheme == "fp8_block":
                a_f8 = a.to(torch.float8_e4m3fn)
                sa = torch.ones(a.shape[0], device="cuda")

                def peer():
                    g1 = torch._scaled_grouped_mm(a_f8, w13_f8.transpose(-2, -1), sa, s13, offs=offs,
                                                  out_dtype=torch.bfloat16)
                    act = torch.nn.functional.silu(g1[:, :i]) * g1[:, i:]
                    amax = act.abs().amax(-1).clamp(min=1e-10).float()
                    q = (act / (amax / 448)[:, None]).to(torch.float8_e4m3fn)
                    return torch._scaled_grouped_mm(q, w2_f8.transpose(-2, -1), amax / 448, s2, offs=offs,
                                                    out_dtype=torch.bfloat16)
                row["peer"] = "torch._scaled_grouped_mm fp8 rowwise"
            else:
                peer = None
                row["peer"] = "none (no torch grouped int4 GEMM)"
            if peer is not None:
                try:
                    peer()
                    ms_peer = triton.testing.do_bench(peer, warmup=25, rep=100, return_mode="median")
                    row["peer_us"] = ms_peer * 1e3
                    row["peer_over_ours"] = ms_peer / ms_ours
                except Exception as exc:  # a peer that cannot run this shape is reported, not fatal
                    row["peer_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
            rows.append(row)
            print(f"{name:8} {scheme:10} M={m:5d} {row['us']:9.1f} us {row['tflops']:7.1f} TF "
                  f"{row['weight_gbps']:7.0f} GB/s floor {row['floor_us']:8.1f} us x{row['over_floor']:5.2f} | "
                  f"{row['peer']}: {row.get('peer_us', float('nan')):9.1f} us ratio {row.get('peer_over_ours', float('nan')):5.2f}"
                  f"{' ' + row['peer_error'] if 'peer_error' in row else ''}"
                  f"{' | graph {:.1f} us x{:.2f}'.format(row['graph_us'], row['graph_over_floor']) if 'graph_us' in row else ''}"
                  f"{' | per layer of {} {:.1f} us x{:.2f}'.format(row['layers_in_graph'], row['per_layer_us'], row['per_layer_over_floor']) if 'per_layer_us' in row else ''}"
                  f" | tuned {row['tuned']}", flush=True)
        kernel = None  # free the experts before the next scheme
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3,mixtral,deepseek")
    ap.add_argument("--schemes", default="bf16,fp8_block,int4_w4a16")
    ap.add_argument("--m", default=",".join(map(str, MS)))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import triton

    bw = copy_bandwidth()
    device = torch.cuda.get_device_name()
    print(f"device {device}, torch {torch.__version__}, triton {triton.__version__}, copy bandwidth {bw / 1e12:.2f} TB/s")
    rows = []
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"triton_experts-{args.models.replace(',', '_')}-{device.replace(' ', '_')}.json"
    for name in args.models.split(","):
        for scheme in args.schemes.split(","):
            rows += bench_model(name, MODELS[name], [scheme], [int(m) for m in args.m.split(",")], bw)
            # written after every model and scheme, so a run cut short keeps what it measured
            out.write_text(json.dumps({"device": device, "torch": torch.__version__, "triton": triton.__version__,
                                       "python": platform.python_version(), "copy_bandwidth_Bps": bw,
                                       "rows": rows}, indent=1))
            if os.environ.get("OUT"):
                (Path(os.environ["OUT"]) / out.name).write_text(out.read_text())
    print(f"results: {out}")


if __name__ == "__main__":
    main()
