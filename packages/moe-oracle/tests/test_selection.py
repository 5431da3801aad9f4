"""Selection over platforms x schemes x configs: chosen backend, structured rejection trail, forcing,
the environment variable, LoRA, EP, batched format, nothing-fits, and plug-in registration."""

from __future__ import annotations

import pytest
import torch

import quantkeys as qk
from moe_oracle import (
    Activation,
    ActivationFormat,
    Backend,
    Capabilities,
    Experts,
    ForcedBackendError,
    MoEConfig,
    NoBackendError,
    Platform,
    RejectReason,
    UnknownBackendError,
    register_backend,
    registered_backends,
    select_backend,
    settings,
    unregister_backend,
)
from moe_oracle import registry as registry_module
from moe_oracle.reference.experts import ReferenceExperts

ALL_PAIRS = [(wk, s.activation_key, s.name) for s in qk.SCHEMES.values() for wk in s.weight_keys]
PLATFORMS = ["cuda:9.0", "cuda:8.0", "rocm:gfx942", "xpu", "cpu"]


def cfg(**kw) -> MoEConfig:
    base = dict(num_experts=8, top_k=2, hidden_size=256, intermediate_size=128)
    base.update(kw)
    return MoEConfig(**base)


def plat(text: str) -> Platform:
    return Platform.parse(text, packages=frozenset())


class FakeTritonExperts(Experts):
    """A stand-in `triton` backend: fp8 needs sm89, int4 served, bf16 served; LoRA supported."""

    backend = "triton"
    layout = "reference"
    capabilities = Capabilities(
        quant_pairs=frozenset({(qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym), (qk.kInt4Static, None),
                               (None, None)}),
        platforms=frozenset({qk.PlatformKind.CUDA, qk.PlatformKind.ROCM, qk.PlatformKind.XPU}),
        activations=frozenset({Activation.SILU, Activation.GELU}),
        min_capability_by_key={qk.kFp8Static128BlockSym: (8, 9)},
        lora=True,
    )

    def forward(self, *, hidden_states, topk_weights, topk_ids):  # pragma: no cover - never run
        raise NotImplementedError


@pytest.fixture
def fake_triton():
    register_backend(Backend(name="triton", experts=(FakeTritonExperts,)))
    yield
    unregister_backend("triton")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("MOE_ORACLE_BACKEND", raising=False)
    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize(("wk", "ak", "scheme"), ALL_PAIRS, ids=[f"{s}-{wk}" for wk, _, s in ALL_PAIRS])
def test_every_scheme_has_a_backend_everywhere(platform, wk, ak, scheme):
    sel = select_backend(weight_key=wk, activation_key=ak, config=cfg(), platform=plat(platform))
    assert sel.backend == "reference" and sel.experts_cls is ReferenceExperts
    # with no kernel package installed, every earlier backend of the priority list is rejected as missing
    expected = [b for b in qk.priority_for(plat(platform).kind) if b != "reference"]
    assert [r.backend for r in sel.rejected] == expected
    assert all(r.reason is RejectReason.MISSING_DEPENDENCY for r in sel.rejected)


def test_plugin_is_preferred_where_it_serves(fake_triton):
    sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg(),
                         platform=plat("cuda:9.0"))
    assert sel.backend == "triton" and sel.experts_cls is FakeTritonExperts and sel.rejected == ()


def test_device_capability_rejection_falls_back(fake_triton):
    sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg(),
                         platform=plat("cuda:8.0"))
    assert sel.backend == "reference"
    (rej,) = sel.rejected
    assert rej.backend == "triton" and rej.reason is RejectReason.DEVICE_CAPABILITY
    assert "8.9" in rej.detail and "8.0" in rej.detail
    assert "triton (FakeTritonExperts): device capability" in sel.explain()


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (cfg(activation=Activation.SWIGLUOAI), RejectReason.ACTIVATION),
        (cfg(activation_format=ActivationFormat.BATCHED), None),
    ],
)
def test_capability_reasons(fake_triton, config, reason):
    if config.activation_format is ActivationFormat.BATCHED:
        with pytest.raises(NoBackendError) as info:
            select_backend(weight_key=qk.kInt4Static, activation_key=None, config=config, platform=plat("cuda:9.0"))
        assert {r.reason for r in info.value.trail} == {RejectReason.ACTIVATION_FORMAT}
        return
    sel = select_backend(weight_key=qk.kInt4Static, activation_key=None, config=config, platform=plat("cuda:9.0"))
    assert sel.backend == "reference" and sel.rejected[0].reason is reason


