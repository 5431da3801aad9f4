"""moe-oracle's own tests see only the built-in backend and the fakes they register, whatever
plug-ins (triton-experts, xpu-experts) happen to be installed in the environment; those packages
test their registration themselves."""

import pytest

from moe_oracle import registry, settings


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    registry.registered_backends(refresh=True)
    settings.cache_clear()
    yield
    monkeypatch.undo()
    registry.registered_backends(refresh=True)
    settings.cache_clear()
