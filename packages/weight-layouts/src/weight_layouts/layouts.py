"""Backend layouts and the idempotent conversion between them.

Every :class:`~weight_layouts.ExpertWeights` carries a layout tag. ``to_layout(experts, target)``
returns ``experts`` itself when it already is in ``target`` (so a reload or a second call never
converts twice), converts when ``target`` registered a converter from the current layout, and
raises :class:`LayoutError` otherwise. Converters are pure functions of their input.

Built in: ``canonical`` (what the loader returns) and ``reference`` (the reference experts read
the canonical tensors, so the conversion only re-tags). Backend packages register theirs
(``triton`` by triton-experts, ``xpu`` by xpu-experts) with :func:`register_layout`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from .experts import CANONICAL, ExpertWeights

Converter = Callable[[ExpertWeights], ExpertWeights]


class LayoutError(ValueError):
    """A conversion that cannot be done: unknown layout, or no path from the current layout."""


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    converters: Mapping[str, Converter]  # source layout -> converter


_LAYOUTS: dict[str, Layout] = {}
_LOCK = threading.Lock()


def register_layout(name: str, *, description: str, convert_from: Mapping[str, Converter]) -> None:
    """Register layout ``name`` with converters keyed by source layout. Re-registering the same
    converters is a no-op (plug-ins may load twice); different ones raise LayoutError."""
    if name == CANONICAL:
        raise LayoutError("the canonical layout is built in")
    layout = Layout(name, description, MappingProxyType(dict(convert_from)))
    with _LOCK:
        existing = _LAYOUTS.get(name)
        if existing is not None:
            if dict(existing.converters) == dict(layout.converters):
                return
            raise LayoutError(f"layout {name!r} is already registered with other converters")
        _LAYOUTS[name] = layout


def layouts() -> Mapping[str, Layout]:
    """Registered layouts by name (canonical excluded)."""
    return MappingProxyType(dict(_LAYOUTS))


def to_layout(experts: ExpertWeights, target: str) -> ExpertWeights:
    """``experts`` in layout ``target`` (the same object when already there)."""
    if experts.layout == target:
        return experts
    if target == CANONICAL:
        raise LayoutError(f"cannot convert from layout {experts.layout!r} back to canonical; reload the checkpoint")
    layout = _LAYOUTS.get(target)
    if layout is None:
        known = ", ".join([CANONICAL, *_LAYOUTS])
        raise LayoutError(f"unknown layout {target!r}; registered: {known} (backend packages register theirs)")
    converter = layout.converters.get(experts.layout)
    if converter is None:
        sources = ", ".join(layout.converters) or "nothing"
        raise LayoutError(f"cannot convert from layout {experts.layout!r} to {target!r}; {target!r} converts from: {sources}")
    converted = converter(experts)
    if converted is experts:
        raise LayoutError(f"converter {experts.layout!r} -> {target!r} returned its input; it must return new experts")
    return replace(converted, layout=target)


def _retag(experts: ExpertWeights) -> ExpertWeights:
    return replace(experts)


register_layout(
    "reference",
    description="the canonical tensors, read by the reference experts (dequantized on use)",
    convert_from={CANONICAL: _retag},
)
