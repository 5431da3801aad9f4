"""Load and validate codegen/spec.toml into typed records the templates render.

Validation happens here, once, so a template never sees a misspelled key, backend or platform:
QuantKey names are checked against quantkeys' named constants (imported from the source tree).
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parent.parent
SPEC_PATH = REPO / "codegen" / "spec.toml"
PLATFORMS = ("cuda", "rocm", "xpu", "cpu")


class SpecError(ValueError):
    """The spec table is inconsistent; the message names the entry and field."""


def _named_keys() -> dict[str, Any]:
    """quantkeys' named constants, read from packages/quantkeys/src without running its __init__.

    The package __init__ imports the generated table; loading only `quantkeys.named` keeps the
    generator working when that generated file is stale or missing.
    """
    if "quantkeys" not in sys.modules:
        stub = types.ModuleType("quantkeys")
        stub.__path__ = [str(REPO / "packages" / "quantkeys" / "src" / "quantkeys")]
        sys.modules["quantkeys"] = stub
    from quantkeys.named import NAMED_KEYS

    return dict(NAMED_KEYS)


@dataclass(frozen=True)
class KeyRef:
    """A QuantKey named in the spec: its constant name ("none" for unquantized) and its text."""

    name: str
    text: str

    @property
    def is_none(self) -> bool:
        return self.name == "none"


@dataclass(frozen=True)
class Backend:
    name: str
    package: str
    description: str
    platforms: tuple[str, ...]


@dataclass(frozen=True)
class SchemeBackend:
    backend: str
    weight_keys: tuple[KeyRef, ...]
    options: tuple[tuple[str, str], ...]
    subset: bool  # serves fewer weight keys than the scheme lists


@dataclass(frozen=True)
class Scheme:
    name: str
    title: str
    weight_keys: tuple[KeyRef, ...]
    activation_key: KeyRef
    formats: tuple[str, ...]
    backends: tuple[SchemeBackend, ...]
    linear_gemm: str | None

    def support(self, backend: str) -> SchemeBackend | None:
        return next((b for b in self.backends if b.backend == backend), None)


@dataclass(frozen=True)
class Spec:
    backends: tuple[Backend, ...]
    priority: dict[str, tuple[str, ...]]
    schemes: tuple[Scheme, ...]
    platforms: tuple[str, ...] = field(default=PLATFORMS)
    # Other top-level tables of spec.toml (e.g. [triton_experts], [fp8_linear]), read by the
    # templates of the package that owns them; StrictUndefined catches a missing field there.
    tables: dict[str, Any] = field(default_factory=dict)

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)

    def serving(self, scheme: Scheme, platform: str) -> list[SchemeBackend]:
        """Backends serving ``scheme`` on ``platform``, in that platform's priority order."""
        out = []
        for name in self.priority[platform]:
            support = scheme.support(name)
            if support is not None and platform in self.backend(name).platforms:
                out.append(support)
        return out


def _require(table: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in table:
        raise SpecError(f"{where}: missing field {key!r}")
    value = table[key]
    if not isinstance(value, kind):
        raise SpecError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_spec(path: Path = SPEC_PATH) -> Spec:
    with path.open("rb") as f:
        raw = tomllib.load(f)
    named = _named_keys()

    def key_ref(name: str, where: str) -> KeyRef:
        if name == "none":
            return KeyRef("none", "none")
        if name not in named:
            raise SpecError(f"{where}: unknown QuantKey name {name!r}; quantkeys defines {sorted(named)}")
        return KeyRef(name, str(named[name]))

    backends = []
    for name, table in _require(raw, "backends", "spec", dict).items():
        where = f"backends.{name}"
        platforms = tuple(_require(table, "platforms", where, list))
        bad = [p for p in platforms if p not in PLATFORMS]
        if bad:
            raise SpecError(f"{where}: unknown platforms {bad}; expected some of {PLATFORMS}")
        backends.append(
            Backend(
                name=name,
                package=_require(table, "package", where, str),
                description=_require(table, "description", where, str),
                platforms=platforms,
            )
        )
    backend_names = {b.name for b in backends}

    priority: dict[str, tuple[str, ...]] = {}
    platforms_table = _require(raw, "platforms", "spec", dict)
    for platform in PLATFORMS:
        if platform not in platforms_table:
            raise SpecError(f"platforms: missing priority list for platform {platform!r}")
        order = tuple(_require(platforms_table[platform], "priority", f"platforms.{platform}", list))
        for name in order:
            if name not in backend_names:
                raise SpecError(f"platforms.{platform}.priority: unknown backend {name!r}")
            if platform not in next(b for b in backends if b.name == name).platforms:
                raise SpecError(f"platforms.{platform}.priority: backend {name!r} does not run on {platform}")
        if len(set(order)) != len(order):
            raise SpecError(f"platforms.{platform}.priority lists a backend twice: {order}")
        priority[platform] = order
    extra = set(platforms_table) - set(PLATFORMS)
    if extra:
        raise SpecError(f"platforms: unknown platforms {sorted(extra)}")

    schemes = []
    seen_pairs: dict[tuple[str, str], str] = {}
    for index, table in enumerate(_require(raw, "schemes", "spec", list)):
        name = _require(table, "name", f"schemes[{index}]", str)
        where = f"scheme {name!r}"
        weight_keys = tuple(key_ref(k, f"{where}.weight_keys") for k in _require(table, "weight_keys", where, list))
        if not weight_keys:
            raise SpecError(f"{where}: weight_keys is empty")
        activation = key_ref(_require(table, "activation_key", where, str), f"{where}.activation_key")
        for wk in weight_keys:
            pair = (wk.name, activation.name)
            if pair in seen_pairs:
                raise SpecError(f"{where}: pair {pair} already belongs to scheme {seen_pairs[pair]!r}")
            seen_pairs[pair] = name
        scheme_backends = []
        for backend, declared in _require(table, "backends", where, dict).items():
            if backend not in backend_names:
                raise SpecError(f"{where}.backends: unknown backend {backend!r}; declared: {sorted(backend_names)}")
            options = dict(declared)
            if "weight_keys" in options:
                subset = tuple(key_ref(k, f"{where}.backends.{backend}.weight_keys") for k in options.pop("weight_keys"))
                stray = [k.name for k in subset if k not in weight_keys]
                if stray:
                    raise SpecError(f"{where}.backends.{backend}: weight keys {stray} are not keys of the scheme")
            else:
                subset = weight_keys
            for key, value in options.items():
                if not isinstance(value, str):
                    raise SpecError(f"{where}.backends.{backend}.{key}: options must be strings, got {value!r}")
            scheme_backends.append(
                SchemeBackend(
                    backend=backend,
                    weight_keys=subset,
                    options=tuple(sorted(options.items())),
                    subset=len(subset) < len(weight_keys),
                )
            )
        if not any(b.backend == "reference" for b in scheme_backends):
            raise SpecError(f"{where}: every scheme needs the reference backend (the yardstick of its tests)")
        schemes.append(
            Scheme(
                name=name,
                title=_require(table, "title", where, str),
                weight_keys=weight_keys,
                activation_key=activation,
                formats=tuple(_require(table, "formats", where, list)),
                backends=tuple(scheme_backends),
                linear_gemm=table.get("linear_gemm"),
            )
        )
    names = [s.name for s in schemes]
    if len(set(names)) != len(names):
        raise SpecError(f"scheme names must be unique: {names}")
    tables = {k: v for k, v in raw.items() if k not in ("backends", "platforms", "schemes")}
    return Spec(backends=tuple(backends), priority=priority, schemes=tuple(schemes), tables=tables)