def test_lora_shortcut_is_a_capability(fake_triton):
    sel = select_backend(weight_key=qk.kInt4Static, activation_key=None, config=cfg(lora_enabled=True),
                         platform=plat("cuda:9.0"))
    assert sel.backend == "triton"
    with pytest.raises(NoBackendError) as info:
        select_backend(weight_key=qk.kInt4Static, activation_key=None, config=cfg(lora_enabled=True),
                       platform=plat("cpu"))
    assert [(r.backend, r.reason) for r in info.value.trail] == [("reference", RejectReason.LORA)]


def test_expert_parallel_config_is_served():
    sel = select_backend(weight_key=qk.kInt4Static, activation_key=None, config=cfg(ep_size=2, ep_rank=1),
                         platform=plat("cpu"))
    assert sel.backend == "reference"


def test_nothing_fits_carries_the_whole_trail(fake_triton):
    with pytest.raises(NoBackendError) as info:
        select_backend(weight_key=qk.kInt4Static, activation_key=qk.kFp8Dynamic128Sym, config=cfg(),
                       platform=plat("cuda:9.0"))
    err = info.value
    assert [r.backend for r in err.trail] == ["triton", "reference"]
    assert all(r.reason is RejectReason.QUANT_KEYS for r in err.trail)
    text = str(err)
    assert "no MoE backend serves weight int4 static 1x128 sym (kInt4Static)" in text
    assert "no scheme of the spec table" in text
    assert "- triton (FakeTritonExperts): quant-key pair" in text


def test_force_argument(fake_triton):
    sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg(),
                         platform=plat("cuda:9.0"), force="Reference")
    assert sel.backend == "reference" and sel.forced_by == "force argument"


def test_forced_backend_that_cannot_serve_raises_with_reason(fake_triton):
    with pytest.raises(ForcedBackendError) as info:
        select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg(),
                       platform=plat("cuda:8.0"), force="triton")
    assert info.value.trail[0].reason is RejectReason.DEVICE_CAPABILITY
    assert "backend 'triton' (force argument) cannot serve" in str(info.value)


def test_unknown_name_lists_the_names_for_this_scheme(fake_triton):
    with pytest.raises(UnknownBackendError) as info:
        select_backend(weight_key=qk.kMxfp8Static, activation_key=qk.kMxfp8Dynamic, config=cfg(),
                       platform=plat("cuda:9.0"), force="tritn")
    text = str(info.value)
    assert "unknown backend 'tritn'" in text
    assert "backends for weight fp8e4m3 static 1x32 e8m0 sym (kMxfp8Static)" in text
    # the fake triton does not serve mxfp8, so only the reference applies to this scheme
    assert "(scheme mxfp8): reference;" in text


def test_environment_variable_and_precedence(fake_triton, monkeypatch):
    monkeypatch.setenv("MOE_ORACLE_BACKEND", "reference")
    settings.cache_clear()
    args = dict(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym, config=cfg(),
                platform=plat("cuda:9.0"))
    sel = select_backend(**args)
    assert sel.backend == "reference" and sel.forced_by == "MOE_ORACLE_BACKEND"
    assert select_backend(**args, force="triton").backend == "triton"  # argument beats environment
    assert select_backend(**args, force="auto").backend == "triton"  # explicit auto beats environment too
    monkeypatch.setenv("MOE_ORACLE_BACKEND", "cutlass")
    settings.cache_clear()
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'cutlass' \(MOE_ORACLE_BACKEND\)"):
        select_backend(**args)
    monkeypatch.setenv("MOE_ORACLE_BACKEND", "  ")
    settings.cache_clear()
    with pytest.raises(ValueError, match="set but empty"):
        select_backend(**args)


def test_select_backend_is_keyword_only():
    with pytest.raises(TypeError):
        select_backend(qk.kInt4Static, None, cfg())  # type: ignore[misc]


class _FakeEntryPoint:
    def __init__(self, name, factory, value="fake_pkg.backend:backend"):
        self.name, self.value, self._factory = name, value, factory
        self.dist = type("D", (), {"name": "fake-pkg"})()

    def load(self):
        return self._factory


