"""Reference implementations: activation quantization as the kernels do it and the dense MoE math."""

from .activation_quant import (
    QuantizedActivation,
    decode_e8m0,
    dequantize_activation,
    expected_scale_shape,
    is_supported_activation_key,
    quantize_activation,
)
from .moe_math import reference_moe_forward

__all__ = [
    "QuantizedActivation",
    "decode_e8m0",
    "dequantize_activation",
    "expected_scale_shape",
    "is_supported_activation_key",
    "quantize_activation",
    "reference_moe_forward",
]
