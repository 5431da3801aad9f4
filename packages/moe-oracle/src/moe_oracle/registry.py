"""Backend registry: the built-in reference backend plus plug-ins found through entry points.

A plug-in distribution declares, in its pyproject.toml::

    [project.entry-points."moe_oracle.backends"]
    triton = "triton_experts.backend:backend"

where ``backend()`` returns a :class:`Backend` (cheap to call: kernel libraries load lazily).
Installing the distribution is all it takes for its backend to appear in selection.
A plug-in that fails to load shows up as a backend with a load error: auto selection rejects it
with the error as reason, a forced selection raises it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import MappingProxyType

from .experts_base import Experts

ENTRY_POINT_GROUP = "moe_oracle.backends"
log = logging.getLogger("moe_oracle")


@dataclass(frozen=True, kw_only=True)
class Backend:
    """A named backend and the experts classes it offers, tried in order."""

    name: str
    experts: tuple[type[Experts], ...]
    description: str = ""

    def __post_init__(self) -> None:
        if normalize_name(self.name) != self.name:
            raise ValueError(f"backend names are lower-case with underscores, got {self.name!r}")
        if not self.experts:
            raise ValueError(f"backend {self.name!r} offers no experts classes")
        for cls in self.experts:
            if not (isinstance(cls, type) and issubclass(cls, Experts)):
                raise TypeError(f"backend {self.name!r}: {cls!r} is not an Experts subclass")
            if cls.backend != self.name:
                raise ValueError(f"{cls.__name__}.backend is {cls.backend!r}, registered under {self.name!r}")


@dataclass(frozen=True, kw_only=True)
class BackendEntry:
    """A registered backend, loaded on first use. ``source`` says where it came from."""

    name: str
    source: str
    loader: Callable[[], Backend]

    def load(self) -> Backend:
        backend = self.loader()
        if not isinstance(backend, Backend):
            raise TypeError(f"backend plug-in {self.name!r} ({self.source}) returned {backend!r}, not a Backend")
        if backend.name != self.name:
            raise ValueError(f"plug-in {self.source} registered as {self.name!r} but names itself {backend.name!r}")
        return backend


def normalize_name(name: str) -> str:
    return re.sub(r"[-\s]+", "_", name.strip().lower())


def _reference() -> Backend:
    from .reference.experts import ReferenceExperts

    return Backend(name="reference", experts=(ReferenceExperts,), description="pure-torch reference experts")


_BUILTIN: dict[str, BackendEntry] = {
    "reference": BackendEntry(name="reference", source="built in", loader=_reference),
}
_EXTRA: dict[str, BackendEntry] = {}
_LOCK = threading.Lock()
_DISCOVERED: dict[str, dict[str, BackendEntry]] = {}  # "entries" -> found, once


def _discover() -> dict[str, BackendEntry]:
    found: dict[str, BackendEntry] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        name = normalize_name(ep.name)
        if name in _BUILTIN:
            log.warning("ignoring entry point %s: %r is a built-in backend name", ep.value, name)
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"

        def loader(ep=ep) -> Backend:
            factory = ep.load()
            return factory()

        found[name] = BackendEntry(name=name, source=f"entry point {ep.value} ({dist})", loader=loader)
    return found


def registered_backends(*, refresh: bool = False) -> Mapping[str, BackendEntry]:
    """Every registered backend by name: built in, programmatic, and from entry points."""
    with _LOCK:
        if "entries" not in _DISCOVERED or refresh:
            _DISCOVERED["entries"] = _discover()
        merged = {**_DISCOVERED["entries"], **_EXTRA, **_BUILTIN}
    return MappingProxyType(merged)


def register_backend(backend: Backend | Callable[[], Backend], *, name: str | None = None) -> None:
    """Register a backend in-process (tests, in-house code). Built-in names are reserved; registering
    the same factory again is a no-op, a different one under a taken name raises."""
    if isinstance(backend, Backend):
        value = backend
        loader: Callable[[], Backend] = lambda: value  # noqa: E731
        name = backend.name
    else:
        loader = backend
        if name is None:
            raise ValueError("register_backend(factory) needs name=")
    name = normalize_name(name)
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in backend name")
    with _LOCK:
        existing = _EXTRA.get(name)
        if existing is not None and existing.loader is not loader and not isinstance(backend, Backend):
            raise ValueError(f"a backend named {name!r} is already registered")
        _EXTRA[name] = BackendEntry(name=name, source="register_backend()", loader=loader)


def unregister_backend(name: str) -> None:
    with _LOCK:
        _EXTRA.pop(normalize_name(name), None)
