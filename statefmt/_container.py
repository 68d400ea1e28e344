"""The safetensors container: a streaming, atomic writer and a checking, sliced reader.

Writing is done here rather than with `safetensors.numpy.save_file` so that the
write goes to a temporary file that is fsynced and renamed into place (a crash
never leaves a torn file under the target name), and so that each array's bytes
are hashed and checked for NaN/Inf with no copy of the payload, on one core while
another writes them. Reading uses safetensors' own `safe_open`, whose header
checks are written in Rust and are fuzzed upstream; the tensor bytes are then read
with `readinto` in cache-sized chunks and checked on the way (see `Reader.scan`).
Figures and what bounds each step: `python -m benchmarks`.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import xxhash
from safetensors import SafetensorError, safe_open

from . import _files
from ._dtypes import SAFETENSORS_CODES, dtype_name, numpy_dtype
from .errors import StateFormatError

CHECKSUM_PREFIX = "xxh3_64:"
CHECKSUM_PLACEHOLDER = CHECKSUM_PREFIX + "0" * 16  # as long as any checksum: the header keeps its length
CHUNK_BYTES = 1 << 20  # fits the L2 cache: a chunk is hashed and checked while it is still there
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap
_DTYPE_NAMES = {code: name for name, code in SAFETENSORS_CODES.items()}


def checksum(array: np.ndarray) -> str:
    """The checksum stored for a tensor: xxh3-64 of its little-endian bytes."""
    return scan(array)[0]


def text_checksum(text: str) -> str:
    """The checksum of a metadata document: xxh3-64 of its UTF-8 bytes."""
    return CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(text.encode())


def scan(array: np.ndarray) -> tuple[str, int]:
    """The checksum of an array (xxh3-64 of its little-endian bytes) and its number of
    non-finite values, in one pass.

    One pass over cache-sized chunks reads the payload from memory once instead of
    twice, and needs no array-sized temporary (`np.isfinite(array)` makes one).
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    step = _chunk_items(flat.dtype)
    digest, nonfinite = xxhash.xxh3_64(), 0
    for start in range(0, flat.size, step):
        part = flat[start:start + step]
        digest.update(part.view(np.uint8))
        nonfinite += count_nonfinite(part)
    return CHECKSUM_PREFIX + digest.hexdigest(), nonfinite


def _bytes_of(array: np.ndarray) -> np.ndarray:
    """The array's bytes as flat uint8 (bfloat16 has no buffer protocol of its own)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _chunk_items(dtype: np.dtype) -> int:
    return max(1, CHUNK_BYTES // dtype.itemsize)


def count_nonfinite(values: np.ndarray) -> int:
    with np.errstate(invalid="ignore"):  # ml_dtypes' bfloat16 isfinite warns on some NaN patterns
        finite = np.isfinite(values)
    return 0 if finite.all() else int(values.size - np.count_nonzero(finite))


def write(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]],
          metadata: dict[str, str] | Callable[[list[tuple[str, int]] | None], dict[str, str]], *,
          durable: bool = True) -> None:
    """Write a safetensors file atomically: temporary file, (fsync), rename.

    Tensors are laid out in the order given, so the same input gives the same bytes.
    `metadata` may be a function of the tensors' `scan` results, in order (and of None for
    a placeholder as long as the result, e.g. with CHECKSUM_PLACEHOLDER): the payload is
    then scanned while a thread writes it, and the header goes in last. The function may
    raise (a NaN found) to abandon the file.
    """
    tensors = [(key, np.ascontiguousarray(array)) for key, array in tensors]
    describe = metadata if callable(metadata) else lambda scans: metadata
    text = _header(tensors, describe(None))

    def fill(fd: int) -> None:
        writer = _PayloadWriter(fd, 8 + len(text), [array for _, array in tensors])
        try:
            scans = [scan(array) for _, array in tensors]
        finally:
            writer.join()
        final = _header(tensors, describe(scans))
        if len(final) != len(text):
            raise StateFormatError("internal error: the header changed length once the checksums were known")
        _pwrite_all(fd, struct.pack("<Q", len(final)) + final, 0)

    _files.replace_atomically(path, fill, size=8 + len(text) + sum(a.nbytes for _, a in tensors), durable=durable)


def _header(tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, array in tensors:
        header[key] = {
            "dtype": SAFETENSORS_CODES[dtype_name(array.dtype)],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)  # pad so tensor data starts 8-byte aligned


class _PayloadWriter(threading.Thread):
    """Writes the arrays' bytes from `offset` on, while the caller scans them.

    os.pwrite, xxhash and numpy all release the GIL, so on two cores a save costs about
    as much as the write alone. The thread writes through its own duplicate of `fd`:
    however the caller leaves (an error, Ctrl-C), closing `fd` can never send the rest of
    the payload into another file that reused the number.
    """

    def __init__(self, fd: int, offset: int, arrays: list[np.ndarray]):
        super().__init__(name="statefmt-writer")
        self._fd, self._offset, self._arrays = os.dup(fd), offset, arrays
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            position = self._offset
            for array in self._arrays:
                view = memoryview(_bytes_of(array))
                while view:
                    written = os.pwrite(self._fd, view, position)
                    view, position = view[written:], position + written
        except BaseException as error:
            self._error = error
        finally:
            os.close(self._fd)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the payload, and raise what stopped it (a full disk, say)."""
        super().join(timeout)
        if self._error is not None:
            raise self._error


def _pwrite_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


