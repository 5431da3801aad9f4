import pytest

from xpu_experts.settings import xpu_settings


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch):
    monkeypatch.delenv("QMOE_XPU_EMULATION", raising=False)
    monkeypatch.delenv("MOE_ORACLE_BACKEND", raising=False)
    xpu_settings.cache_clear()
    yield
    xpu_settings.cache_clear()
