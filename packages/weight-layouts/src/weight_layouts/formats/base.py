"""The checkpoint-format contract, its errors and the format registry.

A :class:`CheckpointFormat` turns a dense float weight ``[..., N, K]`` (nn.Linear orientation:
N output features, K input features, any leading batch dims such as experts) into the tensors a
checkpoint stores, with their real names, dtypes and shapes (leading dims kept in front), and
back into a dense float32 ``[..., N, K]``.

Parameters of a format are keyword arguments checked against the format's ``Params`` dataclass
(keyword-only, typed, with defaults); an unknown name, a wrong type or an unsupported value raises
:class:`FormatError`. The same parameters are accepted by encode, decode and validate; a few
formats also take per-call encode inputs (``encode_inputs``, e.g. GPTQ's act-order ``perm``)
that decode refuses.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import torch

__all__ = [
    "FORMATS",
    "CheckpointFormat",
    "DecodedShape",
    "FormatError",
    "FormatParams",
    "UnknownFormatError",
    "decode",
    "encode",
    "get_format",
    "register_format",
]


class FormatError(ValueError):
    """Bad input to a checkpoint format: a missing or unexpected tensor, a wrong dtype or shape,
    an indivisible dim, an invalid scale or index, or an unknown or unsupported parameter."""


class UnknownFormatError(FormatError, KeyError):
    """No format is registered under the requested name (both a ``KeyError`` and a ``FormatError``)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DecodedShape(NamedTuple):
    """What :meth:`CheckpointFormat.validate` learned: leading batch dims, N and K of the dense weight."""

    batch: tuple[int, ...]
    n: int
    k: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class FormatParams:
    """Base of every format's parameter dataclass; subclasses add typed keyword-only fields and
    override :meth:`check` to validate them (raising :class:`FormatError`)."""

    def check(self, fmt: str) -> None:
        """Validate field values; ``fmt`` is the format name for messages."""


