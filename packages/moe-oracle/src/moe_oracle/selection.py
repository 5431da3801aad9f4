"""Backend selection: the first registered backend, in the platform's priority order, whose
experts accept the layer; with the reason every other backend was rejected.

Precedence: ``force=`` argument > ``MOE_ORACLE_BACKEND`` > automatic. A forced backend that
cannot serve the layer raises with its reasons (no silent fallback); an unknown name raises
listing the names that apply to this scheme; nothing fitting raises :class:`NoBackendError`
carrying the whole trail. Each distinct choice is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from quantkeys import QuantKey, find_scheme, priority_for

from .config import MoEConfig
from .experts_base import Experts, Rejection, RejectReason, _key_text
from .platform import Platform
from .registry import BackendEntry, normalize_name, registered_backends
from .settings import ENV_BACKEND, settings

log = logging.getLogger("moe_oracle")


@dataclass(frozen=True, kw_only=True)
class Selection:
    """The chosen backend and experts class, and every rejection met before it."""

    backend: str
    experts_cls: type[Experts]
    rejected: tuple[Rejection, ...]
    platform: Platform
    forced_by: str | None = None  # "force argument" / "MOE_ORACLE_BACKEND" / None

    def explain(self) -> str:
        how = f"forced by {self.forced_by}" if self.forced_by else "automatic"
        lines = [f"{self.platform}: {self.backend} ({self.experts_cls.__name__}), {how}"]
        lines += [f"  rejected {r}" for r in self.rejected]
        return "\n".join(lines)


class SelectionError(ValueError):
    """No backend was selected; ``trail`` holds every rejection."""

    def __init__(self, message: str, trail: tuple[Rejection, ...] = ()) -> None:
        self.trail = trail
        if trail:
            message += "\n" + "\n".join(f"  - {r}" for r in trail)
        super().__init__(message)


class NoBackendError(SelectionError):
    pass


class UnknownBackendError(SelectionError):
    pass


class ForcedBackendError(SelectionError):
    pass


@lru_cache(maxsize=1)
def _detected_platform() -> Platform:
    return Platform.detect()


def _describe(weight_key: QuantKey | None, activation_key: QuantKey | None) -> str:
    scheme = find_scheme(weight_key, activation_key)
    pair = f"weight {_key_text(weight_key)}, activation {_key_text(activation_key)}"
    return f"{pair} (scheme {scheme.name})" if scheme else f"{pair} (no scheme of the spec table)"


def _try_backend(entry: BackendEntry, config: MoEConfig, platform: Platform, weight_key: QuantKey | None,
                 activation_key: QuantKey | None) -> tuple[type[Experts] | None, list[Rejection]]:
    try:
        backend = entry.load()
    except Exception as exc:  # a broken plug-in must not break selection of the others
        return None, [Rejection(backend=entry.name, experts="-", reason=RejectReason.MISSING_DEPENDENCY,
                                detail=f"plug-in failed to load ({entry.source}): {type(exc).__name__}: {exc}")]
    rejections = []
    for cls in backend.experts:
        ok, rejection = cls.is_supported(config, platform, weight_key=weight_key, activation_key=activation_key)
        if ok:
            # sibling classes that serve other schemes of the same backend are not candidates: drop
            # their quant-key mismatches, keep any other reason a sibling gave
            return cls, [r for r in rejections if r.reason is not RejectReason.QUANT_KEYS]
        assert rejection is not None
        rejections.append(rejection)
    return None, rejections


def applicable_backends(weight_key: QuantKey | None, activation_key: QuantKey | None) -> list[str]:
    """Registered backends that serve this quant-key pair on some platform (names users may force)."""
    names = []
    for name, entry in registered_backends().items():
        try:
            backend = entry.load()
        except Exception:
            continue
        if any((weight_key, activation_key) in cls.capabilities.quant_pairs for cls in backend.experts):
            names.append(name)
    return sorted(names)


def priority_order(platform: Platform) -> list[str]:
    """The spec's priority list for the platform; registered backends the spec does not know (in-house
    plug-ins) are tried after the listed kernels and before ``reference``."""
    from quantkeys import BACKENDS

    listed = list(priority_for(platform.kind))
    extra = sorted(set(registered_backends()) - set(BACKENDS))
    if "reference" in listed:
        at = listed.index("reference")
        return listed[:at] + extra + listed[at:]
    return listed + extra


_logged: set[tuple] = set()


def select_backend(
    *,
    weight_key: QuantKey | None,
    activation_key: QuantKey | None,
    config: MoEConfig,
    platform: Platform | None = None,
    force: str | None = None,
) -> Selection:
    """Select the experts backend for a layer (see the module docstring for the rules)."""
    platform = platform or _detected_platform()
    registry = registered_backends()
    forced_by = None
    requested = None
    if force is not None:
        requested, forced_by = normalize_name(force), "force argument"
    elif settings().backend is not None:
        requested, forced_by = settings().backend, ENV_BACKEND
    if requested == "auto":
        requested, forced_by = None, None

    if requested is not None:
        entry = registry.get(requested)
        if entry is None:
            valid = applicable_backends(weight_key, activation_key)
            raise UnknownBackendError(
                f"unknown backend {requested!r} ({forced_by}); backends for {_describe(weight_key, activation_key)}: "
                f"{', '.join(valid) or 'none'}; all registered: {', '.join(sorted(registry))}; or 'auto'"
            )
        cls, rejections = _try_backend(entry, config, platform, weight_key, activation_key)
        if cls is None:
            raise ForcedBackendError(
                f"backend {requested!r} ({forced_by}) cannot serve {_describe(weight_key, activation_key)} on "
                f"{platform}:", tuple(rejections)
            )
        selection = Selection(backend=requested, experts_cls=cls, rejected=tuple(rejections), platform=platform,
                              forced_by=forced_by)
        _log_once(selection, weight_key, activation_key)
        return selection

    trail: list[Rejection] = []
    for name in priority_order(platform):
        entry = registry.get(name)
        if entry is None:
            trail.append(Rejection(backend=name, experts="-", reason=RejectReason.MISSING_DEPENDENCY,
                                   detail=f"not installed (pip install packages/{_package_of(name)})"))
            continue
        cls, rejections = _try_backend(entry, config, platform, weight_key, activation_key)
        trail.extend(rejections)
        if cls is not None:
            selection = Selection(backend=name, experts_cls=cls, rejected=tuple(trail), platform=platform)
            _log_once(selection, weight_key, activation_key)
            return selection
    raise NoBackendError(
        f"no MoE backend serves {_describe(weight_key, activation_key)} on {platform} "
        f"(activation {config.activation.value}, {config.activation_format.value} format, "
        f"ep_size {config.ep_size}, lora {config.lora_enabled}); every candidate and its reason:", tuple(trail)
    )


def _package_of(backend: str) -> str:
    from quantkeys import BACKENDS

    info = BACKENDS.get(backend)
    return info.package if info else backend


def _log_once(selection: Selection, weight_key: QuantKey | None, activation_key: QuantKey | None) -> None:
    key = (selection.backend, selection.experts_cls, str(selection.platform), weight_key, activation_key,
           selection.forced_by)
    if key in _logged:
        return
    _logged.add(key)
    log.info("MoE %s: using %s (%s)%s; rejected: %s", _describe(weight_key, activation_key), selection.backend,
             selection.experts_cls.__name__, f", forced by {selection.forced_by}" if selection.forced_by else "",
             "; ".join(str(r) for r in selection.rejected) or "none")
