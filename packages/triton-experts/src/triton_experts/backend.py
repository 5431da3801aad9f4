"""Entry point of the ``triton`` backend (group ``moe_oracle.backends``)."""

from __future__ import annotations

from moe_oracle import Backend


def backend() -> Backend:
    from . import layout  # noqa: F401  (registers the triton layout)
    from .experts import TritonExperts

    return Backend(name="triton", experts=(TritonExperts,), description="fused-MoE Triton kernels")
