"""The record types of the scheme table (the table itself is generated from codegen/spec.toml)."""

from __future__ import annotations

from dataclasses import dataclass

from .keys import QuantKey
from .platforms import PlatformKind


@dataclass(frozen=True, kw_only=True)
class BackendInfo:
    """An experts backend: its registry name, the distribution that provides it, where it runs."""

    name: str
    package: str
    description: str
    platforms: tuple[PlatformKind, ...]


@dataclass(frozen=True, kw_only=True)
class BackendSupport:
    """How one backend serves one scheme.

    ``weight_keys`` is the subset of the scheme's weight keys this backend serves; ``options``
    holds backend-specific names from the spec (Triton kernel variant, XPU class and recipe).
    """

    backend: str
    weight_keys: tuple[QuantKey | None, ...]
    options: tuple[tuple[str, str], ...] = ()

    def option(self, name: str) -> str:
        for key, value in self.options:
            if key == name:
                return value
        raise KeyError(f"backend {self.backend!r} has no spec option {name!r}; it has {[k for k, _ in self.options]}")


@dataclass(frozen=True, kw_only=True)
class Scheme:
    """One quantization scheme of a MoE layer: which weight keys pair with which activation key.

    ``activation_key`` None means activations stay in the model dtype (weight-only schemes);
    a ``None`` entry in ``weight_keys`` means unquantized weights.
    """

    name: str
    title: str
    weight_keys: tuple[QuantKey | None, ...]
    activation_key: QuantKey | None
    formats: tuple[str, ...]
    backends: tuple[BackendSupport, ...]
    linear_gemm: str | None = None

    def serves(self, weight_key: QuantKey | None, activation_key: QuantKey | None) -> bool:
        return weight_key in self.weight_keys and activation_key == self.activation_key

    def support(self, backend: str) -> BackendSupport | None:
        """How ``backend`` serves this scheme, or None if the spec says it does not."""
        for entry in self.backends:
            if entry.backend == backend:
                return entry
        return None

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(entry.backend for entry in self.backends)
