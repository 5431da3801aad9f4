"""Kernel selection per platform, the reasons for every rejection, forcing, tuned preferences."""

from __future__ import annotations

import json

import pytest
import torch

from fp8_linear import (
    KERNEL_ORDER,
    ForcedKernelError,
    GemmProblem,
    Granularity,
    LinearPlatform,
    NoKernelError,
    RejectReason,
    ScaledMMApi,
    UnknownKernelError,
    explain,
    registry,
    select_kernel,
    tuned,
)
from fp8_linear.variant_types import ScaleDtype
from quantkeys import PlatformKind


def problem(m=16, n=7168, k=2048, *, granularity=Granularity.BLOCK, block=(128, 128), fp8=torch.float8_e4m3fn):
    return GemmProblem(m=m, n=n, k=k, granularity=granularity,
                       block_size=block if granularity in (Granularity.BLOCK, Granularity.MX) else None,
                       fp8_dtype=fp8, scale_dtype=ScaleDtype.FLOAT32, out_dtype=torch.bfloat16, has_bias=False)


def plat(text, **kw):
    kw.setdefault("triton", True)
    kw.setdefault("interpret", False)
    kw.setdefault("scaled_mm", ScaledMMApi.V2)
    return LinearPlatform.parse(text, **kw)


def reasons(choice):
    return {r.kernel: r.reason for r in choice.rejected}


def test_orders():
    assert KERNEL_ORDER[PlatformKind.CUDA] == ("cublas", "triton", "reference")
    assert KERNEL_ORDER[PlatformKind.ROCM] == ("triton", "reference")
    assert KERNEL_ORDER[PlatformKind.XPU] == ("triton", "reference")
    assert KERNEL_ORDER[PlatformKind.CPU] == ("reference",)


@pytest.mark.parametrize(
    ("platform", "prob", "kernel", "rejected"),
    [
        ("cuda:9.0", problem(), "cublas", {}),
        ("cuda:9.0", problem(granularity=Granularity.TOKEN_CHANNEL), "triton", {"cublas": RejectReason.GRANULARITY}),
        ("cuda:9.0", problem(block=(128, 64)), "triton", {"cublas": RejectReason.BLOCK_SIZE}),
        ("cuda:9.0", problem(n=100), "triton", {"cublas": RejectReason.SHAPE}),
        ("cuda:8.9", problem(), "triton", {"cublas": RejectReason.DEVICE_CAPABILITY}),
        ("cuda:10.0", problem(), "triton", {"cublas": RejectReason.DEVICE_CAPABILITY}),
        ("cuda:7.5", problem(), "triton", {"cublas": RejectReason.DEVICE_CAPABILITY}),
        ("cuda:6.1", problem(), "reference", {"cublas": RejectReason.DEVICE_CAPABILITY,
                                              "triton": RejectReason.DEVICE_CAPABILITY}),
        ("rocm:gfx942", problem(fp8=torch.float8_e4m3fnuz), "triton", {}),
        ("rocm:gfx942", problem(), "reference", {"triton": RejectReason.DTYPE}),
        ("rocm:gfx950", problem(), "triton", {}),
        ("xpu", problem(), "triton", {}),
        ("xpu", problem(fp8=torch.float8_e4m3fnuz), "triton", {}),
        ("cpu", problem(), "reference", {}),
    ],
)
def test_selection(platform, prob, kernel, rejected):
    choice = select_kernel(prob, platform=plat(platform))
    assert choice.kernel == kernel
    assert reasons(choice) == rejected
    assert (choice.config is not None) == (kernel == "triton")


def test_without_triton_and_old_torch():
    choice = select_kernel(problem(granularity=Granularity.MX, block=(1, 32)), platform=plat("cuda:9.0", triton=False))
    assert choice.kernel == "reference"
    assert reasons(choice) == {"cublas": RejectReason.GRANULARITY, "triton": RejectReason.MISSING_DEPENDENCY}
    choice = select_kernel(problem(), platform=plat("cuda:9.0", scaled_mm=ScaledMMApi.NONE))
    assert choice.kernel == "triton" and reasons(choice) == {"cublas": RejectReason.TORCH_VERSION}


@pytest.mark.parametrize(("k", "api", "ok"), [(512, ScaledMMApi.V1, True), (640, ScaledMMApi.V1, False),
                                              (1152, ScaledMMApi.V1, False), (640, ScaledMMApi.V2, True),
                                              (1152, ScaledMMApi.V2, True)])
def test_v1_scaled_mm_trap_is_refused(k, api, ok):
    """torch 2.11's v1 _scaled_mm is silently wrong when K/128 % 4 != 0: refused unless v2 exists."""
    prob = problem(k=k)
    if ok:
        assert select_kernel(prob, platform=plat("cuda:9.0", scaled_mm=api), force="cublas").kernel == "cublas"
    else:
        with pytest.raises(ForcedKernelError, match="wrong results"):
            select_kernel(prob, platform=plat("cuda:9.0", scaled_mm=api), force="cublas")
        choice = select_kernel(prob, platform=plat("cuda:9.0", scaled_mm=api))
        assert choice.kernel == "triton" and reasons(choice) == {"cublas": RejectReason.SHAPE}


