"""Triton device functions shared by the generated GEMM kernels and the quant kernel."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile column), walking GROUP_M tile rows per column sweep so that
    consecutive programs share weight tiles in L2."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_band = GROUP_M * tiles_n
    band = pid // per_band
    first_m = band * GROUP_M
    rows_in_band = tl.minimum(tiles_m - first_m, GROUP_M)
    within = pid - band * per_band
    return first_m + within % rows_in_band, within // rows_in_band


@triton.jit
def decode_fp8_bytes(raw, FNUZ: tl.constexpr):
    """E4M3 bytes (uint8) -> float16, exactly, with integer ops only (no fp8 type in the kernel).

    e4m3fn: bias 7, subnormals m * 2**-9; e4m3fnuz: bias 8, subnormals m * 2**-10. NaN codes are
    not handled (inputs are validated)."""
    b = raw.to(tl.int32)
    e = (b >> 3) & 0xF
    m = b & 0x7
    if FNUZ:
        normal = ((e + 119) << 23) | (m << 20)
        sub = m.to(tl.float32) * 0.0009765625
    else:
        normal = ((e + 120) << 23) | (m << 20)
        sub = m.to(tl.float32) * 0.001953125
    mag = tl.where(e == 0, sub, normal.to(tl.float32, bitcast=True))
    return tl.where((b & 0x80) != 0, -mag, mag).to(tl.float16)


@triton.jit
def e8m0_to_f32(raw):
    """E8M0 exponent bytes -> float32 2**(b - 127) (byte 0 is the subnormal 2**-127)."""
    b = raw.to(tl.int32)
    bits = tl.where(b == 0, 0x00400000, b << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def load_scale(ptrs, SCALE_E8M0: tl.constexpr):
    """Scale values (float32, or E8M0 bytes decoded here) as float32."""
    if SCALE_E8M0:
        return e8m0_to_f32(tl.load(ptrs))
    else:
        return tl.load(ptrs)


@triton.jit
def dot_operand(x, FP8_AS_BYTES: tl.constexpr, FNUZ: tl.constexpr):
    """A loaded FP8 tile as tl.dot wants it: as is, or decoded from bytes to float16."""
    if FP8_AS_BYTES:
        return decode_fp8_bytes(x, FNUZ)
    else:
        return x


@triton.jit
def round_to_fp8_grid(y, FNUZ: tl.constexpr):
    """Round float32 ``y`` (|y| within the format's range) to the nearest E4M3 value, ties to even,
    in float32. Used before the fp8 cast where that cast does not round to nearest even (the
    Triton interpreter); on GPUs the cast itself does the same rounding."""
    bits = y.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)  # keep 3 mantissa bits
    if FNUZ:
        magic = 16384.0 * 0.5  # 2**13: float32 ulp 2**-10 = the e4m3fnuz subnormal step
        min_normal = 0.0078125  # 2**-7
    else:
        magic = 16384.0  # 2**14: float32 ulp 2**-9 = the e4m3fn subnormal step
        min_normal = 0.015625  # 2**-6
    a = tl.abs(y)
    sub = (a + magic) - magic
    sub = tl.where(bits < 0, -sub, sub)  # the sign bit: -0.0 stays -0.0
    return tl.where(a < min_normal, sub, normal)
