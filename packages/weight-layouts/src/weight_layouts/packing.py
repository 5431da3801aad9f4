"""Bit-level helpers shared by checkpoint formats and layout conversions.

Everything here is pure torch, runs on any device and never reinterprets int32 words as bytes
(no ``.view(torch.uint8)``), so results do not depend on the host's endianness.

* Integer packing into ``int32`` words (GPTQ ``qweight`` / ``qzeros``, compressed-tensors
  ``weight_packed`` / ``weight_zero_point``): ``32 // bits`` codes per word, element ``j`` of a
  word at bits ``[bits*j, bits*(j+1))`` (LSB first). Words whose top code has its high bit set are
  negative as ``int32``; unpacking masks after shifting, so they read back as the unsigned codes.
* Nibble packing into ``uint8`` (FP4 blocks, XPU int4): two 4-bit codes per byte, the even
  element in the low nibble, the odd element in the high nibble.
* FP4 E2M1 codes: sign-magnitude, bit 3 = sign, magnitudes of codes 0..7 are
  0, 0.5, 1, 1.5, 2, 3, 4, 6.
* E8M0 (OCP MX shared scale): one byte ``b``, value ``2**(b - 127)``; ``0xFF`` is NaN; byte 0 is
  ``2**-127`` (not zero).

Misuse (codes out of range, bad ``bits``) raises ``ValueError``: these helpers sit below the
checkpoint formats, which validate their inputs and raise ``FormatError`` first.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "E2M1_MAGNITUDES",
    "E2M1_MAX",
    "E8M0_BIAS",
    "E8M0_EXP_MAX",
    "E8M0_EXP_MIN",
    "E8M0_NAN",
    "e2m1_decode",
    "e2m1_encode",
    "e2m1_lut",
    "e8m0_decode",
    "e8m0_encode",
    "mx_shared_exponent",
    "pack_int32",
    "pack_nibbles_uint8",
    "unpack_int32",
    "unpack_nibbles_uint8",
]

#: Magnitudes of the E2M1 codes 0..7; codes 8..15 are their negatives (bit 3 = sign).
E2M1_MAGNITUDES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: Largest finite E2M1 magnitude.
E2M1_MAX = 6.0
#: Exponent bias of E8M0: byte ``b`` means ``2**(b - E8M0_BIAS)``.
E8M0_BIAS = 127
#: The E8M0 byte reserved for NaN.
E8M0_NAN = 0xFF
#: Smallest and largest finite E8M0 exponents (bytes 0 and 254).
E8M0_EXP_MIN = -127
E8M0_EXP_MAX = 127

_PACK_BITS = (1, 2, 4, 8, 16)


def _codes_per_word(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in _PACK_BITS:
        raise ValueError(f"bits must be one of {_PACK_BITS} (a divisor of 32), got {bits!r}")
    return 32 // bits


def pack_int32(values: torch.Tensor, *, bits: int, dim: int = -1) -> torch.Tensor:
    """Pack unsigned ``bits``-wide codes along ``dim`` into int32 words, LSB first.

    ``values``: integer tensor with every element in ``[0, 2**bits)``. The packed dim of length
    ``L`` becomes ``ceil(L / (32 // bits))``; a partial last word is padded with zero codes.
    Code ``i`` along ``dim`` lands in word ``i // (32 // bits)`` at bit offset
    ``bits * (i % (32 // bits))``. Returns a contiguous ``int32`` tensor (words with the top bit
    set are negative, as in every checkpoint that stores them).
    """
    per = _codes_per_word(bits)
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise ValueError(f"pack_int32 needs an integer tensor, got {values.dtype}")
    v = values.movedim(dim, -1).to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(
            f"pack_int32: codes must lie in [0, {1 << bits}) for bits={bits}, "
            f"got min {int(v.min())} max {int(v.max())}"
        )
    length = v.shape[-1]
    words = math.ceil(length / per)
    if words * per != length:
        v = torch.nn.functional.pad(v, (0, words * per - length))
    v = v.reshape(*v.shape[:-1], words, per)
    shifts = torch.arange(per, device=v.device, dtype=torch.int64) * bits
    packed = (v << shifts).sum(dim=-1)  # in [0, 2**32)
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
    return packed.movedim(-1, dim).contiguous()


def unpack_int32(packed: torch.Tensor, *, bits: int, dim: int = -1, size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_int32`: int32 words -> unsigned codes along ``dim``.

    Words are read as uint32 (negative int32 words are fine). The unpacked dim has length
    ``words * (32 // bits)``, cut to ``size`` when given (to drop padding). Returns a contiguous
    ``int32`` tensor of codes in ``[0, 2**bits)``.
    """
    per = _codes_per_word(bits)
    if packed.dtype != torch.int32:
        raise ValueError(f"unpack_int32 needs an int32 tensor, got {packed.dtype}")
    p = packed.movedim(dim, -1)
    full = p.shape[-1] * per
    if size is None:
        size = full
    if not 0 <= size <= full:
        raise ValueError(f"unpack_int32: size {size} is outside [0, {full}] for {p.shape[-1]} words of {per} codes")
    shifts = torch.arange(per, device=p.device, dtype=torch.int32) * bits
    # Arithmetic right shift then mask: sign-extension bits never reach the low `bits` bits.
    codes = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    codes = codes.reshape(*p.shape[:-1], full)[..., :size]
    return codes.movedim(-1, dim).contiguous()


def pack_nibbles_uint8(codes: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Pack 4-bit codes (integer tensor, values 0..15) two per byte along ``dim``.

    Element ``2j`` goes to the low nibble and ``2j + 1`` to the high nibble of byte ``j``; an odd
    length is padded with a zero code. Returns contiguous ``uint8`` with that dim halved (ceil).
    """
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"pack_nibbles_uint8 needs an integer tensor, got {codes.dtype}")
    c = codes.movedim(dim, -1).to(torch.int32)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > 15):
        raise ValueError(f"pack_nibbles_uint8: codes must lie in [0, 16), got min {int(c.min())} max {int(c.max())}")
    if c.shape[-1] % 2:
        c = torch.nn.functional.pad(c, (0, 1))
    packed = (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)
    return packed.movedim(-1, dim).contiguous()


def unpack_nibbles_uint8(packed: torch.Tensor, *, dim: int = -1, size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles_uint8`: ``uint8`` bytes -> 4-bit codes (``uint8``, 0..15).

    The unpacked dim has length ``2 * bytes``, cut to ``size`` when given.
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_nibbles_uint8 needs a uint8 tensor, got {packed.dtype}")
    p = packed.movedim(dim, -1)
    full = 2 * p.shape[-1]
    if size is None:
        size = full
    if not 0 <= size <= full:
        raise ValueError(f"unpack_nibbles_uint8: size {size} is outside [0, {full}]")
    codes = torch.stack((p & 0xF, p >> 4), dim=-1).reshape(*p.shape[:-1], full)[..., :size]
    return codes.movedim(-1, dim).contiguous()


def e2m1_lut(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 E2M1 values indexed by code, as a float32 tensor (code 8 is -0.0)."""
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=device)
    return torch.cat((mags, -mags))


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (integer tensor, 0..15) -> float32 values of the same shape."""
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"e2m1_decode needs an integer tensor of codes, got {codes.dtype}")
    idx = codes.to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > 15):
        raise ValueError("e2m1_decode: codes must lie in [0, 16)")
    return e2m1_lut(codes.device)[idx]


# Midpoints between consecutive E2M1 magnitudes, with the tie direction of round-to-nearest-even:
# at a midpoint between codes i and i+1 the even code wins, so for even i the comparison is
# strict (a tie stays at i) and for odd i it is inclusive (a tie goes up to i + 1).
_E2M1_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round a float tensor to the nearest E2M1 value; returns the codes as ``uint8`` (0..15).

    Round to nearest, ties to the even code (IEEE round-half-even on E2M1); magnitudes above 6
    saturate to 6 (code 7 / 15). The sign bit (bit 3) follows ``torch.signbit``, so small
    negatives that round to zero give code 8 (-0). NaN input raises ``ValueError``.
    """
    if not x.dtype.is_floating_point:
        raise ValueError(f"e2m1_encode needs a floating tensor, got {x.dtype}")
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError("e2m1_encode: input contains NaN")
    a = x.abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for mid, inclusive in _E2M1_MIDPOINTS:
        code += (a >= mid if inclusive else a > mid).to(torch.uint8)
    return code | (torch.signbit(x).to(torch.uint8) << 3)


def e8m0_decode(scale: torch.Tensor) -> torch.Tensor:
    """E8M0 scales (``uint8`` bytes or ``torch.float8_e8m0fnu``) -> float32 ``2**(b - 127)``.

    Exact for every byte: byte 0 gives the float32 subnormal ``2**-127``, byte 254 gives
    ``2**127``, byte 0xFF gives NaN (callers that must reject NaN check for 0xFF first).
    """
    if scale.dtype == getattr(torch, "float8_e8m0fnu", None):
        scale = scale.view(torch.uint8)
    if scale.dtype != torch.uint8:
        raise ValueError(f"e8m0_decode needs uint8 (or float8_e8m0fnu), got {scale.dtype}")
    b = scale.to(torch.int32)
    # float32 bit patterns: exponent field b for b in 1..254; 2**-127 is the subnormal 0x00400000.
    bits = torch.where(b == 0, torch.full_like(b, 1 << 22), b << 23)
    bits = torch.where(b == E8M0_NAN, torch.full_like(b, 0x7FC00000), bits)
    return bits.view(torch.float32)


def e8m0_encode(exponent: torch.Tensor) -> torch.Tensor:
    """Integer exponents in ``[-127, 127]`` -> E8M0 bytes (``uint8``, ``exponent + 127``)."""
    if exponent.dtype.is_floating_point or exponent.dtype.is_complex or exponent.dtype == torch.bool:
        raise ValueError(f"e8m0_encode needs an integer tensor, got {exponent.dtype}")
    e = exponent.to(torch.int32)
    if e.numel() and (int(e.min()) < E8M0_EXP_MIN or int(e.max()) > E8M0_EXP_MAX):
        raise ValueError(f"e8m0_encode: exponents must lie in [{E8M0_EXP_MIN}, {E8M0_EXP_MAX}]")
    return (e + E8M0_BIAS).to(torch.uint8)


def mx_shared_exponent(amax: torch.Tensor, *, emax_elem: int) -> torch.Tensor:
    """OCP MX shared exponent of blocks with absolute maximum ``amax`` (float tensor, >= 0).

    ``floor(log2(amax)) - emax_elem`` clamped to ``[-127, 127]`` (``emax_elem`` = 8 for E4M3,
    2 for E2M1, 15 for E5M2); an all-zero block (amax 0) gets -127. ``floor(log2)`` is taken
    exactly from the binary exponent (``torch.frexp``), never from a rounded ``log2``.
    Returns int32 of ``amax``'s shape.
    """
    if not amax.dtype.is_floating_point:
        raise ValueError(f"mx_shared_exponent needs a floating tensor, got {amax.dtype}")
    if amax.numel() and not bool(torch.isfinite(amax).all()):
        raise ValueError("mx_shared_exponent: amax must be finite")
    _, exp = torch.frexp(amax)  # amax = m * 2**exp with m in [0.5, 1)
    e = exp.to(torch.int32) - 1 - emax_elem
    e = torch.where(amax > 0, e, torch.full_like(e, E8M0_EXP_MIN))
    return e.clamp(E8M0_EXP_MIN, E8M0_EXP_MAX)
