"""Environment settings, parsed once into a typed record.

``MOE_ORACLE_BACKEND``: a backend name to force, or ``auto`` (the same as unset). The value is
checked against the registered backends when selection runs: an unknown name is an error that
lists the valid ones, never silently ignored. Precedence: a ``force=`` argument beats the
environment, which beats automatic selection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

ENV_BACKEND = "MOE_ORACLE_BACKEND"


@dataclass(frozen=True, kw_only=True)
class Settings:
    backend: str | None  # None = automatic

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = env.get(ENV_BACKEND)
        if raw is None:
            return cls(backend=None)
        value = raw.strip()
        if not value:
            raise ValueError(f"{ENV_BACKEND} is set but empty; unset it or name a backend ('auto' for automatic)")
        from .registry import normalize_name

        value = normalize_name(value)
        return cls(backend=None if value == "auto" else value)


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings (read once; call ``settings.cache_clear()`` after changing the environment)."""
    return Settings.from_environ()
