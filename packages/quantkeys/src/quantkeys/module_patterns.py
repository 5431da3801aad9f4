"""Module-name patterns as checkpoint configs write them (ignore lists, targets, exclusions).

Forms understood, all matched against a full dotted module name such as
``model.layers.3.mlp.experts.7.down_proj``:

* ``re:<regex>``: compressed-tensors' regex, matched from the start of the name (``re.match``).
* a glob with ``*`` / ``?`` (ModelOpt, GPT-OSS): matches the name or any dotted prefix of it,
  so ``model.layers.*.self_attn`` covers ``model.layers.0.self_attn.q_proj``.
* a class name such as ``Linear`` (no dot, upper-case first letter): every linear module.
* a plain dotted name: matches whole components, anywhere in the name (``lm_head``,
  ``mlp.gate``, ``model.layers.0.mlp.gate``); ``layers.1`` does not match ``layers.10``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from dataclasses import dataclass

# Last name components of MoE routers: Qwen/DeepSeek/Mixtral `gate`, GPT-OSS/Llama-4 `router`,
# Qwen2-MoE `shared_expert_gate`. Output heads and embeddings are protected the same way.
_ROUTER_LEAVES = frozenset({"gate", "router", "shared_expert_gate"})
_HEAD_LEAVES = frozenset({"lm_head", "embed_tokens", "wte", "embed_out"})


def is_router_module(name: str) -> bool:
    """True for a MoE router / gate module name (``...mlp.gate``, ``...mlp.router``)."""
    return name.rsplit(".", 1)[-1] in _ROUTER_LEAVES


def is_protected_module(name: str) -> bool:
    """Routers, embeddings and the output head: quantized only when a config names them exactly."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in _ROUTER_LEAVES or leaf in _HEAD_LEAVES


class PatternKind(enum.Enum):
    REGEX = "regex"
    GLOB = "glob"
    CLASS = "class"
    NAME = "name"


@dataclass(frozen=True)
class ModulePattern:
    """One pattern from a config; ``matches(name)`` applies the rules in the module docstring."""

    text: str
    kind: PatternKind

    @classmethod
    def parse(cls, text: str, *, where: str) -> ModulePattern:
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: module patterns must be non-empty strings, got {text!r}")
        if text.startswith("re:"):
            try:
                re.compile(text[3:])
            except re.error as exc:
                raise ValueError(f"{where}: invalid regex {text!r}: {exc}") from None
            return cls(text, PatternKind.REGEX)
        if any(ch in text for ch in "*?["):
            return cls(text, PatternKind.GLOB)
        if "." not in text and text[0].isupper():
            return cls(text, PatternKind.CLASS)
        return cls(text, PatternKind.NAME)

    def matches(self, name: str) -> bool:
        if self.kind is PatternKind.REGEX:
            return re.match(self.text[3:], name) is not None
        if self.kind is PatternKind.CLASS:
            return True
        if self.kind is PatternKind.GLOB:
            parts = name.split(".")
            return any(fnmatch.fnmatchcase(".".join(parts[: i + 1]), self.text) for i in range(len(parts)))
        return f".{self.text}." in f".{name}."

    def names_exactly(self, name: str) -> bool:
        """True when the pattern is the module's full name (the only way to quantize a router)."""
        return self.kind is PatternKind.NAME and self.text == name

    @property
    def specificity(self) -> int:
        """Higher wins when several targets match: exact names, then regexes/globs, then classes."""
        return {PatternKind.NAME: 3, PatternKind.REGEX: 2, PatternKind.GLOB: 2, PatternKind.CLASS: 1}[self.kind]


def parse_patterns(values: object, *, where: str) -> tuple[ModulePattern, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{where} must be a list of module patterns, got {type(values).__name__} {values!r}")
    return tuple(ModulePattern.parse(v, where=where) for v in values)
