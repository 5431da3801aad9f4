"""Router top-k against plain float64 per-token Python implementations.

Ties are excluded by construction: candidate rows whose float64 selection margins (the gaps
between consecutive chosen experts down to the first rejected one, and between the last kept and
the first dropped group) are below 1e-4 are discarded, far above float32 rounding of scores (~1e-7).
"""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch

from moe_oracle.routing import TopK, grouped_topk, softmax_topk

U32 = 2.0**-24
MARGIN = 1e-4


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


# ---- plain float64 oracles ---------------------------------------------------------------------
def softmax_row(logits: list[float], top_k: int, renormalize: bool) -> tuple[list[int], list[float], float]:
    peak = max(logits)
    ex = [math.exp(v - peak) for v in logits]
    total = sum(ex)
    probs = [v / total for v in ex]
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    chosen = order[:top_k]
    # ids are compared in order, so every consecutive gap up to the first rejected one counts
    ranked = [probs[i] for i in order[: top_k + 1]]
    margin = min((a - b for a, b in itertools.pairwise(ranked)), default=math.inf)
    w = [probs[i] for i in chosen]
    if renormalize:
        s = sum(w)
        w = [v / s for v in w]
    return chosen, w, margin


def grouped_row(
    logits: list[float],
    top_k: int,
    *,
    groups: int,
    topk_group: int,
    bias: list[float] | None,
    scoring: str,
    renormalize: bool,
    scaling: float,
) -> tuple[list[int], list[float], float]:
    n = len(logits)
    if scoring == "sigmoid":
        scores = [1.0 / (1.0 + math.exp(-v)) for v in logits]
    else:
        peak = max(logits)
        ex = [math.exp(v - peak) for v in logits]
        scores = [v / sum(ex) for v in ex]
    biased = [s + (bias[i] if bias is not None else 0.0) for i, s in enumerate(scores)]
    size = n // groups
    gscore = []
    for g in range(groups):
        members = sorted((biased[i] for i in range(g * size, (g + 1) * size)), reverse=True)
        gscore.append(members[0] + members[1] if bias is not None else members[0])
    gorder = sorted(range(groups), key=lambda g: -gscore[g])
    kept = set(gorder[:topk_group])
    gmargin = gscore[gorder[topk_group - 1]] - gscore[gorder[topk_group]] if topk_group < groups else math.inf
    candidates = sorted((i for i in range(n) if i // size in kept), key=lambda i: -biased[i])
    chosen = candidates[:top_k]
    ranked = [biased[i] for i in candidates[: top_k + 1]]
    emargin = min((a - b for a, b in itertools.pairwise(ranked)), default=math.inf)
    w = [scores[i] for i in chosen]
    if renormalize:
        s = sum(w)
        w = [v / s for v in w]
    w = [v * scaling for v in w]
    return chosen, w, min(gmargin, emargin)


def rows_without_ties(m: int, e: int, dtype: torch.dtype, row_fn, *seed) -> tuple[torch.Tensor, list]:
    """Draw logits rows until m of them have selection margins >= MARGIN; return logits and oracle rows."""
    g = _gen(m, e, dtype, *seed)
    kept, results = [], []
    while len(kept) < m:
        cand = (torch.randn(e, generator=g, dtype=torch.float64) * 2.0).to(dtype)
        res = row_fn([float(v) for v in cand.to(torch.float64)])
        if res[2] >= MARGIN:
            kept.append(cand)
            results.append(res)
    return torch.stack(kept), results


def check(topk: TopK, results, *, weight_rtol: float):
    assert isinstance(topk, TopK)
    assert topk.weights.dtype == torch.float32 and topk.ids.dtype == torch.int32
    assert topk.ids.tolist() == [r[0] for r in results]  # exact ids, in descending order
    ref = torch.tensor([r[1] for r in results], dtype=torch.float64)
    err = (topk.weights.to(torch.float64) - ref).abs()
    assert bool((err <= weight_rtol * ref.abs() + 1e-12).all()), f"max rel err {(err / ref.abs()).max():.2e}"


# ---- softmax top-k -------------------------------------------------------------------------------
@pytest.mark.parametrize(("e", "top_k"), [(8, 1), (8, 2), (64, 6), (128, 8), (256, 8)])
@pytest.mark.parametrize("m", [1, 7, 64])
@pytest.mark.parametrize("renormalize", [True, False])
def test_softmax_topk(e, top_k, m, renormalize):
    logits, results = rows_without_ties(
        m, e, torch.float32, lambda r: softmax_row(r, top_k, renormalize), top_k, renormalize
    )
    topk = softmax_topk(logits, top_k, renormalize=renormalize)
    assert topk.num_tokens == m and topk.top_k == top_k
    # Bound: float32 softmax: exp <= 2 ulp each, the E-term sum <= E u relative, one division; the
    # renormalization adds a k-term sum and a division: (E + k + 8) u relative.
    check(topk, results, weight_rtol=(e + top_k + 8) * U32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_softmax_topk_input_dtypes(dtype):
    e, top_k = 64, 4
    logits, results = rows_without_ties(9, e, dtype, lambda r: softmax_row(r, top_k, True), "dtype")
    topk = softmax_topk(logits, top_k, renormalize=True)
    # Low-precision logits are read exactly and the softmax runs in float32 (float64 for float64),
    # so the float32 bound (E + k + 8) u holds; float64 adds only the final cast to float32 (u).
    check(topk, results, weight_rtol=(e + top_k + 8) * U32)


# ---- grouped top-k -------------------------------------------------------------------------------
GROUPED_CASES = [
    # (E, groups, topk_group, top_k)
    (256, 8, 4, 8),  # DeepSeek-V3
    (64, 8, 3, 6),
    (16, 4, 2, 4),
    (16, 4, 4, 3),  # every group kept
    (32, 8, 1, 2),
]


@pytest.mark.parametrize(("e", "groups", "topk_group", "top_k"), GROUPED_CASES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
@pytest.mark.parametrize(("renormalize", "scaling"), [(True, 2.5), (False, 1.0)], ids=["renorm-x2.5", "raw"])
def test_grouped_topk(*, e, groups, topk_group, top_k, with_bias, scoring, renormalize, scaling):
    m = 23
    bias64 = (torch.randn(e, generator=_gen("bias", e), dtype=torch.float64) * 0.3) if with_bias else None
    bias = bias64.to(torch.float32) if bias64 is not None else None
    bias_list = [float(v) for v in bias.to(torch.float64)] if bias is not None else None

    def oracle(r):
        return grouped_row(
            r, top_k, groups=groups, topk_group=topk_group, bias=bias_list, scoring=scoring,
            renormalize=renormalize, scaling=scaling,
        )  # fmt: skip

    logits, results = rows_without_ties(m, e, torch.float32, oracle, groups, topk_group, top_k, with_bias, scoring)
    topk = grouped_topk(
        logits, top_k, num_expert_group=groups, topk_group=topk_group, correction_bias=bias, scoring=scoring,
        renormalize=renormalize, routed_scaling_factor=scaling,
    )  # fmt: skip
    # Every chosen expert lies in a kept group: implied by the exact id match with the oracle.
    # Bound: sigmoid/softmax in float32 (softmax: E u for its sum), the k-term renormalization and
    # the scaling: (E + k + 8) u relative. The weights are the unbiased scores, so a bias that
    # leaked into them would be off by ~0.3 and fail.
    check(topk, results, weight_rtol=(e + top_k + 8) * U32)


def test_grouped_topk_weights_are_unbiased():
    # A huge bias on expert 0 forces its selection, but its weight stays sigmoid(logit).
    logits = torch.tensor([[-3.0, 1.0, 0.5, 0.2, -1.0, -2.0, 0.1, 0.3]])
    bias = torch.tensor([10.0, 0, 0, 0, 0, 0, 0, 0])
    topk = grouped_topk(logits, 2, num_expert_group=2, topk_group=1, correction_bias=bias, renormalize=False)
    assert topk.ids.tolist() == [[0, 1]]
    expected = torch.sigmoid(torch.tensor([-3.0, 1.0]))
    # Bound: same float32 sigmoid as the library: exact equality up to 1 ulp (2^-23 relative).
    assert torch.allclose(topk.weights[0], expected, rtol=2 * U32, atol=0)


# ---- errors and the TopK record --------------------------------------------------------------------
def test_errors():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="top_k = 17 exceeds the number of experts E = 16"):
        softmax_topk(x, 17, renormalize=True)
    with pytest.raises(ValueError, match="positive int"):
        softmax_topk(x, 0, renormalize=True)
    with pytest.raises(ValueError, match="float tensor"):
        softmax_topk(x.to(torch.int64), 2, renormalize=True)
    with pytest.raises(ValueError, match=r"\[M, E\]"):
        softmax_topk(x[0], 2, renormalize=True)
    with pytest.raises(ValueError, match="cannot be split into num_expert_group = 3"):
        grouped_topk(x, 2, num_expert_group=3, topk_group=1)
    with pytest.raises(ValueError, match=r"topk_group = 5 must be in \[1, num_expert_group = 4\]"):
        grouped_topk(x, 2, num_expert_group=4, topk_group=5)
    with pytest.raises(ValueError, match="topk_group = 0"):
        grouped_topk(x, 2, num_expert_group=4, topk_group=0)
    with pytest.raises(ValueError, match="top_k = 9 exceeds the 8 experts in the kept 2 groups"):
        grouped_topk(x, 9, num_expert_group=4, topk_group=2)
    with pytest.raises(ValueError, match="top_k = 17 exceeds"):
        grouped_topk(x, 17, num_expert_group=4, topk_group=2)
    with pytest.raises(ValueError, match=r"correction_bias must be \[E\] = \[16\]"):
        grouped_topk(x, 2, num_expert_group=4, topk_group=2, correction_bias=torch.zeros(8))
    with pytest.raises(ValueError, match="scoring"):
        grouped_topk(x, 2, num_expert_group=4, topk_group=2, scoring="relu")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        softmax_topk(x, 2, True)  # type: ignore[misc]  # renormalize is keyword-only


def test_topk_record_cannot_be_swapped():
    w, i = torch.rand(3, 2), torch.zeros(3, 2, dtype=torch.int32)
    assert TopK(weights=w, ids=i).top_k == 2
    with pytest.raises(TypeError):
        TopK(w, i)  # type: ignore[misc]  # keyword-only
    with pytest.raises(ValueError, match="weights must be float32"):
        TopK(weights=i, ids=i)
    with pytest.raises(ValueError, match="ids must be int32"):
        TopK(weights=w, ids=w)
    with pytest.raises(ValueError, match="both be"):
        TopK(weights=w, ids=i[:2])
