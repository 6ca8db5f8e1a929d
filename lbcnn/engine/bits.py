"""Integer types and bit packing shared by every family's plan (no family imports another)."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

INT16_MAX = 2 ** 15 - 1
INT32_MAX = 2 ** 31 - 1
INT64_MAX = 2 ** 63 - 1


def dtype_for(bound: int) -> str:
    """The narrowest signed type that holds every value up to ``bound``."""
    if bound <= INT16_MAX:
        return "int16"
    if bound <= INT32_MAX:
        return "int32"
    if bound <= INT64_MAX:
        return "int64"
    raise ConfigError(f"an intermediate value can reach {bound:.3e}, beyond int64; "
                      "the integer engine cannot compile this model (fewer layers or a "
                      "smaller nl keeps the conv stack bounded)")


def pack_neg_bits(taps: np.ndarray) -> np.ndarray:
    """(9, C_out) +-1 taps -> packed bits, bit k set when tap k (row-major) is -1."""
    return np.packbits((np.asarray(taps) < 0).ravel(), bitorder="little")


def unpack_neg_bits(packed: np.ndarray, n_taps: int, c_out: int) -> np.ndarray:
    bits = np.unpackbits(packed, count=n_taps * c_out, bitorder="little")
    return bits.reshape(n_taps, c_out).astype(bool)


def pack_signs_u64(x: np.ndarray) -> np.ndarray:
    """(..., N) +-1 values -> (..., ceil(N/64)) uint64 words, bit 1 = +1, zero padded."""
    x = np.asarray(x)
    n = x.shape[-1]
    words = -(-n // 64)
    packed = np.packbits(x > 0, axis=-1, bitorder="little")
    pad = words * 8 - packed.shape[-1]
    if pad:
        packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (pad,), np.uint8)], -1)
    return np.ascontiguousarray(packed).view("<u8")


# -- sub-byte signed integers ------------------------------------------------------
# Two layouts of the same n-bit two's-complement weights:
#
# * the model file's (``pack_signed`` / ``unpack_signed``): one continuous little-endian
#   bit stream, field i in bits [i*n, (i+1)*n), so a (d, k) matrix of n-bit weights is
#   ceil(d*k*n/8) bytes whatever its shape;
# * the generated C's (``pack_lanes`` / ``unpack_lanes``): groups of 32 weights in n
#   32-bit words, laid out so that a decoder turns each group into eight words of four
#   int8 lanes with shifts, masks, one add and one xor per word, no per-weight work
#   (SWAR: the same code on a Cortex-M0+, an M4 and a host). See ``lane_planes``.
PACKED_BITS = range(2, 8)   # 8- and 16-bit heads are stored as int8 / int16 arrays
# the model file's stream also holds 1-bit fields (a lowbit family's +-1 kernels: level
# indices -1 / 0, one bit each)
FILE_PACKED_BITS = range(1, 8)


def _check_packed_bits(bits: int, allowed=PACKED_BITS) -> int:
    bits = int(bits)
    if bits not in allowed:
        raise ConfigError(f"sub-byte packing takes {allowed.start}..{allowed.stop - 1} bits, "
                          f"got {bits}")
    return bits


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of ``count`` n-bit fields in the model file's continuous layout."""
    return -(-int(count) * int(bits) // 8)


def pack_signed(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers in ``[-2^(n-1), 2^(n-1) - 1]`` -> uint8, n bits each, LSB first."""
    bits = _check_packed_bits(bits, FILE_PACKED_BITS)
    q = np.asarray(q).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if q.size and (q.min() < lo or q.max() > hi):
        raise ConfigError(f"values outside the signed {bits}-bit range cannot be packed")
    u = (q.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint8)
    fields = np.unpackbits(u[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(fields.ravel(), bitorder="little")


def unpack_signed(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_signed`: ``count`` int8 values."""
    bits = _check_packed_bits(bits, FILE_PACKED_BITS)
    fields = np.unpackbits(np.asarray(packed, np.uint8), count=int(count) * bits,
                           bitorder="little").reshape(int(count), bits)
    u = np.packbits(fields, axis=1, bitorder="little")[:, 0].astype(np.int16)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int8)


def lane_planes(bits: int) -> list[tuple[int, int]]:
    """(plane bits b, lowest value bit) of the C layout, highest plane first: n = 4 + 2 + 1
    at most, so every field sits inside one byte lane and no field straddles a word.

    A weight w is stored offset-binary, ``t = w + 2^(n-1)`` (0 .. 2^n - 1). Of a group of
    32 weights, output word m (0..7) holds weights 4m..4m+3, lane l = byte l. Plane
    (b, lo) takes b words; its word m // (8 / b) holds bits lo .. lo+b-1 of the four
    weights of output word m at bit ``8 l + (m % (8 / b)) * b``. Decoding output word m:
    ``u = OR over planes of ((P[m // (8/b)] >> (m % (8/b)) * b) & mask_b) << lo`` gives
    the four t's, one a byte (t < 128: a non-negative int8). The generated C sums
    ``v * t`` and takes ``2^(n-1) * sum(v)`` off once, so it does no sign work per weight;
    lane-wise, ``(u + (0x80 - 2^(n-1)) * 0x01010101) ^ 0x80808080`` would give the four
    int8 weights themselves (no carry crosses a lane: ``unpack_lanes`` does that)."""
    bits = _check_packed_bits(bits)
    planes, top = [], bits
    for b in (4, 2, 1):
        if bits & b:
            planes.append((b, top - b))
            top -= b
    return planes


def lane_words(count: int, bits: int) -> int:
    """32-bit words of ``count`` weights in the C layout (the last group zero padded)."""
    return -(-int(count) // 32) * int(bits)


def pack_lanes(q: np.ndarray, bits: int) -> np.ndarray:
    """n-bit signed weights (a stream, in the order the C consumes them) -> uint32 words in
    the C layout of :func:`lane_planes`."""
    bits = _check_packed_bits(bits)
    q = np.asarray(q).ravel().astype(np.int64)
    half = 1 << (bits - 1)
    if q.size and (q.min() < -half or q.max() >= half):
        raise ConfigError(f"values outside the signed {bits}-bit range cannot be packed")
    groups = -(-q.size // 32)
    t = np.zeros(groups * 32, np.uint64)   # padding: weight 0, t = 2^(n-1)
    t[:] = half
    t[:q.size] = (q + half).astype(np.uint64)
    t = t.reshape(groups, 8, 4)            # (group, output word m, lane l)
    words = []
    for b, lo in lane_planes(bits):
        per = 8 // b
        field = ((t >> np.uint64(lo)) & np.uint64((1 << b) - 1)).reshape(groups, b, per, 4)
        shift = (np.arange(per)[:, None] * b + 8 * np.arange(4)[None, :]).astype(np.uint64)
        words.append(np.bitwise_or.reduce((field << shift).reshape(groups, b, -1), axis=2))
    return np.concatenate(words, axis=1).astype(np.uint32).ravel()


def unpack_lanes(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The C decoder, word for word in NumPy (the layout's reference): ``count`` int8."""
    bits = _check_packed_bits(bits)
    w = np.asarray(words, np.uint32).reshape(-1, bits).astype(np.uint64)
    out = np.zeros((len(w), 8), np.uint64)
    col = 0
    for b, lo in lane_planes(bits):
        per = 8 // b
        mask = np.uint64(((1 << b) - 1) * 0x01010101)
        for m in range(8):
            p = w[:, col + m // per] >> np.uint64((m % per) * b)
            out[:, m] |= (p & mask) << np.uint64(lo)
        col += b
    add = np.uint64((0x80 - (1 << (bits - 1))) * 0x01010101)
    out = ((out + add) ^ np.uint64(0x80808080)) & np.uint64(0xFFFFFFFF)
    lanes = out.astype("<u4").view(np.int8).reshape(-1)
    return lanes[:int(count)].copy()
