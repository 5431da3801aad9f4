"""Look-ups over the generated scheme table (source: codegen/spec.toml)."""

from __future__ import annotations

from ._scheme_table import BACKENDS, PLATFORM_PRIORITY, SCHEMES
from .keys import QuantKey
from .platforms import PlatformKind
from .scheme_types import BackendInfo, BackendSupport, Scheme

__all__ = [
    "BACKENDS",
    "PLATFORM_PRIORITY",
    "SCHEMES",
    "BackendInfo",
    "BackendSupport",
    "Scheme",
    "find_scheme",
    "get_scheme",
    "priority_for",
]


def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; KeyError lists the valid names."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown scheme {name!r}; expected one of: {', '.join(SCHEMES)}") from None


def find_scheme(weight_key: QuantKey | None, activation_key: QuantKey | None) -> Scheme | None:
    """The scheme that pairs ``weight_key`` with ``activation_key``, or None if the table has none."""
    for scheme in SCHEMES.values():
        if scheme.serves(weight_key, activation_key):
            return scheme
    return None


def priority_for(platform: PlatformKind) -> tuple[str, ...]:
    """Backend names in the order the oracle tries them on ``platform``."""
    return PLATFORM_PRIORITY[platform]
