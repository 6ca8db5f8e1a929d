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
