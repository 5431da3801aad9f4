"""Environment settings of xpu-experts, parsed once.

``QMOE_XPU_EMULATION``: ``1``/``true``/``yes``/``on`` forces the torch emulation even where
vllm-xpu-kernels imports (like vLLM's VLLM_XPU_FUSED_MOE_USE_REF); ``0``/``false``/``no``/``off``
or unset uses the native kernel when it imports. Anything else is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

ENV_EMULATION = "QMOE_XPU_EMULATION"
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n", ""}


@dataclass(frozen=True, kw_only=True)
class XpuSettings:
    force_emulation: bool

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> XpuSettings:
        env = os.environ if environ is None else environ
        raw = env.get(ENV_EMULATION, "").strip().lower()
        if raw in _TRUE:
            return cls(force_emulation=True)
        if raw in _FALSE:
            return cls(force_emulation=False)
        raise ValueError(f"{ENV_EMULATION}={env.get(ENV_EMULATION)!r}; expected one of 1/0/true/false/yes/no/on/off")


@lru_cache(maxsize=1)
def xpu_settings() -> XpuSettings:
    """Read once; ``xpu_settings.cache_clear()`` after changing the environment."""
    return XpuSettings.from_environ()
