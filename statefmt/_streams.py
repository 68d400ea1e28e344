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

import itertools
from collections.abc import Sequence

import numpy as np

from . import _xxh3
from .errors import StateFormatError

ENTRIES_PER_BUCKET = 8
NEWLINE = 10
SEPARATORS = (NEWLINE, 0, *range(1, 10), *range(11, 128))  # ASCII: never inside a UTF-8 sequence
U64 = np.uint64


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
    """The four tensors for these ids (unique, in row order): a handful of numpy passes, no per-id Python."""
    data, offsets = pack(ids)
    hashes = _xxh3.hashes(data, offsets)
    order = sorted_rows(hashes)
    index = np.empty((hashes.size, 2), np.uint64)
    index[:, 0], index[:, 1] = hashes[order], order
    return {"stream_ids.bytes": data, "stream_ids.offsets": offsets, "stream_ids.index": index,
            "stream_ids.buckets": bucket_bounds(index[:, 0], bucket_bits(hashes.size))}


def pack(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The ids' UTF-8 bytes back to back, and their offsets: one join, one encode and one scan for the
    newlines between them, unless an id holds a newline itself."""
    try:
        joined = np.frombuffer("\n".join(ids).encode(), np.uint8)
    except UnicodeEncodeError:
        encode(ids)  # names the row
        raise
    offsets = np.empty(len(ids) + 1, np.uint64)
    offsets[0] = 0
    is_break = joined == NEWLINE
    breaks = np.flatnonzero(is_break)
    if breaks.size == max(0, len(ids) - 1):
        data = joined[~is_break]
        offsets[1:-1] = breaks - np.arange(breaks.size)
        offsets[-1] = data.size
        return data, offsets
    encoded = encode(ids)
    np.cumsum(np.fromiter(map(len, encoded), np.uint64, len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8), offsets


def sorted_rows(hashes: np.ndarray) -> np.ndarray:
    """Rows ordered by (hash, row), as the index holds them. One sort of plain uint64 keys, each a hash with
    its low bits replaced by the row (faster than an argsort), then the rare rows whose hashes agree in the
    remaining high bits put in order among themselves."""
    shift = U64(max(1, (hashes.size - 1).bit_length()))
    low = U64((1 << int(shift)) - 1)
    keys = np.sort((hashes & ~low) | np.arange(hashes.size, dtype=np.uint64))
    rows: np.ndarray = keys & low
    high = keys >> shift
    tied = np.flatnonzero(high[1:] == high[:-1])
    if tied.size:
        places = np.union1d(tied, tied + 1)  # runs of equal high bits, each contiguous
        group = rows[places]
        rows[places] = group[np.lexsort((group, hashes[group], high[places]))]
    return rows


def bucket_bounds(sorted_hashes: np.ndarray, bits: int) -> np.ndarray:
    """`buckets`: entry b is the number of (sorted) hashes whose bucket is below b."""
    counts = np.bincount(np.asarray(bucket_of(sorted_hashes, bits)).astype(np.intp), minlength=2**bits)
    bounds = np.zeros(2**bits + 1, np.uint64)
    np.cumsum(counts, out=bounds[1:])
    return bounds


def decode(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The ids between consecutive `offsets` of `data` (checked): an ASCII byte that no id holds goes
    between them, and one decode and one split make the strings, at C speed."""
    count = offsets.size - 1
    separator = next((byte for byte in SEPARATORS if not np.any(data == byte)), None)
    try:
        if count < 2 or separator is None:  # none to split, or every candidate occurs: one by one
            raw = data.tobytes()
            return [raw[start:stop].decode() for start, stop in itertools.pairwise(offsets.tolist())]
        text = _joined(data, offsets, separator).tobytes().decode()
    except UnicodeDecodeError:  # the separator is ASCII: the whole decodes if and only if every id does
        raise StateFormatError("stream_ids.bytes: a stream id is not valid UTF-8") from None
    return text.split(chr(separator))


def _joined(data: np.ndarray, offsets: np.ndarray, separator: int) -> np.ndarray:
    """`data` with `separator` between consecutive ids: one masked copy (np.insert took 9x as long: it sorts
    the places)."""
    places = offsets[1:-1].astype(np.intp) + np.arange(offsets.size - 2)
    joined = np.empty(data.size + places.size, np.uint8)
    kept = np.ones(joined.size, bool)
    kept[places] = False
    joined[kept] = data
    joined[places] = separator
    return joined


def checked_ids(tensors: dict[str, np.ndarray], batch_size: int) -> list[str]:
    """The ids of a whole index, or `StateFormatError` for any inconsistency: offsets, UTF-8,
    uniqueness, hashes and buckets (a lookup by id trusts them to find rows). Linear: a sound
    index is checked entry by entry against the ids' hashes, never sorted again."""
    data, offsets = tensors["stream_ids.bytes"], tensors["stream_ids.offsets"]
    index, buckets = tensors["stream_ids.index"], tensors["stream_ids.buckets"]
    if offsets.shape != (batch_size + 1,) or index.shape != (batch_size, 2):
        raise StateFormatError(f"stream_ids: offsets {list(offsets.shape)} and index {list(index.shape)} do not "
                               f"fit batch_size {batch_size}")
    if offsets[0] != 0 or offsets[-1] != data.size or np.any(offsets[1:] < offsets[:-1]):
        raise StateFormatError("stream_ids.offsets: expected a non-decreasing sequence from 0 to the size of "
                               "stream_ids.bytes")
    ids = decode(data, offsets)
    hashes = _xxh3.hashes(data, offsets)
    sound = _indexes(index, hashes)
    if _repeats(ids, index if sound else None):
        raise StateFormatError("stream_ids: the ids are not unique")
    bits = bucket_bits(batch_size)
    if buckets.shape != (2**bits + 1,):
        raise StateFormatError(f"stream_ids.buckets: expected shape {[2**bits + 1]} for {batch_size} ids, found "
                               f"{list(buckets.shape)}")
    expected = bucket_bounds(index[:, 0] if sound else np.sort(hashes), bits)
    problems = [f"{name}: does not index stream_ids.bytes (hashes, order or bounds differ)"
                for name, wrong in (("stream_ids.index", not sound),
                                    ("stream_ids.buckets", not np.array_equal(buckets, expected))) if wrong]
    if problems:
        raise StateFormatError(problems)
    return ids


def _indexes(index: np.ndarray, hashes: np.ndarray) -> bool:
    """Whether `index` is exactly the (hash, row) pairs of these hashes, sorted: pairs strictly increasing,
    each row in range and holding its hash (so each row appears once)."""
    hs, rows = index[:, 0], index[:, 1]
    if not rows.size:
        return True
    if int(rows.max()) >= hashes.size or not np.array_equal(hs, hashes[rows]):
        return False
    return bool(np.all((hs[1:] > hs[:-1]) | ((hs[1:] == hs[:-1]) & (rows[1:] > rows[:-1]))))


def _repeats(ids: Sequence[str], index: np.ndarray | None) -> bool:
    """Whether an id repeats. Equal ids have equal hashes: with a sound index only rows whose hashes
    tie need comparing."""
    if index is None:
        return len(set(ids)) != len(ids)
    tied = np.flatnonzero(index[1:, 0] == index[:-1, 0])
    rows = index[np.union1d(tied, tied + 1), 1].tolist()
    return len({ids[row] for row in rows}) != len(rows)
