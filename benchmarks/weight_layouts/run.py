"""Load a DeepSeek-V3-sized MoE layer (fp8-block) from disk: throughput and peak memory.

Writes one layer of E experts (default 256, H 7168, I 2048: 11.3 GB of fp8 plus scales) as a
real checkpoint (per-expert tensors, ~4 GB shards, index, config.json), then, each in a fresh
subprocess with a cold-ish page cache where the OS allows dropping it:

* ``load_experts``: this project's streaming loader (output stacked w13 [E, 2I, H], w2 [E, H, I]);
* peer: ``safetensors.torch.load_file`` of every shard, then ``torch.stack`` / ``torch.cat`` into the
  same stacked w13 / w2 (the straightforward way with the library);
* floor: reading the shard files sequentially into one reused buffer (the disk/page-cache rate).

Each row: seconds, GB/s of checkpoint bytes, peak RSS beyond the returned tensors, and ratios to
the peers. Results go to benchmarks/results/weight_layouts-<host>.json (plus the table).

    python benchmarks/weight_layouts/run.py [--experts 256] [--dir /tmp/dsv3-layer] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

H, I, BLOCK = 7168, 2048, 128  # noqa: E741  (DeepSeek-V3's names)
RESULTS = Path(__file__).resolve().parents[1] / "results"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def write_layer(root: Path, experts: int, shard_bytes: int = 4 << 30) -> int:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, size, index, total = {}, {}, 0, 1, 0

    def flush():
        nonlocal shard, size, index
        if shard:
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(root / name))
            weight_map.update(dict.fromkeys(shard, name))
            shard, size, index = {}, 0, index + 1

    for e in range(experts):
        for proj, (n, k) in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            raw = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
            raw[(raw & 0x7F) == 0x7F] = 0x10  # no NaN codes
            prefix = f"model.layers.3.mlp.experts.{e}.{proj}."
            shard[prefix + "weight"] = raw.view(torch.float8_e4m3fn)
            shard[prefix + "weight_scale_inv"] = torch.rand(n // BLOCK, k // BLOCK, generator=gen) * 1e-3 + 1e-4
            size += raw.numel() + 4 * (n // BLOCK) * (k // BLOCK)
            if size >= shard_bytes:
                total += size
                flush()
    total += size
    flush()
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": H,
        "moe_intermediate_size": I, "n_routed_experts": experts, "num_experts_per_tok": 8, "num_hidden_layers": 61,
        "first_k_dense_replace": 3, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                "weight_block_size": [128, 128]}}))
    return total


def _drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def child(mode: str, root: Path) -> dict:
    """Runs in a subprocess: measure one loader. Imports happen before the baseline."""
    import torch
    from safetensors.torch import load_file

    from weight_layouts import load_experts

    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    if mode == "load_experts":
        out = load_experts(root, 3)
        kept = out.nbytes()
    elif mode == "safetensors":
        # the library's way to the same stacked output: load every shard, then stack gate|up and down
        loaded = {}
        for shard in sorted(root.glob("*.safetensors")):
            loaded.update(load_file(str(shard)))
        experts = len({k.split(".")[5] for k in loaded})
        p = "model.layers.3.mlp.experts.{}.{}.{}"
        stacked = {}
        for t in ("weight", "weight_scale_inv"):
            stacked["w13_" + t] = torch.stack([torch.cat([loaded[p.format(e, "gate_proj", t)],
                                                          loaded[p.format(e, "up_proj", t)]]) for e in range(experts)])
            stacked["w2_" + t] = torch.stack([loaded[p.format(e, "down_proj", t)] for e in range(experts)])
        del loaded
        kept = sum(t.numel() * t.element_size() for t in stacked.values())
    else:  # sequential read floor
        buf = bytearray(64 << 20)
        view = memoryview(buf)
        kept = 0
        for shard in sorted(root.glob("*.safetensors")):
            with open(shard, "rb", buffering=0) as f:
                while f.readinto(view):
                    pass
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM") * 1024
    return {"mode": mode, "seconds": seconds, "kept_bytes": kept, "peak_rss_beyond_output": peak - base * 1024 - kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/dsv3-layer"))
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    ap.add_argument("--no-peer", action="store_true",
                    help="skip the safetensors peer (it needs ~2x the layer in RAM)")
    ap.add_argument("--child", choices=["load_experts", "safetensors", "read"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir)))
        return

    import torch

    if not (args.dir / "config.json").exists():
        t = time.perf_counter()
        write_layer(args.dir, args.experts)
        print(f"wrote {args.dir} in {time.perf_counter() - t:.1f} s")
    ckpt_bytes = sum(p.stat().st_size for p in args.dir.glob("*.safetensors"))
    rows = {}
    cold = None
    modes = ("read", "load_experts") if args.no_peer else ("read", "load_experts", "safetensors")
    for mode in modes:
        cold = _drop_caches()
        res = subprocess.run([sys.executable, __file__, "--child", mode, "--dir", str(args.dir)], check=True,
                             capture_output=True, text=True)
        rows[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    floor = rows["read"]["seconds"]
    print(f"\nDeepSeek-V3 layer: {args.experts} experts, H {H}, I {I}, fp8-block; {ckpt_bytes / 1e9:.2f} GB on disk; "
          f"page cache dropped between runs: {cold}")
    print(f"{'loader':<14} {'seconds':>8} {'GB/s':>7} {'vs read floor':>14} {'vs safetensors':>15} "
          f"{'peak RSS beyond output':>23}")
    peer = rows.get("safetensors", {}).get("seconds", float("nan"))
    for mode in ("load_experts", "safetensors", "read"):
        if mode not in rows:
            continue
        r = rows[mode]
        gbps = ckpt_bytes / r["seconds"] / 1e9
        extra = r["peak_rss_beyond_output"] / 2**20 if mode != "read" else float("nan")
        print(f"{mode:<14} {r['seconds']:8.2f} {gbps:7.2f} {floor / r['seconds']:14.2f} "
              f"{peer / r['seconds']:15.2f} {extra:20.0f} MiB")
    expert_bytes = 3 * H * I
    print(f"(one expert = {expert_bytes / 2**20:.0f} MiB; the issue's bound is two experts = "
          f"{2 * expert_bytes / 2**20:.0f} MiB)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"weight_layouts-E{args.experts}-{platform.node() or 'host'}.json"
    out.write_text(json.dumps({
        "benchmark": "weight_layouts load_experts, DeepSeek-V3 layer fp8-block",
        "experts": args.experts, "hidden": H, "intermediate": I, "checkpoint_bytes": ckpt_bytes,
        "page_cache_dropped": cold, "rows": rows,
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "triton": _version("triton"),
                    "mem_total_kib": int(Path("/proc/meminfo").read_text().split()[1])},
    }, indent=2))
    print(f"results: {out}")
    if not args.keep:
        shutil.rmtree(args.dir)


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