def test_entry_point_discovery(monkeypatch):
    def good():
        return Backend(name="triton", experts=(FakeTritonExperts,))

    def broken():
        raise ImportError("libfoo.so: cannot open shared object file")

    eps = [_FakeEntryPoint("triton", good), _FakeEntryPoint("xpu", broken), _FakeEntryPoint("reference", good)]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps if group == "moe_oracle.backends" else [])
    found = registered_backends(refresh=True)
    try:
        assert set(found) == {"reference", "triton", "xpu"}
        assert found["reference"].source == "built in"  # an entry point cannot shadow the built-in
        sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym,
                             config=cfg(), platform=plat("xpu"))
        assert sel.backend == "triton"
        assert sel.rejected[0].backend == "xpu" and sel.rejected[0].reason is RejectReason.MISSING_DEPENDENCY
        assert "libfoo.so" in sel.rejected[0].detail
        with pytest.raises(ForcedBackendError, match=r"libfoo\.so"):
            select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym,
                           config=cfg(), platform=plat("xpu"), force="xpu")
    finally:
        monkeypatch.undo()
        registered_backends(refresh=True)


def test_backend_records_are_validated():
    with pytest.raises(ValueError, match="registered under 'other'"):
        Backend(name="other", experts=(FakeTritonExperts,))
    with pytest.raises(ValueError, match="lower-case"):
        Backend(name="Triton", experts=(FakeTritonExperts,))
    with pytest.raises(ValueError, match="built-in"):
        register_backend(Backend(name="reference", experts=(ReferenceExperts,)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(top_k=9), "top_k=9 exceeds num_experts=8"),
        (dict(hidden_size=0), "hidden_size must be a positive int"),
        (dict(ep_size=2, ep_rank=2), "ep_rank=2"),
        (dict(ep_size=3), "not divisible by ep_size=3"),
        (dict(expert_map=(0, 1, -1)), "expert_map has 3 entries"),
        (dict(expert_map=(0, 0, -1, -1, -1, -1, -1, -1)), "distinct local ids"),
        (dict(activation="silu"), "must be an Activation"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cfg(**kwargs)


def test_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        MoEConfig(8, 2, 256, 128)  # type: ignore[misc]
    c = cfg(ep_size=2, ep_rank=1)
    assert c.num_local_experts == 4
    assert c.resolved_expert_map() == (-1, -1, -1, -1, 0, 1, 2, 3)


@pytest.mark.parametrize(
    ("text", "kind", "cap", "arch"),
    [("cuda:9.0", "cuda", (9, 0), None), ("cuda:sm90", "cuda", (9, 0), None), ("cuda:sm_100", "cuda", (10, 0), None),
     ("CUDA:8.9", "cuda", (8, 9), None), ("rocm:gfx942", "rocm", None, "gfx942"), ("xpu", "xpu", None, None),
     ("cpu", "cpu", None, None)],
)
def test_platform_parse(text, kind, cap, arch):
    p = Platform.parse(text)
    assert (p.kind.value, p.capability, p.arch) == (kind, cap, arch)
    assert p.torch_version == torch.__version__


@pytest.mark.parametrize("bad", ["tpu", "cuda", "cuda:hopper", ""])
def test_platform_parse_errors(bad):
    with pytest.raises(ValueError):
        Platform.parse(bad)


def test_platform_detect_on_this_machine():
    p = Platform.detect()
    assert p.kind in set(qk.PlatformKind)


def test_inhouse_plugin_unknown_to_the_spec_is_tried_before_reference():
    class InHouseExperts(FakeTritonExperts):
        backend = "inhouse"
        capabilities = Capabilities(quant_pairs=frozenset({(qk.kInt4Static, None)}),
                                    platforms=frozenset(qk.PlatformKind), activations=frozenset(Activation))

    register_backend(Backend(name="inhouse", experts=(InHouseExperts,)))
    try:
        sel = select_backend(weight_key=qk.kInt4Static, activation_key=None, config=cfg(), platform=plat("cpu"))
        assert sel.backend == "inhouse"
        sel = select_backend(weight_key=qk.kFp8Static128BlockSym, activation_key=qk.kFp8Dynamic128Sym,
                             config=cfg(), platform=plat("cpu"))
        assert sel.backend == "reference"
        assert [(r.backend, r.reason) for r in sel.rejected] == [("inhouse", RejectReason.QUANT_KEYS)]
    finally:
        unregister_backend("inhouse")
