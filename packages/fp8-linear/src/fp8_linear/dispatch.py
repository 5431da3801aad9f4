"""Which of cuBLAS and Triton serves a block-FP8 GEMM on this device: measured, else a heuristic.

Where both kernels can serve a problem (CUDA SM90, 1x128 x 128x128 scales), the registry asks
:func:`prefer` which one to run. The answer comes from, in this order:

1. the device's **dispatch table**, ``configs/dispatch-{variant}-B{bn}x{bk}-{device}.json``,
   written by ``benchmarks/fp8_linear/tune.py`` from the same measurements as the tuned configs.
   Per ``"N,K"`` it holds the time of each kernel at the measured M values (``timings_us``), each
   path timed as the library runs it (cuBLAS including the M-padding copies it needs when M is not
   a multiple of 4), and the M ranges derived from them (``ranges``: ``[m_min, m_max, kernel]``,
   ``m_max`` null for "and above"). Triton wins a measured M only when faster by more than
   :data:`TIE_MARGIN`; between two measured M values with different winners, the threshold is
   their geometric mean.
2. the ``timings_us`` of the tuned config file of that (N, K) (older files, same meaning);
3. a heuristic fitted to H100 measurements (:func:`heuristic`).

Every answer carries its reason, which ``KernelChoice.explain()`` prints.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .tuned import _search_dirs, device_key, load_table

KERNELS = ("cublas", "triton")


def dispatch_filename(variant: str, block_size: tuple[int, int], device_name: str) -> str:
    bn, bk = block_size
    return f"dispatch-{variant}-B{bn}x{bk}-{device_key(device_name)}.json"


@dataclass(frozen=True)
class Range:
    """``kernel`` serves ``m_min <= M <= m_max`` (``m_max`` None: no upper bound)."""

    m_min: int
    m_max: int | None
    kernel: str

    def contains(self, m: int) -> bool:
        return m >= self.m_min and (self.m_max is None or m <= self.m_max)


TIE_MARGIN = 0.02
"""Triton wins a measured M only when it is faster than cuBLAS by more than this fraction; a closer
result is a tie, and ties go to cuBLAS (the platform's first choice, with no tuning to go stale).
It equals what the automatic choice may lose against the faster kernel (the benchmark's target is
0.98x the better of the two): a larger margin would hand cuBLAS rows it loses by more than that
(0.03 did, 0.974x on the H100 at N=576, K=7168, M=1024). Median-of-rounds timings scatter by about
1-2% between runs on the H100."""


def winners(timings: Mapping[int, Mapping[str, float]]) -> dict[int, str]:
    """The faster kernel at each measured M (ties, within :data:`TIE_MARGIN`, go to cuBLAS)."""
    out = {}
    for m, t in timings.items():
        if all(k in t for k in KERNELS):
            out[m] = "triton" if t["triton"] * (1.0 + TIE_MARGIN) < t["cublas"] else "cublas"
    return out


def ranges_from_timings(timings: Mapping[int, Mapping[str, float]]) -> tuple[Range, ...]:
    """Contiguous M ranges per kernel: each measured M's winner holds up to the geometric mean of
    it and the next measured M where the winner changes."""
    won = sorted(winners(timings).items())
    if not won:
        return ()
    out: list[Range] = []
    start = 1
    for (m0, k0), (m1, k1) in itertools.pairwise(won):
        if k0 != k1:
            cut = max(m0, math.floor(math.sqrt(m0 * m1)))
            out.append(Range(start, cut, k0))
            start = cut + 1
    out.append(Range(start, None, won[-1][1]))
    return tuple(out)


@dataclass(frozen=True)
class ShapeTable:
    """The measured points and ranges of one (N, K) on one device."""

    timings: Mapping[int, Mapping[str, float]]
    ranges: tuple[Range, ...]
    source: str

    def lookup(self, m: int) -> tuple[str, str] | None:
        for r in self.ranges:
            if r.contains(m):
                nearest = min(self.timings, key=lambda km: (abs(math.log2(max(km, 1)) - math.log2(max(m, 1))), km))
                t = self.timings[nearest]
                span = f"M {r.m_min}..{'' if r.m_max is None else r.m_max}"
                cmp = "<" if t.get(r.kernel, math.inf) <= t.get(_other(r.kernel), math.inf) else ">"
                detail = (f"{self.source}: {r.kernel} for {span}; measured at M={nearest}: "
                          f"{r.kernel} {t.get(r.kernel, math.nan):.1f} us {cmp} {_other(r.kernel)} "
                          f"{t.get(_other(r.kernel), math.nan):.1f} us")
                return r.kernel, detail
        return None


def _other(kernel: str) -> str:
    return "triton" if kernel == "cublas" else "cublas"


def _parse_timings(raw: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    return {int(m): {str(a): float(b) for a, b in t.items()} for m, t in raw.items()}


@lru_cache(maxsize=64)
def load_dispatch(variant: str, block_size: tuple[int, int], device_name: str | None) -> dict[tuple[int, int], ShapeTable]:
    """The device's dispatch table: {(N, K): ShapeTable}; empty when there is none."""
    if not device_name:
        return {}
    name = dispatch_filename(variant, block_size, device_name)
    for folder in _search_dirs():
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            out = {}
            for key, entry in data.get("shapes", {}).items():
                n, k = (int(v) for v in key.split(","))
                timings = _parse_timings(entry.get("timings_us", {}))
                if "ranges" in entry:
                    ranges = tuple(Range(int(a), None if b is None else int(b), str(c)) for a, b, c in entry["ranges"])
                else:
                    ranges = ranges_from_timings(timings)
                out[(n, k)] = ShapeTable(timings, ranges, f"dispatch table {path.name}")
            return out
    return {}


def shape_table(variant: str, n: int, k: int, block_size: tuple[int, int], device_name: str | None) -> ShapeTable | None:
    """The dispatch-table entry of (N, K), else one built from the tuned file's timings, else None."""
    found = load_dispatch(variant, block_size, device_name).get((n, k))
    if found is not None:
        return found
    table = load_table(variant, n, k, block_size, device_name)
    if table is not None and table.timings_us:
        return ShapeTable(table.timings_us, ranges_from_timings(table.timings_us), f"tuned timings on {device_name}")
    return None


SMALL_MN = 1 << 19


def heuristic(m: int, n: int, k: int) -> tuple[str, str]:
    """cuBLAS or Triton for a shape nobody measured on this device (fitted to the H100 table in
    benchmarks/results/): Triton where the GEMM is weight-bandwidth bound with a long K (M*N <=
    2^19 and K >= 4096: narrow tiles and split-K beat cuBLAS there) and at small M that is not a
    multiple of 4 (cuBLAS would first copy A and its scales into padded buffers); cuBLAS
    elsewhere."""
    if k >= 4096 and m * n <= SMALL_MN:
        return "triton", f"heuristic: M*N = {m * n} <= 2^19 with K = {k} >= 4096 (weight-bandwidth bound)"
    if m % 4 and m <= 64:
        return "triton", f"heuristic: M = {m} is not a multiple of 4 (cuBLAS would pad A and its scales first)"
    return "cublas", f"heuristic: M*N = {m * n}, K = {k}: compute-bound enough for cuBLAS"


def prefer(variant: str, *, m: int, n: int, k: int, block_size: tuple[int, int],
           device_name: str | None) -> tuple[str, str]:
    """``(kernel, reason)``: the faster of cuBLAS and Triton for this problem on this device."""
    table = shape_table(variant, n, k, tuple(block_size), device_name)
    if table is not None:
        found = table.lookup(m)
        if found is not None:
            return found
    return heuristic(m, n, k)


def table_json(timings: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """One ``shapes`` entry of a dispatch file, from measured times (what tune.py writes)."""
    ranges = ranges_from_timings(timings)
    return {"timings_us": {str(m): dict(t) for m, t in sorted(timings.items())},
            "ranges": [[r.m_min, r.m_max, r.kernel] for r in ranges]}