class Reader:
    """An open safetensors file: its metadata, the dtype code and shape of each tensor, and reads."""

    def __init__(self, handle, source: str):
        self._handle = handle
        self.source = source
        self._file = None  # our own handle on the bytes, opened by the first whole-tensor read
        self._starts: dict[str, int] = {}
        self._map = None
        self.metadata: dict[str, str] = handle.metadata() or {}
        self.tensors: dict[str, tuple[str, list[int]]] = {}
        for key in handle.keys():
            part = handle.get_slice(key)
            self.tensors[key] = (part.get_dtype(), list(part.get_shape()))
        if any(code == "BF16" for code, _ in self.tensors.values()):
            numpy_dtype("bfloat16")  # safetensors finds numpy's bfloat16 only once ml_dtypes is imported

    def read(self, key: str) -> np.ndarray:
        return self.scan(key)[0]

    def scan(self, key: str, *, keep: bool = True) -> tuple[np.ndarray | None, str, int]:
        """The tensor (None unless `keep`), its checksum and its number of non-finite values.

        This is the fast path for whole tensors, as fast as a copy from the page cache allows.
        `safe_open(...).get_tensor` copies from a memory map: every page faults twice (file and
        copy), the mapped file counts against RSS as well as the copy, and checking afterwards
        reads the payload again. Here each cache-sized chunk is read with `readinto` straight
        into the result and hashed and checked while it is still in cache. With `keep=False`
        the chunks go through one small buffer: `validate` checks every byte, holding none.
        """
        file, start = self._open_file(), self._starts[key]
        code, shape = self.tensors[key]
        dtype = numpy_dtype(_DTYPE_NAMES.get(code, code))
        size = int(np.prod(shape, dtype=np.int64))
        step = _chunk_items(dtype)
        array = np.empty(size, dtype) if keep else None
        buffer = None if keep else np.empty(min(size, step), dtype)
        digest, nonfinite = xxhash.xxh3_64(), 0
        file.seek(start)
        for first in range(0, size, step):
            count = min(step, size - first)
            part = array[first:first + count] if keep else buffer[:count]
            self._read_exactly(file, part.view(np.uint8))
            digest.update(part.view(np.uint8))
            nonfinite += count_nonfinite(part)
        tensor = array.reshape(shape) if keep else None
        return tensor, CHECKSUM_PREFIX + digest.hexdigest(), nonfinite

    def view(self, key: str) -> np.ndarray:
        """A read-only view of the tensor in a memory map of the file: no copy, no read until used."""
        if self._map is None:
            self._map = mmap.mmap(self._open_file().fileno(), 0, access=mmap.ACCESS_READ)
        code, shape = self.tensors[key]
        dtype = numpy_dtype(_DTYPE_NAMES.get(code, code))
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self._map, dtype, count, self._starts[key]).reshape(shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # a map made by `view` lives on with the arrays that use it

    def _open_file(self):
        """Open the file again, for its bytes: safe_open tells no offsets and reads only by mmap.

        The header is read again here and must equal what safe_open checked, so a file that was
        replaced between the two opens is refused instead of being read half from each.
        """
        if self._file is not None:
            return self._file
        self._file = open(self.source, "rb", buffering=0)
        try:
            (length,) = struct.unpack("<Q", self._file.read(8))
            header = json.loads(self._file.read(length)) if length <= _MAX_HEADER_BYTES else {}
            metadata = header.pop("__metadata__", None) or {}
            layout = {key: (entry["dtype"], entry["shape"]) for key, entry in header.items()}
            starts = {key: 8 + length + entry["data_offsets"][0] for key, entry in header.items()}
            same = metadata == self.metadata and layout == self.tensors and min(starts.values(), default=8) >= 8
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error):
            same = False
        if not same:
            raise StateFormatError("the file changed while it was being opened; read it again", source=self.source)
        self._starts = starts
        return self._file

    def _read_exactly(self, file, view: np.ndarray) -> None:
        done = 0
        while done < view.nbytes:
            count = file.readinto(memoryview(view)[done:])
            if not count:
                raise StateFormatError("the file ends before its last tensor does; it is truncated",
                                       source=self.source)
            done += count

    def read_rows(self, key: str, rows: list[int]) -> np.ndarray:
        """Rows of axis 1, reading only their bytes: one slice per run of consecutive rows."""
        part = self._handle.get_slice(key)
        if part.get_shape()[1] == 0:  # safetensors refuses even an empty slice of an empty axis
            return self.read(key)
        pieces = [part[:, start:stop] for start, stop in _runs(rows)] or [part[:, 0:0]]
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces, axis=1)


@contextmanager
def open_reader(path: str | os.PathLike) -> Iterator[Reader]:
    source = os.fspath(path)
    if os.path.isdir(source):
        raise StateFormatError("is a directory, not a state file", source=source)
    try:
        handle = safe_open(source, framework="numpy")
    except SafetensorError as error:
        raise StateFormatError(f"not a valid safetensors file ({error})", source=source) from None
    with handle:
        reader = Reader(handle, source)
        try:
            yield reader
        except SafetensorError as error:
            raise StateFormatError(f"unreadable tensor data ({error})", source=source) from None
        finally:
            reader.close()


def _runs(rows: list[int]) -> Iterator[tuple[int, int]]:
    if not rows:
        return
    start = previous = rows[0]
    for row in rows[1:]:
        if row != previous + 1:
            yield start, previous + 1
            start = row
        previous = row
    yield start, previous + 1
