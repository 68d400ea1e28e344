"""The stream index in bulk: numpy's XXH3 equals xxhash's, and the vectorised packing, sorting and decoding
agree with the plain per-id definitions of the spec, on the ids that take their slow paths too."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from statefmt import _streams, _xxh3
from statefmt.errors import StateFormatError


def packed(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(items) + 1, np.uint64)
    np.cumsum([len(item) for item in items], out=offsets[1:])
    return np.frombuffer(b"".join(items), np.uint8), offsets


def test_numpy_xxh3_is_xxhash_bit_for_bit_at_every_length():
    rng = np.random.default_rng(7)
    items = [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for length in range(301) for _ in range(4)]
    items += [b"", b"a", b"\x00" * 8, b"\xff" * 16]
    order = rng.permutation(len(items))  # lengths mixed within a chunk
    items = [items[i] for i in order]
    assert _xxh3.hashes(*packed(items)).tolist() == [xxhash.xxh3_64_intdigest(item) for item in items]


def test_numpy_xxh3_of_one_short_id_reads_nothing_past_it():
    for item in (b"", b"a", b"abc", b"abcd"):
        assert _xxh3.hashes(*packed([item])).tolist() == [xxhash.xxh3_64_intdigest(item)]


def spec_index(ids: list[str]) -> tuple[list[list[int]], list[int]]:
    """The index and buckets exactly as the spec defines them, one id at a time."""
    hashes = [xxhash.xxh3_64_intdigest(text.encode()) for text in ids]
    entries = sorted((h, row) for row, h in enumerate(hashes))
    bits = _streams.bucket_bits(len(ids))
    bucket = [(h >> (64 - bits)) if bits else 0 for h, _ in entries]
    return [list(entry) for entry in entries], [sum(b < k for b in bucket) for k in range(2**bits + 1)]


@pytest.mark.parametrize("ids", [
    [], [""], ["a\nb"], ["", "x"], ["a\nb", "c", "\n"], ["é🧠", "日本", "x" * 200, ""],
    [f"sensor-{i:05d}" for i in range(1000)],
    [chr(c) for c in range(128)] + ["é"],  # every ASCII byte occurs: no separator is free
])
def test_build_and_checked_ids_agree_with_the_spec(ids):
    tensors = _streams.build(ids)
    index, buckets = spec_index(ids)
    assert tensors["stream_ids.index"].tolist() == (index or [])
    assert tensors["stream_ids.buckets"].tolist() == buckets
    assert bytes(tensors["stream_ids.bytes"]) == "".join(ids).encode()
    assert _streams.checked_ids(tensors, len(ids)) == ids


def test_rows_whose_hashes_share_their_high_bits_are_ordered_by_the_whole_hash():
    rows = np.arange(64, dtype=np.uint64)
    hashes = (np.uint64(0xABCDEF) << np.uint64(40)) | (np.uint64(63) - rows)  # high bits equal, low ones falling
    hashes[10] = hashes[11]  # and one exact tie: then by row
    order = _streams.sorted_rows(hashes)
    assert [(int(hashes[r]), int(r)) for r in order] == sorted((int(h), r) for r, h in enumerate(hashes.tolist()))


def test_an_index_out_of_order_or_with_repeated_ids_is_refused():
    tensors = _streams.build(["a", "b", "c"])
    swapped = dict(tensors, **{"stream_ids.index": tensors["stream_ids.index"][::-1].copy()})
    with pytest.raises(StateFormatError, match=r"stream_ids\.index"):
        _streams.checked_ids(swapped, 3)
    data, offsets = packed([b"a", b"a", b"c"])
    twice = dict(tensors, **{"stream_ids.bytes": data, "stream_ids.offsets": offsets})
    with pytest.raises(StateFormatError, match="not unique"):
        _streams.checked_ids(twice, 3)


def test_repeated_ids_under_a_sound_index_are_refused():
    with pytest.raises(StateFormatError, match="not unique"):
        _streams.checked_ids(_streams.build(["a", "b", "a"]), 3)