def test_forcing(monkeypatch):
    cpu = plat("cpu")
    with pytest.raises(ForcedKernelError, match="TRITON_INTERPRET"):
        select_kernel(problem(), platform=cpu, force="triton")
    assert select_kernel(problem(), platform=plat("cpu", interpret=True), force="triton").kernel == "triton"
    with pytest.raises(UnknownKernelError, match="cublas, triton, reference"):
        select_kernel(problem(), platform=cpu, force="deep_gemm")
    with pytest.raises(ForcedKernelError, match="SM90-only"):
        select_kernel(problem(), platform=plat("cuda:8.9"), force="cublas")
    monkeypatch.setenv(registry.ENV_KERNEL, "triton")
    choice = select_kernel(problem(), platform=plat("cuda:9.0"))
    assert choice.kernel == "triton" and choice.forced_by == registry.ENV_KERNEL
    assert select_kernel(problem(), platform=plat("cuda:9.0"), force="auto").kernel == "cublas"
    assert select_kernel(problem(), platform=plat("cuda:9.0"), force="reference").forced_by == "kernel argument"


def test_no_kernel_error_carries_the_trail(monkeypatch):
    monkeypatch.setattr(registry, "KERNEL_ORDER", {**registry.KERNEL_ORDER, PlatformKind.CPU: ("cublas",)})
    registry._select.cache_clear()
    with pytest.raises(NoKernelError) as info:
        select_kernel(problem(), platform=plat("cpu"))
    assert [r.kernel for r in info.value.trail] == ["cublas"]
    registry._select.cache_clear()


def test_explain_names_every_rejection():
    text = explain(problem(granularity=Granularity.TENSOR), platform=plat("cuda:9.0"))
    assert text.startswith("cuda:9.0: M=16 N=7168 K=2048, tensor scales") and "triton (automatic)" in text
    assert "rejected cublas: scale granularity" in text and "(heuristic)" in text


def test_tuned_timings_pick_the_faster_kernel(tmp_path, monkeypatch):
    device = "Test GPU 80GB"  # no shipped dispatch table or config: only this test's tuned file counts
    name = tuned.config_filename("block", 7168, 2048, (128, 128), device)
    cfg = {"block_m": 16, "block_n": 64, "block_k": 128, "group_m": 1, "split_k": 2, "num_warps": 4, "num_stages": 4}
    (tmp_path / name).write_text(json.dumps({
        "variant": "block", "n": 7168, "k": 2048, "block_size": [128, 128], "device": device,
        "configs": {"16": cfg, "4096": {**cfg, "block_m": 64, "block_n": 128, "split_k": 1}},
        "timings_us": {"16": {"triton": 9.0, "cublas": 10.0}, "4096": {"triton": 140.0, "cublas": 110.0}},
    }))
    monkeypatch.setenv(tuned.ENV_CONFIG_DIR, str(tmp_path))
    tuned.load_table.cache_clear()
    registry._select.cache_clear()
    try:
        h100 = plat("cuda:9.0", device_name=device)
        small = select_kernel(problem(m=8), platform=h100)
        assert small.kernel == "triton" and reasons(small) == {"cublas": RejectReason.SLOWER}
        assert small.config.split_k == 2 and small.config_source == "tuned M=16"
        assert "triton 9.0 us < cublas 10.0 us" in small.explain()
        assert select_kernel(problem(m=3000), platform=h100).kernel == "cublas"
        assert select_kernel(problem(m=8), platform=h100, force="cublas").kernel == "cublas"  # SLOWER is advisory
        assert select_kernel(problem(m=8), platform=plat("cuda:9.0")).kernel == "cublas"  # other device: untuned
    finally:
        monkeypatch.delenv(tuned.ENV_CONFIG_DIR)
        tuned.load_table.cache_clear()
        registry._select.cache_clear()


def test_selection_is_cached():
    p = plat("cuda:9.0")
    assert select_kernel(problem(), platform=p) is select_kernel(problem(), platform=p)


def test_cli_explain():
    from fp8_linear.cli import main

    lines: list[str] = []
    assert main(["explain", "--platform", "all", "--n", "576", "--k", "7168", "--m", "1,4096"], out=lines.append) == 0
    text = "\n".join(lines)
    assert "cuda:9.0: M=1 N=576 K=7168" in text and "rejected cublas: device capability" in text
    assert "xpu: activation quant by torch.ops.fp8_linear.per_token_group_quant" in text
    lines.clear()
    assert main(["explain", "--platform", "cpu", "--n", "64", "--k", "256", "--kernel", "cublas"],
                out=lines.append) == 1
    assert "cannot serve" in "\n".join(lines)