def check_int(fmt: str, name: str, value: Any, *, allowed: tuple[int, ...] | None = None) -> int:
    """Helper for ``FormatParams.check``: ``value`` must be a plain int (not bool), optionally one of ``allowed``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{fmt}: param {name!r} must be an int, got {value!r} ({type(value).__name__})")
    if allowed is not None and value not in allowed:
        raise FormatError(f"{fmt}: param {name}={value} is not supported; expected one of {list(allowed)}")
    return value


def check_bool(fmt: str, name: str, value: Any) -> bool:
    """Helper for ``FormatParams.check``: ``value`` must be a bool."""
    if not isinstance(value, bool):
        raise FormatError(f"{fmt}: param {name!r} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def check_float_dtype(fmt: str, name: str, value: Any, *, allowed: tuple[torch.dtype, ...]) -> None:
    """Helper for ``FormatParams.check``: ``value`` must be None or one of ``allowed`` torch dtypes."""
    if value is not None and (not isinstance(value, torch.dtype) or value not in allowed):
        raise FormatError(f"{fmt}: param {name}={value!r} is not supported; expected None or one of {list(allowed)}")


class CheckpointFormat(ABC):
    """One checkpoint format: encode a dense weight to its tensors, validate and decode them.

    Class attributes:

    * ``name``: the registry name (``"gptq"``, ``"mxfp4"`` ...).
    * ``required_tensors`` / ``optional_tensors``: every tensor name the format may store;
      ``tensor_names`` is both together; :meth:`encoded_tensor_names` gives the exact set that
      :meth:`encode` writes for given params.
    * ``Params``: the keyword-only dataclass of the format's parameters (defaults documented there).
    * ``encode_inputs``: names of per-call data that only :meth:`encode` accepts.
    """

    name: ClassVar[str]
    required_tensors: ClassVar[tuple[str, ...]]
    optional_tensors: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[FormatParams]] = FormatParams
    encode_inputs: ClassVar[tuple[str, ...]] = ()
    #: A storage alias: the format whose tensors :meth:`to_canonical` re-views these as (loaders
    #: hand backends the canonical format only). None for a canonical format.
    canonical_format: ClassVar[str | None] = None

    def to_canonical(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Re-view validated tensors as ``canonical_format``'s (views, no copies)."""
        raise NotImplementedError(f"{self.name} is a canonical format")

    # -- parameters ---------------------------------------------------------------------------
    def params(self, **params: Any) -> FormatParams:
        """Build and check the format's ``Params`` from keyword arguments (unknown names raise)."""
        fields = {f.name for f in dataclasses.fields(self.Params)}
        unknown = sorted(set(params) - fields)
        if unknown:
            inputs = [u for u in unknown if u in self.encode_inputs]
            if inputs:
                raise FormatError(
                    f"{self.name}: {', '.join(repr(u) for u in inputs)} is an encode-only input; "
                    "decode and validate read everything from the stored tensors"
                )
            raise FormatError(
                f"{self.name}: unknown param(s) {', '.join(repr(u) for u in unknown)}; "
                f"valid params: {', '.join(sorted(fields)) or '(none)'}"
            )
        p = self.Params(**params)
        p.check(self.name)
        return p

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """Every tensor name the format may store: ``required_tensors + optional_tensors``."""
        return self.required_tensors + self.optional_tensors

    def encoded_tensor_names(self, **params: Any) -> tuple[str, ...]:
        """The exact tensor names :meth:`encode` writes for these params (default: ``required_tensors``)."""
        self.params(**params)
        return self.required_tensors

    # -- public API ---------------------------------------------------------------------------
    def encode(self, weight: torch.Tensor, **params: Any) -> dict[str, torch.Tensor]:
        """Dense float weight ``[..., N, K]`` -> the checkpoint's tensors (leading dims in front)."""
        inputs = {k: params.pop(k) for k in list(params) if k in self.encode_inputs}
        p = self.params(**params)
        w = self._check_weight(weight)
        with torch.no_grad():
            return self._encode(w, p, **inputs)

    def validate(
        self, tensors: Mapping[str, torch.Tensor], *, rows: int | None = None, cols: int | None = None, **params: Any
    ) -> DecodedShape:
        """Check names, dtypes, shapes and values of ``tensors``; return the dense shape they decode to.

        ``rows`` / ``cols``, when given, are the expected N (output features) and K (input
        features) of the dense weight, e.g. from the model config; a mismatch raises.
        """
        p = self.params(**params)
        shape = self._validate_with(tensors, p)
        for what, expected, got in (("rows", rows, shape.n), ("cols", cols, shape.k)):
            if expected is None:
                continue
            check_int(self.name, what, expected)
            if expected != got:
                dim = "N (output features)" if what == "rows" else "K (input features)"
                raise FormatError(
                    f"{self.name}: the tensors decode to a weight with {dim} = {got}, expected {what}={expected}; "
                    f"shapes: {_shapes(tensors)}"
                )
        return shape

    def decode(
        self, tensors: Mapping[str, torch.Tensor], *, rows: int | None = None, cols: int | None = None, **params: Any
    ) -> torch.Tensor:
        """The checkpoint's tensors -> dense float32 ``[..., N, K]`` (validated first, see :meth:`validate`)."""
        p = self.params(**params)
        shape = self.validate(tensors, rows=rows, cols=cols, **params)
        with torch.no_grad():
            out = self._decode(tensors, p, shape)
        return out

    # -- subclass hooks -----------------------------------------------------------------------
    @abstractmethod
    def _encode(self, weight: torch.Tensor, p: Any) -> dict[str, torch.Tensor]:
        """Encode a checked weight (float dtype, ndim >= 2, finite unless the format allows otherwise).

        Formats with ``encode_inputs`` add them as keyword-only parameters with defaults.
        """

    @abstractmethod
    def _validate(self, tensors: Mapping[str, torch.Tensor], p: Any) -> DecodedShape:
        """Check every tensor (names already checked) and return the decoded shape."""

    @abstractmethod
    def _decode(self, tensors: Mapping[str, torch.Tensor], p: Any, shape: DecodedShape) -> torch.Tensor:
        """Decode validated tensors to float32 ``[*shape.batch, shape.n, shape.k]``."""

    #: Whether encode rejects NaN / inf in the weight (quantized formats need finite values).
    requires_finite_weight: ClassVar[bool] = True

    def _check_weight(self, weight: Any) -> torch.Tensor:
        if not isinstance(weight, torch.Tensor):
            raise FormatError(f"{self.name}: weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise FormatError(
                f"{self.name}: weight must be a dense float tensor (float32, bfloat16, float16 or float64), "
                f"got {weight.dtype}"
            )
        if weight.ndim < 2:
            raise FormatError(
                f"{self.name}: weight must be [..., N, K] (at least 2 dims), got shape {tuple(weight.shape)}"
            )
        if weight.shape[-1] == 0 or weight.shape[-2] == 0:
            raise FormatError(f"{self.name}: weight needs N >= 1 and K >= 1, got shape {tuple(weight.shape)}")
        w: torch.Tensor = weight.detach()
        if self.requires_finite_weight and w.numel() and not bool(torch.isfinite(w).all()):
            bad = torch.nonzero(~torch.isfinite(w))[0].tolist()
            raise FormatError(f"{self.name}: weight must be finite to be quantized; found {w[tuple(bad)].item()} at index {bad}")
        return w

    def _validate_with(self, tensors: Mapping[str, torch.Tensor], p: Any) -> DecodedShape:
        if not isinstance(tensors, Mapping):
            raise FormatError(f"{self.name}: tensors must be a mapping of name -> tensor, got {type(tensors).__name__}")
        allowed = set(self.required_tensors) | set(self.optional_tensors)
        missing = [n for n in self.required_tensors if n not in tensors]
        if missing:
            raise FormatError(
                f"{self.name}: missing tensor(s) {', '.join(repr(m) for m in missing)}; "
                f"got {sorted(tensors)}, expected {list(self.required_tensors)}"
                + (f" (optional: {list(self.optional_tensors)})" if self.optional_tensors else "")
            )
        unexpected = sorted(set(tensors) - allowed)
        if unexpected:
            raise FormatError(
                f"{self.name}: unexpected tensor(s) {', '.join(repr(u) for u in unexpected)}; "
                f"this format stores {sorted(allowed)}"
            )
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise FormatError(f"{self.name}: tensor {key!r} must be a torch.Tensor, got {type(value).__name__}")
        return self._validate(tensors, p)

    def __repr__(self) -> str:
        return f"<CheckpointFormat {self.name!r}>"


