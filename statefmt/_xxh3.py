"""XXH3-64 (seed 0) of many short byte strings at once, in numpy: the stream index's hash, in bulk.

One `xxhash.xxh3_64_intdigest` call per id costs about 0.1 µs of hashing and 1 µs of Python: at
10^7 ids, seconds. XXH3 hashes inputs of up to 128 bytes with a few 64-bit multiplies and
xors over at most eight 8-byte words of the input, which numpy computes for a whole column of
ids at once. Longer ids (rare) go through xxhash one by one. The result is xxhash's, bit for
bit: tests/core compares every length from 0 to 300.

The constants and steps are those of the reference implementation (xxhash.h, XXH3_64bits with
the default secret, of which the first 128 bytes are all these lengths read).
"""

from __future__ import annotations

import numpy as np
import xxhash

SHORT = 128  # the longest input hashed in numpy; longer ones go through xxhash
CHUNK = 1 << 16  # ids per pass: temporaries stay in cache, memory stays bounded
SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364")
PRIME64_1, PRIME64_2, PRIME64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
PRIME_MX1, PRIME_MX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25
LOW32 = 0xFFFFFFFF
U64 = np.uint64


def _secret64(offset: int) -> int:
    return int.from_bytes(SECRET[offset:offset + 8], "little")


def _secret32(offset: int) -> int:
    return int.from_bytes(SECRET[offset:offset + 4], "little")


def hashes(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """XXH3-64 of `data[offsets[i]:offsets[i + 1]]` for each i, as uint64 (offsets already checked)."""
    data = np.ascontiguousarray(data, np.uint8)
    if data.size < 8:  # the 8-byte view below needs 8 bytes; ids this short read only their own
        data = np.concatenate([data, np.zeros(8, np.uint8)])
    words = np.ndarray((data.size - 7,), "<u8", data, strides=(1,))  # the 8 bytes from each position
    quads = np.ndarray((data.size - 3,), "<u4", data, strides=(1,))
    bounds = np.asarray(offsets, np.int64)
    out = np.empty(bounds.size - 1, np.uint64)
    for first in range(0, out.size, CHUNK):
        stop = min(out.size, first + CHUNK)
        starts = bounds[first:stop]
        _hash_chunk(data, words, quads, starts, bounds[first + 1:stop + 1] - starts, out[first:stop])
    return out


def _hash_chunk(data: np.ndarray, words: np.ndarray, quads: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                out: np.ndarray) -> None:
    out[lengths == 0] = _avalanche64(np.array([_secret64(56) ^ _secret64(64)], np.uint64))[0]
    for low, high, hasher in ((1, 3, _len_1to3), (4, 8, _len_4to8), (9, 16, _len_9to16), (17, SHORT, _len_17to128)):
        rows = np.flatnonzero((lengths >= low) & (lengths <= high))
        if rows.size == lengths.size:  # ids of one length class, as most fleets name them: no gathers
            out[:] = hasher(data, words, quads, starts, lengths)
            return
        if rows.size:
            out[rows] = hasher(data, words, quads, starts[rows], lengths[rows])
    for row in np.flatnonzero(lengths > SHORT).tolist():
        out[row] = xxhash.xxh3_64_intdigest(data[starts[row]:starts[row] + lengths[row]].data)


def _len_1to3(data: np.ndarray, words: np.ndarray, quads: np.ndarray, starts: np.ndarray,
              lengths: np.ndarray) -> np.ndarray:
    c1 = data[starts].astype(U64)
    c2 = data[starts + (lengths >> 1)].astype(U64)
    c3 = data[starts + lengths - 1].astype(U64)
    combined = (c1 << U64(16)) | (c2 << U64(24)) | c3 | (lengths.astype(U64) << U64(8))
    return _avalanche64(combined ^ U64(_secret32(0) ^ _secret32(4)))


def _len_4to8(data: np.ndarray, words: np.ndarray, quads: np.ndarray, starts: np.ndarray,
              lengths: np.ndarray) -> np.ndarray:
    first = quads[starts].astype(U64)
    last = quads[starts + lengths - 4].astype(U64)
    keyed = (last + (first << U64(32))) ^ U64(_secret64(8) ^ _secret64(16))
    keyed ^= _rotl(keyed, 49) ^ _rotl(keyed, 24)
    keyed *= U64(PRIME_MX2)
    keyed ^= (keyed >> U64(35)) + lengths.astype(U64)
    keyed *= U64(PRIME_MX2)
    return np.asarray(keyed ^ (keyed >> U64(28)))


def _len_9to16(data: np.ndarray, words: np.ndarray, quads: np.ndarray, starts: np.ndarray,
               lengths: np.ndarray) -> np.ndarray:
    low = words[starts] ^ U64(_secret64(24) ^ _secret64(32))
    high = words[starts + lengths - 8] ^ U64(_secret64(40) ^ _secret64(48))
    acc = lengths.astype(U64) + low.byteswap() + high + _mul128_fold64(low, high)
    return _avalanche3(acc)


def _len_17to128(data: np.ndarray, words: np.ndarray, quads: np.ndarray, starts: np.ndarray,
                 lengths: np.ndarray) -> np.ndarray:
    """Pairs of 16-byte mixes from both ends, one more pair for each 32 bytes past 32."""
    acc = lengths.astype(U64) * U64(PRIME64_1)
    ends = starts + lengths
    for round_ in range(4):
        rows = np.flatnonzero(lengths > 32 * round_)
        if rows.size == lengths.size:
            acc += _mix16(words, starts + 16 * round_, 32 * round_) + _mix16(words, ends - 16 * (round_ + 1),
                                                                             32 * round_ + 16)
        else:
            acc[rows] += _mix16(words, starts[rows] + 16 * round_, 32 * round_)
            acc[rows] += _mix16(words, ends[rows] - 16 * (round_ + 1), 32 * round_ + 16)
    return _avalanche3(acc)


def _mix16(words: np.ndarray, at: np.ndarray, secret: int) -> np.ndarray:
    return _mul128_fold64(words[at] ^ U64(_secret64(secret)), words[at + 8] ^ U64(_secret64(secret + 8)))


def _mul128_fold64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 128-bit product's low and high halves xored, from four 32x32-bit products."""
    a_lo, a_hi, b_lo, b_hi = a & U64(LOW32), a >> U64(32), b & U64(LOW32), b >> U64(32)
    lo_lo, hi_lo = a_lo * b_lo, a_hi * b_lo
    cross = (lo_lo >> U64(32)) + (hi_lo & U64(LOW32)) + a_lo * b_hi
    upper = (hi_lo >> U64(32)) + (cross >> U64(32)) + a_hi * b_hi
    lower = (cross << U64(32)) | (lo_lo & U64(LOW32))
    return np.asarray(lower ^ upper)


def _rotl(value: np.ndarray, bits: int) -> np.ndarray:
    return np.asarray((value << U64(bits)) | (value >> U64(64 - bits)))


def _avalanche3(value: np.ndarray) -> np.ndarray:
    value = value ^ (value >> U64(37))
    value *= U64(PRIME_MX1)
    return np.asarray(value ^ (value >> U64(32)))


def _avalanche64(value: np.ndarray) -> np.ndarray:
    value = value ^ (value >> U64(33))
    value *= U64(PRIME64_2)
    value ^= value >> U64(29)
    value *= U64(PRIME64_3)
    return np.asarray(value ^ (value >> U64(32)))
