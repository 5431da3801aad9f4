"""The generated scheme table: lookups and internal consistency."""

from __future__ import annotations

import pytest

import quantkeys as qk
from quantkeys import PlatformKind


def test_lookups():
    scheme = qk.find_scheme(qk.kFp8Static128BlockSym, qk.kFp8Dynamic128Sym)
    assert scheme is not None and scheme.name == "fp8_block"
    assert qk.get_scheme("fp8_block") is scheme
    assert qk.find_scheme(qk.kInt4Static32, None).name == "int4_w4a16"
    assert qk.find_scheme(qk.kInt4Static, qk.kFp8Dynamic128Sym) is None
    assert qk.find_scheme(None, None).name == "unquantized"
    with pytest.raises(KeyError, match="fp8_block"):
        qk.get_scheme("fp8-blok")


def test_every_pair_belongs_to_one_scheme():
    seen = {}
    for scheme in qk.SCHEMES.values():
        for wk in scheme.weight_keys:
            pair = (wk, scheme.activation_key)
            assert pair not in seen, f"{pair} in {scheme.name} and {seen[pair]}"
            seen[pair] = scheme.name


@pytest.mark.parametrize("name", list(qk.SCHEMES))
def test_scheme_backends_consistent(name):
    scheme = qk.SCHEMES[name]
    assert "reference" in scheme.backend_names
    for support in scheme.backends:
        assert support.backend in qk.BACKENDS
        assert set(support.weight_keys) <= set(scheme.weight_keys)


def test_priorities():
    for platform in PlatformKind:
        order = qk.priority_for(platform)
        assert order[-1] == "reference"
        for backend in order:
            assert platform in qk.BACKENDS[backend].platforms
    assert qk.priority_for(PlatformKind.XPU)[0] == "xpu"


def test_xpu_serves_only_symmetric_grouped_int4():
    support = qk.get_scheme("int4_w4a16").support("xpu")
    assert support is not None and support.option("recipe") == "int4"
    assert qk.kInt4StaticChannel not in support.weight_keys
    assert qk.get_scheme("int4_w4a16_asym").support("xpu") is None