def _shapes(tensors: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items())


# -- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, CheckpointFormat] = {}
#: Read-only mapping of every registered format name -> format object.
FORMATS: Mapping[str, CheckpointFormat] = MappingProxyType(_REGISTRY)


def register_format(fmt: Any) -> Any:
    """Register a format (an instance, or a subclass that is instantiated with no arguments).

    Returns its argument, so it also works as a class decorator. A name already registered
    raises :class:`FormatError`.
    """
    instance = fmt() if isinstance(fmt, type) and issubclass(fmt, CheckpointFormat) else fmt
    if not isinstance(instance, CheckpointFormat):
        raise FormatError(f"register_format needs a CheckpointFormat instance or subclass, got {fmt!r}")
    name = getattr(instance, "name", None)
    if not isinstance(name, str) or not name:
        raise FormatError(f"register_format: {fmt!r} has no name")
    if name in _REGISTRY:
        raise FormatError(f"a format named {name!r} is already registered ({_REGISTRY[name]!r})")
    _REGISTRY[name] = instance
    return fmt


def get_format(name: str | CheckpointFormat) -> CheckpointFormat:
    """The registered format called ``name`` (a format object is returned as is).

    Raises :class:`UnknownFormatError` (a ``KeyError`` and a ``FormatError``) listing valid names.
    """
    if isinstance(name, CheckpointFormat):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownFormatError(f"unknown checkpoint format {name!r}; valid formats: {', '.join(sorted(_REGISTRY))}") from None


def encode(fmt: str | CheckpointFormat, weight: torch.Tensor, **params: Any) -> dict[str, torch.Tensor]:
    """Encode a dense float weight ``[..., N, K]`` into format ``fmt``'s checkpoint tensors.

    Returns ``{tensor name: tensor}`` with the checkpoint's names, dtypes and shapes (leading
    dims of ``weight`` kept in front). ``params`` are the format's keyword parameters.
    """
    return get_format(fmt).encode(weight, **params)


def decode(fmt: str | CheckpointFormat, tensors: Mapping[str, torch.Tensor], **params: Any) -> torch.Tensor:
    """Decode format ``fmt``'s checkpoint tensors into a dense float32 ``[..., N, K]`` weight."""
    return get_format(fmt).decode(tensors, **params)
