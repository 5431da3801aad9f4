"""Kernels: Triton (imported lazily, only when a Triton kernel runs), cuBLAS through torch, and
their launchers. Importing this package does not import triton."""
