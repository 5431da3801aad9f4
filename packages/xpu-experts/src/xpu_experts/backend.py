"""Entry point of the ``xpu`` backend (group ``moe_oracle.backends``)."""

from __future__ import annotations

from moe_oracle import Backend


def backend() -> Backend:
    from . import layout  # noqa: F401  (registers the xpu layout)
    from ._generated_experts import ALL_EXPERTS

    return Backend(name="xpu", experts=ALL_EXPERTS,
                   description="Intel XPU experts over vllm-xpu-kernels (torch emulation where it is absent)")
