"""Kernel launch configs: tuned JSON per (E, N, K, variant, device) with a heuristic fallback.

Files: ``configs/E{E}_N{N}_K{K}_{variant}_{device}.json`` (device name with every character
other than letters and digits replaced by ``_``) mapping a token
count M (as a string) to ``{"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}``
and optionally ``"SPLIT_K"`` (default 1) and ``"KERNEL"`` (``"triton"``, the default; ``"gluon"``:
the hand-laid-out decode kernel of the variants that have one, 16-row blocks or direct rows (BLOCK_M 1);
``"gluon_persistent"``: that kernel with one program per resident CTA, SPLIT_K dividing K / 128).
The nearest tuned M (on a log scale, ties to the smaller) wins. ``QMOE_TRITON_CONFIG_DIR`` adds a folder searched first.
E is the model's expert count and M its token count (top_k slots each): an expert-parallel rank, or
a call with fewer slots, looks its launches up at the model's token count that gives each expert as
many rows (``TritonExperts`` does the conversion).
benchmarks/triton_experts/tune.py writes these files.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
ENV_DIR = "QMOE_TRITON_CONFIG_DIR"


class Kernel(enum.Enum):
    """Which kernel family a launch config runs."""

    TRITON = "triton"  # the generated Triton variant (_generated_moe.py): every scheme and tile
    GLUON = "gluon"  # the generated Gluon decode kernel (_generated_gluon.py): 4-bit K tiles, BLOCK_M 16 or 1
    GLUON_PERSISTENT = "gluon_persistent"  # the same, one program per resident CTA walking the tiles in turn

    @property
    def is_gluon(self) -> bool:
        return self in (Kernel.GLUON, Kernel.GLUON_PERSISTENT)


@dataclass(frozen=True)
class LaunchConfig:
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    GROUP_M: int
    num_warps: int
    num_stages: int
    SPLIT_K: int = 1  # programs sharing one output tile's K steps; > 1: float32 partials summed by the next kernel
    KERNEL: Kernel = Kernel.TRITON

    def as_dict(self) -> dict[str, int | str]:
        """The JSON form (``KERNEL`` by name, left out for the default Triton kernel)."""
        out: dict[str, int | str] = {k: v for k, v in asdict(self).items() if k != "KERNEL"}
        if self.KERNEL is not Kernel.TRITON:
            out["KERNEL"] = self.KERNEL.value
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> LaunchConfig:
        """Parse :meth:`as_dict`'s form; an unknown ``KERNEL`` name is an error that lists the known ones."""
        fields = dict(raw)
        name = fields.pop("KERNEL", Kernel.TRITON.value)
        try:
            kernel = Kernel(name)
        except ValueError:
            raise ValueError(f"launch config KERNEL={name!r}: expected one of {[k.value for k in Kernel]}") from None
        return cls(**fields, KERNEL=kernel)


def file_name(*, e: int, n: int, k: int, variant: str, device: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9]", "_", device)
    return f"E{e}_N{n}_K{k}_{variant}_{safe}.json"


@lru_cache(maxsize=256)
def _load(name: str) -> dict[int, LaunchConfig] | None:
    dirs = [Path(os.environ[ENV_DIR])] if os.environ.get(ENV_DIR) else []
    for folder in [*dirs, CONFIG_DIR]:
        path = folder / name
        if path.is_file():
            raw = json.loads(path.read_text())
            return {int(m): LaunchConfig.from_dict(cfg) for m, cfg in raw.items()}
    return None


def heuristic(*, m: int, n: int, k: int, k_granule: int, num_experts: int, top_k: int,
              variant: str = "") -> LaunchConfig:
    """Untuned shapes, from what the tuner picked on the H100 for the benchmark models: one 16-row
    block per expert and a narrow N tile for decode, 64-row blocks when experts see tens of rows,
    large tiles for prefill (bf16 wider in N and shallower in K than fp8; at most ~150 KB of
    shared memory, so A100s launch them too)."""
    rows_per_expert = max(1, m * top_k // max(1, num_experts))
    if rows_per_expert <= 16:
        bm, bn, bk, gm, warps, stages = 16, 64, 128, 1, 4, 3
    elif rows_per_expert <= 96:
        bm, bn, bk, gm, warps, stages = 64, 128, 128, 8, 4, 3
    elif variant == "bf16":
        bm, bn, bk, gm, warps, stages = 128, 256, 64, 8, 8, 3
    else:
        bm, bn, bk, gm, warps, stages = 128, 128, 64, 8, 8, 3
    if k_granule:
        bk = min(bk, k_granule)
    return LaunchConfig(bm, bn, bk, gm, warps, stages)


def nearest_tuned(table: dict[int, object], m: int) -> int:
    """The tuned token count that serves ``m``: the nearest on a log scale, ties to the smaller."""
    return min(table, key=lambda tm: (abs(math.log2(tm) - math.log2(max(m, 1))), tm))


def get_config(*, m: int, n: int, k: int, variant: str, k_granule: int, num_experts: int, top_k: int,
               device: str) -> tuple[LaunchConfig, bool]:
    """``(config, tuned)``: the tuned config nearest to ``m`` if a file exists, else the heuristic."""
    table = _load(file_name(e=num_experts, n=n, k=k, variant=variant, device=device))
    if table:
        return table[nearest_tuned(table, m)], True
    return heuristic(m=m, n=n, k=k, k_granule=k_granule, num_experts=num_experts, top_k=top_k,
                     variant=variant), False
