"""Stream ids as tensors, with a hash index: one stream by id costs O(1) reads however many ids.

Four tensors (spec, "Stream ids"):

    stream_ids.bytes    U8  [total]       the ids' UTF-8 bytes, back to back, in row order
    stream_ids.offsets  U64 [n + 1]       id of row r = bytes[offsets[r]:offsets[r + 1]]
    stream_ids.index    U64 [n, 2]        (xxh3-64 of the id's bytes, row), sorted
    stream_ids.buckets  U64 [2**k + 1]    entries of hash bucket b = index[buckets[b]:buckets[b + 1]]

A hash's bucket is its top k bits, so a lookup reads one bucket bound pair, one bucket (about
8 entries), one offset pair and one id: the id confirms the hash match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xxhash

from .errors import StateFormatError

ENTRIES_PER_BUCKET = 8


def encode(ids: Sequence[str]) -> list[bytes]:
    try:
        return list(map(str.encode, ids))  # at C speed: 10^7 ids
    except UnicodeEncodeError:
        row = next(row for row, stream_id in enumerate(ids) if not _encodable(stream_id))
        raise StateFormatError(f"stream id at row {row} ({ids[row]!r}) is not valid Unicode text (a lone "
                               "surrogate?); stream ids are stored as UTF-8") from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def bucket_bits(count: int) -> int:
    """k: 2**k buckets, about ENTRIES_PER_BUCKET entries each."""
    return max(0, (max(1, count // ENTRIES_PER_BUCKET) - 1).bit_length())


def bucket_of(hashes: np.ndarray | int, bits: int) -> np.ndarray | int:
    if bits == 0:
        return hashes * 0
    return hashes >> np.uint64(64 - bits) if isinstance(hashes, np.ndarray) else hashes >> (64 - bits)


def build(ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The four tensors for these ids (unique, in row order)."""
    encoded = encode(ids)
    lengths = np.fromiter(map(len, encoded), np.uint64, len(encoded))
    offsets = np.zeros(len(encoded) + 1, np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, encoded), np.uint64, len(encoded))
    order = np.lexsort((np.arange(len(encoded), dtype=np.uint64), hashes))
    index = np.stack([hashes[order], order.astype(np.uint64)], axis=1) if len(encoded) else np.zeros((0, 2), np.uint64)
    bits = bucket_bits(len(encoded))
    buckets = np.searchsorted(bucket_of(index[:, 0], bits), np.arange(2**bits + 1, dtype=np.uint64)).astype(np.uint64)
    data = np.frombuffer(b"".join(encoded), np.uint8)
    return {"stream_ids.bytes": data, "stream_ids.offsets": offsets, "stream_ids.index": index,
            "stream_ids.buckets": buckets}


def decode(data: np.ndarray | bytes, offsets: np.ndarray, base: int = 0) -> list[str]:
    """The ids between consecutive `offsets` (relative to `base`) of `data`."""
    raw = bytes(data)
    bounds = (np.asarray(offsets, np.int64) - base).tolist()
    slices = map(slice, bounds[:-1], bounds[1:])
    try:
        text = raw.decode()
        if len(text) == len(raw):  # all ASCII: byte offsets are character offsets, and slicing runs at C speed
            return list(map(text.__getitem__, slices))
        return [piece.decode() for piece in map(raw.__getitem__, slices)]
    except UnicodeDecodeError:
        raise StateFormatError("stream_ids.bytes: a stream id is not valid UTF-8") from None


def checked_ids(tensors: dict[str, np.ndarray], batch_size: int) -> list[str]:
    """The ids of a whole index, or `StateFormatError` for any inconsistency: offsets, UTF-8,
    uniqueness, hashes and buckets (a lookup by id trusts them to find rows)."""
    data, offsets = tensors["stream_ids.bytes"], tensors["stream_ids.offsets"]
    index, buckets = tensors["stream_ids.index"], tensors["stream_ids.buckets"]
    if offsets.shape != (batch_size + 1,) or index.shape != (batch_size, 2):
        raise StateFormatError(f"stream_ids: offsets {list(offsets.shape)} and index {list(index.shape)} do not "
                               f"fit batch_size {batch_size}")
    if offsets[0] != 0 or offsets[-1] != data.size or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise StateFormatError("stream_ids.offsets: expected a non-decreasing sequence from 0 to the size of "
                               "stream_ids.bytes")
    ids = decode(data, offsets)
    if len(set(ids)) != len(ids):
        raise StateFormatError("stream_ids: the ids are not unique")
    expected = build(ids)
    if buckets.shape != expected["stream_ids.buckets"].shape:
        raise StateFormatError(f"stream_ids.buckets: expected shape {list(expected['stream_ids.buckets'].shape)} "
                               f"for {batch_size} ids, found {list(buckets.shape)}")
    problems = [f"{name}: does not index stream_ids.bytes (hashes, order or bounds differ)"
                for name in ("stream_ids.index", "stream_ids.buckets")
                if not np.array_equal(tensors[name], expected[name])]
    if problems:
        raise StateFormatError(problems)
    return ids
