"""Checkpoint formats: encode a dense weight into a checkpoint's tensors and decode them back.

>>> from weight_layouts.formats import encode, decode
>>> t = encode("gptq", w, bits=4, group_size=128)      # {'qweight', 'qzeros', 'scales', 'g_idx'}
>>> w2 = decode("gptq", t, bits=4, group_size=128)     # float32 [..., N, K]

Built-in formats (``FORMATS`` lists them): ``dense``, ``fp8-tensor``, ``fp8-channel``,
``fp8-block``, ``int8-channel``, ``gptq``, ``ct-pack-quantized``, ``mxfp8``, ``mxfp4``, and the compressed-tensors storage aliases
``ct-mxfp4`` and ``ct-fp8-block`` (loaded as ``mxfp4`` / ``fp8-block``). Later
packages add formats with :func:`register_format`.
"""

from weight_layouts.formats.base import (
    FORMATS,
    CheckpointFormat,
    DecodedShape,
    FormatError,
    FormatParams,
    UnknownFormatError,
    decode,
    encode,
    get_format,
    register_format,
)
from weight_layouts.formats.ct_pack import CtPackFormat, CtPackParams
from weight_layouts.formats.dense import DenseFormat, DenseParams
from weight_layouts.formats.fp8 import (
    CtFp8BlockFormat,
    Fp8BlockFormat,
    Fp8BlockParams,
    Fp8ChannelFormat,
    Fp8Params,
    Fp8TensorFormat,
)
from weight_layouts.formats.gptq import GptqFormat, GptqParams
from weight_layouts.formats.int8 import Int8ChannelFormat, Int8Params
from weight_layouts.formats.mx import CtMxFp4Format, MxFp4Format, MxFp8Format, MxParams

for _cls in (
    DenseFormat,
    Fp8TensorFormat,
    Fp8ChannelFormat,
    Fp8BlockFormat,
    Int8ChannelFormat,
    GptqFormat,
    CtPackFormat,
    MxFp8Format,
    MxFp4Format,
    CtMxFp4Format,
    CtFp8BlockFormat,
):
    if _cls.name not in FORMATS:  # importlib.reload-safe
        register_format(_cls)
del _cls

__all__ = [
    "FORMATS",
    "CheckpointFormat",
    "CtFp8BlockFormat",
    "CtMxFp4Format",
    "CtPackFormat",
    "CtPackParams",
    "DecodedShape",
    "DenseFormat",
    "DenseParams",
    "FormatError",
    "FormatParams",
    "Fp8BlockFormat",
    "Fp8BlockParams",
    "Fp8ChannelFormat",
    "Fp8Params",
    "Fp8TensorFormat",
    "GptqFormat",
    "GptqParams",
    "Int8ChannelFormat",
    "Int8Params",
    "MxFp4Format",
    "MxFp8Format",
    "MxParams",
    "UnknownFormatError",
    "decode",
    "encode",
    "get_format",
    "register_format",
]
