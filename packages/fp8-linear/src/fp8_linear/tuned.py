"""Triton launch configs: tuned ones per (variant, N, K, device) from JSON, a heuristic elsewhere.

Files live in ``fp8_linear/configs/`` (``benchmarks/fp8_linear/tune.py`` writes them), named
``{variant}-N{N}-K{K}-B{bn}x{bk}-{device}.json`` with ``device`` the CUDA device name, spaces as
underscores. Content::

    {"variant": "block", "n": 7168, "k": 2048, "block_size": [128, 128],
     "device": "NVIDIA H100 80GB HBM3", "torch": "...", "triton": "...",
     "configs": {"16": {"block_m": 16, "block_n": 64, "block_k": 128, "group_m": 1,
                        "split_k": 4, "num_warps": 4, "num_stages": 4},
                 "4096": {"engine": "wgmma", "block_m": 128, "block_n": 128, "block_k": 128,
                          "group_m": 8, "num_stages": 4, ...}, ...},
     "timings_us": {"16": {"triton": 9.1, "cublas": 10.3}, ...}}

The entry whose M is nearest (in log2) to the problem's M is used. ``timings_us`` lets the
registry prefer the faster of Triton and cuBLAS per M on that device.
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .variant_types import GemmVariant, ScaleApply

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
WGMMA_TILE = 128  # the Gluon kernel's tile edge: the weight block and the K group
WGMMA_MAX_STAGES = 5  # 5 slots of 32 KiB plus the output staging fit the H100's 227 KiB
ENV_CONFIG_DIR = "FP8_LINEAR_CONFIG_DIR"  # an extra folder searched first (tuning output)


class Engine(enum.Enum):
    """Which generated kernel family a config launches."""

    POINTERS = "pointers"  # the Triton kernels of every variant (_generated_gemm): any platform
    WGMMA = "wgmma"  # the warp-specialized Gluon kernels (_generated_wgmma): sm90, variants with wgmma


@dataclass(frozen=True, kw_only=True)
class GemmConfig:
    """Tile sizes and launch options of a Triton GEMM (see the generated kernels' docstrings).

    ``engine`` WGMMA: 128 x 128 x 128 tiles, ``num_stages`` shared-memory slots, ``group_m`` the
    grouped tile order; ``split_k``, ``k_unroll`` and ``num_warps`` do not apply (``fit_config``
    pins them). Where the Gluon kernel cannot run (not sm90, unaligned operands), the launch uses
    the pointer kernel with the same tiles.
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    k_unroll: int = 1  # K iterations per loop step (1 or 2)
    engine: Engine = Engine.POINTERS

    def to_json(self) -> dict[str, int | str]:
        return {**asdict(self), "engine": self.engine.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GemmConfig:
        fields = {f: int(data[f]) for f in ("block_m", "block_n", "block_k")}
        extra = {f: int(data[f]) for f in ("group_m", "split_k", "num_warps", "num_stages", "k_unroll") if f in data}
        try:
            engine = Engine(data.get("engine", Engine.POINTERS.value))
        except ValueError:
            raise ValueError(f"unknown GEMM engine {data['engine']!r} in a tuned config; expected one of "
                             f"{[e.value for e in Engine]}") from None
        return cls(**fields, **extra, engine=engine)


def device_key(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


def config_filename(variant: str, n: int, k: int, block_size: tuple[int, int], device_name: str) -> str:
    bn, bk = block_size
    return f"{variant}-N{n}-K{k}-B{bn}x{bk}-{device_key(device_name)}.json"


@dataclass(frozen=True)
class TunedTable:
    """One tuned file: configs and timings per M."""

    configs: dict[int, GemmConfig]
    timings_us: dict[int, dict[str, float]]

    def nearest_m(self, m: int) -> int:
        keys = list(self.configs) or list(self.timings_us)
        return min(keys, key=lambda key: (abs(math.log2(max(key, 1)) - math.log2(max(m, 1))), key))


def _search_dirs() -> list[Path]:
    extra = os.environ.get(ENV_CONFIG_DIR)
    return ([Path(extra)] if extra else []) + [CONFIG_DIR]


@lru_cache(maxsize=512)
def load_table(variant: str, n: int, k: int, block_size: tuple[int, int], device_name: str | None) -> TunedTable | None:
    """The tuned table for this shape on this device, or None."""
    if not device_name:
        return None
    name = config_filename(variant, n, k, block_size, device_name)
    for folder in _search_dirs():
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            configs = {int(m): GemmConfig.from_json(c) for m, c in data.get("configs", {}).items()}
            timings = {int(m): {str(a): float(b) for a, b in t.items()} for m, t in data.get("timings_us", {}).items()}
            return TunedTable(configs, timings)
    return None


def heuristic_config(m: int, n: int, k: int, *, group_k: int | None, num_sms: int = 132) -> GemmConfig:
    """A reasonable config for shapes nobody tuned (H100-minded; valid everywhere).

    Small M is weight-bandwidth bound: one row tile covers M, narrow column tiles, and split-K
    when the tiles alone cannot fill the SMs. Large M uses 64 x 128 tiles (which beat 128-row tiles
    for this kernel on the H100).
    """
    bk = 128 if group_k is None else min(128, group_k)
    if m <= 64:
        bm = max(16, 1 << max(0, (m - 1).bit_length()))
        bn = 64 if n >= 4096 else 32
        cfg = GemmConfig(block_m=bm, block_n=bn, block_k=bk, group_m=1, num_warps=4, num_stages=4)
    elif m <= 256:
        cfg = GemmConfig(block_m=64, block_n=64, block_k=bk, group_m=8, num_warps=4, num_stages=4)
    else:
        cfg = GemmConfig(block_m=64, block_n=128, block_k=bk, group_m=8, num_warps=4, num_stages=4)
    tiles = -(-m // cfg.block_m) * -(-n // cfg.block_n)
    k_iters = -(-k // cfg.block_k)
    if tiles < num_sms and k_iters >= 8:
        split = min(-(-num_sms // tiles), k_iters // 4, 16)
        cfg = replace(cfg, split_k=max(1, split))
    return cfg


def fit_config(cfg: GemmConfig, variant: GemmVariant, *, k: int, group_k: int | None) -> GemmConfig:
    """Make ``cfg`` valid for the variant and shape: BLOCK_K divides the scale group (k_group
    variants), at least 16 everywhere, split-K no larger than the K iterations; the WGMMA engine
    only for variants that have it and 128-wide K groups, with its fixed tiles."""
    if cfg.engine is Engine.WGMMA:
        if variant.wgmma and group_k == WGMMA_TILE:
            return replace(cfg, block_m=WGMMA_TILE, block_n=WGMMA_TILE, block_k=WGMMA_TILE, split_k=1, k_unroll=1,
                           num_warps=4, num_stages=min(max(cfg.num_stages, 2), WGMMA_MAX_STAGES),
                           group_m=max(1, cfg.group_m))
        cfg = replace(cfg, engine=Engine.POINTERS)
    bk = cfg.block_k
    if variant.apply is ScaleApply.K_GROUP and group_k is not None:
        bk = math.gcd(bk, group_k)
    bk = max(bk, 16)
    k_iters = max(1, -(-k // bk))
    split = max(1, min(cfg.split_k, k_iters))
    return replace(cfg, block_k=bk, split_k=split, block_m=max(16, cfg.block_m), block_n=max(16, cfg.block_n),
                   k_unroll=2 if cfg.k_unroll == 2 else 1)


def choose_config(
    variant: GemmVariant,
    *,
    m: int,
    n: int,
    k: int,
    block_size: tuple[int, int],
    group_k: int | None,
    device_name: str | None,
    num_sms: int = 132,
) -> tuple[GemmConfig, str]:
    """The config to launch with and where it came from (``"tuned M=..."`` or ``"heuristic"``)."""
    table = load_table(variant.name, n, k, tuple(block_size), device_name)
    if table is not None and table.configs:
        key = table.nearest_m(m)
        return fit_config(table.configs[key], variant, k=k, group_k=group_k), f"tuned M={key}"
    cfg = heuristic_config(m, n, k, group_k=group_k, num_sms=num_sms)
    return fit_config(cfg, variant, k=k, group_k=group_k), "heuristic"


def tuned_timings(variant: str, *, m: int, n: int, k: int, block_size: tuple[int, int],
                  device_name: str | None) -> tuple[int, dict[str, float]] | None:
    """Measured times (microseconds) per kernel at the tuned M nearest ``m``, or None."""
    table = load_table(variant, n, k, tuple(block_size), device_name)
    if table is None or not table.timings_us:
        return None
    keys = list(table.timings_us)
    key = min(keys, key=lambda km: (abs(math.log2(max(km, 1)) - math.log2(max(m, 1))), km))
    return key, table.timings_us[key]
