"""The safetensors container, with block checksums: a checking header parser, a verifying
range reader, and a streaming atomic writer.

Every tensor's bytes are cut into blocks of `block_bytes`; the `checksums` tensor holds the
xxh3-64 of each block, and the document holds the xxh3-64 of each block of `checksums`. So a
reader verifies any byte range it hands out by reading the blocks around it and one block of
`checksums`: a row of a 10 GB file, or one read over the network, is checked without reading
the whole tensor.

Layout follows the safetensors library's own writer (tensors ordered by dtype, then name; the
header padded with spaces to 8 bytes), so any language's safetensors binding writes the same
bytes from the same tensors and `__metadata__`.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from . import _files
from ._document import CHECKSUM_PREFIX, CHECKSUMS_TENSOR, fail, strict_json
from ._dtypes import CODES, ITEMSIZE, LAYOUT_ORDER, NAMES, code_dtype
from ._files import _reserve as files_reserve
from ._source import Source, display, is_url, local_path
from .errors import StateError, StateFormatError
from .limits import MAX_HEADER_BYTES

FIRST_READ = 65_536  # the first request reads the header of any ordinary file whole
THREADED = True  # a writer thread beside the hashing one; `make bench` measures it against writing inline
CHUNK_BLOCKS = 16  # blocks per write or read chunk: 1 MiB at 64 KiB blocks, still in L2 while checked


@dataclass(frozen=True)
class TensorInfo:
    code: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    stop: int

    @property
    def dtype(self) -> np.dtype:
        return code_dtype(self.code)

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


# 16-bit floats: NaN and Inf are the values whose exponent bits are all ones. Their bits are compared
# directly: ml_dtypes' isfinite on bfloat16 is 15x slower (2.3x safetensors on a hybrid's bf16 session save).
_EXPONENT_BITS = {"bfloat16": 0x7F80, "float16": 0x7C00}


def count_nonfinite(values: np.ndarray) -> int:
    if values.dtype.kind not in "fV" and values.dtype.name != "bfloat16":
        return 0
    if values.dtype.name in _EXPONENT_BITS:
        magnitude = values.view(np.uint16) & np.uint16(0x7FFF)
        mask = np.uint16(_EXPONENT_BITS[values.dtype.name])
        return 0 if magnitude.size == 0 or magnitude.max() < mask else int(np.count_nonzero(magnitude >= mask))
    with np.errstate(invalid="ignore"):  # ml_dtypes' bfloat16 isfinite warns on some NaN patterns
        finite = np.isfinite(values)
    return 0 if finite.all() else int(values.size - np.count_nonzero(finite))


def block_hash(data: Any) -> int:
    return xxhash.xxh3_64_intdigest(data)


def hex_digest(value: int) -> str:
    return f"{CHECKSUM_PREFIX}{value:016x}"


def block_count(nbytes: int, block_bytes: int) -> int:
    return -(-nbytes // block_bytes)


# --- reading ------------------------------------------------------------------------------------------------------

class Container:
    """An open safetensors file: its `__metadata__` and tensor table, checked (spec step 1)."""

    def __init__(self, source: Source):
        self.source = source
        name = source.name
        if source.size < 8:
            raise fail(1, f"not a safetensors file: {source.size} bytes, shorter than the 8-byte header length",
                       name)
        (first,) = source.read_ranges([(0, min(source.size, FIRST_READ))])
        (length,) = struct.unpack("<Q", first[:8])
        if length > MAX_HEADER_BYTES:
            raise fail(1, f"not a safetensors file: header length {length} exceeds the {MAX_HEADER_BYTES}-byte cap",
                       name)
        if 8 + length > source.size:
            raise fail(1, f"the file is cut short: its header needs {8 + length} bytes, the file has {source.size}",
                       name)
        header = first[8:8 + length]
        if len(header) < length:
            header += source.read_ranges([(len(first), 8 + length)])[0]
        try:
            parsed = strict_json(header)
        except StateFormatError as error:
            raise fail(1, f"not a safetensors file: its header is {error.problems[0]}", name) from None
        if not isinstance(parsed, dict):
            raise fail(1, "not a safetensors file: its header is not a JSON object", name)
        metadata = parsed.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise fail(1, "not a safetensors file: __metadata__ must map strings to strings", name)
        self.metadata: dict[str, str] = metadata
        self.data_start = 8 + length
        self.tensors: dict[str, TensorInfo] = {}
        spans = []
        for key, entry in parsed.items():
            info = _tensor_info(key, entry, self.data_start, name)
            self.tensors[key] = info
            spans.append((info.start, info.stop, key))
        position = self.data_start
        for start, stop, key in sorted(spans):
            if start != position:
                raise fail(1, f"tensor `{key}` starts at byte {start - self.data_start} of the data, expected "
                              f"{position - self.data_start}: the tensors must cover the data without holes or "
                              "overlaps", name)
            position = stop
        if position > source.size:
            raise fail(1, f"the file is cut short: its tensors need {position} bytes, the file has {source.size}",
                       name)
        if position < source.size:
            raise fail(1, f"{source.size - position} bytes follow the last tensor: not a safetensors file", name)


def _tensor_info(key: str, entry: Any, data_start: int, name: str) -> TensorInfo:
    if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
        raise fail(1, f"tensor `{key}`: expected an object with dtype, shape and data_offsets", name)
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in ITEMSIZE:
        raise fail(1, f"tensor `{key}`: dtype {code!r} is not one statefmt stores "
                      f"({', '.join(ITEMSIZE)})", name)
    if not (isinstance(shape, list) and all(type(n) is int and 0 <= n < 2**48 for n in shape) and len(shape) <= 8):
        raise fail(1, f"tensor `{key}`: shape must be a list of at most 8 non-negative integers", name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int and 0 <= n < 2**62
                                                                    for n in offsets)):
        raise fail(1, f"tensor `{key}`: data_offsets must be two non-negative integers", name)
    itemsize = ITEMSIZE[code]
    count = 1
    for n in shape:
        count *= n
    if offsets[1] - offsets[0] != count * itemsize:
        raise fail(1, f"tensor `{key}`: data_offsets span {offsets[1] - offsets[0]} bytes, its shape {shape} "
                      f"{NAMES[code]} needs {count * itemsize}", name)
    return TensorInfo(code, tuple(shape), data_start + offsets[0], data_start + offsets[1])


class BlockReader:
    """Verified reads of a 2.x file's tensors: every byte handed out is checked against its block's checksum.

    `order` is the tensors in checksum order (the document's); block checksums of tensor t start
    at the sum of the block counts of the tensors before it.
    """

    def __init__(self, container: Container, order: Sequence[str], block_bytes: int, checksum_blocks: Sequence[str]):
        self.container, self.block_bytes = container, block_bytes
        self.first_block: dict[str, int] = {}
        total = 0
        for key in order:
            self.first_block[key] = total
            total += block_count(container.tensors[key].nbytes, block_bytes)
        self.total_blocks = total
        self._digests = [int(text[len(CHECKSUM_PREFIX):], 16) for text in checksum_blocks]
        self._checksums: dict[int, np.ndarray] = {}  # verified blocks of the checksums tensor, by index
        info = container.tensors[CHECKSUMS_TENSOR]
        if len(self._digests) != block_count(info.nbytes, block_bytes):
            raise fail(8, f"checksum_blocks: expected {block_count(info.nbytes, block_bytes)} entries for a "
                          f"{info.nbytes}-byte checksums tensor, found {len(self._digests)}", container.source.name)

    def checksums_all(self) -> np.ndarray:
        """The whole checksums tensor, verified."""
        info = self.container.tensors[CHECKSUMS_TENSOR]
        array = np.empty(info.nbytes // 8, np.uint64)
        self.container.source.read_into(info.start, array)
        raw = array.view(np.uint8)
        for index in range(len(self._digests)):
            self._check_sums_block(index, raw[index * self.block_bytes:(index + 1) * self.block_bytes])
        return array.astype("<u8", copy=False)

    def _check_sums_block(self, index: int, raw: Any) -> None:
        """Block `index` of the `checksums` tensor against its checksum in the document."""
        if block_hash(raw) != self._digests[index]:
            raise fail(8, f"checksums: block {index} does not match its checksum in the metadata: the file is "
                          "corrupt", self.container.source.name)

    def _check_block(self, key: str, start: int, raw: Any, expected: int) -> None:
        """The bytes of tensor `key` from `start` against their block's checksum."""
        if block_hash(raw) != expected:
            raise fail(8, f"tensor `{key}`: bytes {start} to {start + len(raw)} do not match their checksum: the "
                          "file is corrupt", self.container.source.name)

    def read(self, requests: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """Byte ranges [start, stop) of tensors, each verified, in one round of range reads."""
        blocks: dict[tuple[str, int], None] = {}
        for key, start, stop in requests:
            for block in range(start // self.block_bytes, block_count(stop, self.block_bytes)):
                blocks[(key, block)] = None
        wanted = list(blocks)
        sums_needed = sorted({(self.first_block[key] + block) * 8 // self.block_bytes for key, block in wanted}
                             - set(self._checksums))
        ranges = [self._block_range(key, block) for key, block in wanted]
        info = self.container.tensors[CHECKSUMS_TENSOR]
        ranges += [(info.start + k * self.block_bytes, min(info.stop, info.start + (k + 1) * self.block_bytes))
                   for k in sums_needed]
        data = self.container.source.read_ranges(ranges)
        for k, raw in zip(sums_needed, data[len(wanted):]):
            self._check_sums_block(k, raw)
            self._checksums[k] = np.frombuffer(raw, "<u8")
        per_block = self.block_bytes // 8
        verified = {}
        for (key, block), raw in zip(wanted, data):
            index = self.first_block[key] + block
            expected = int(self._checksums[index // per_block][index % per_block])
            self._check_block(key, block * self.block_bytes, raw, expected)
            verified[(key, block)] = raw
        out = []
        for key, start, stop in requests:
            first = start // self.block_bytes
            joined = b"".join(verified[(key, b)] for b in range(first, block_count(stop, self.block_bytes)))
            base = first * self.block_bytes
            out.append(joined[start - base:stop - base])
        return out

    def _block_range(self, key: str, block: int) -> tuple[int, int]:
        info = self.container.tensors[key]
        start = info.start + block * self.block_bytes
        return start, min(info.stop, start + self.block_bytes)

    def read_tensor(self, key: str, checksums: np.ndarray) -> np.ndarray:
        """A whole tensor, each chunk verified while in cache."""
        info = self.container.tensors[key]
        flat = np.empty(info.nbytes // info.dtype.itemsize, info.dtype)
        raw = flat.view(np.uint8)
        for _ in self._verified_chunks(key, checksums, lambda offset, size: raw[offset:offset + size]):
            pass
        return flat.reshape(info.shape)

    def verify_tensor(self, key: str, checksums: np.ndarray) -> int:
        """Verify a whole tensor through one small buffer (validation holds nothing): its count of non-finite values."""
        info = self.container.tensors[key]
        scratch = np.empty(min(CHUNK_BLOCKS * self.block_bytes, info.nbytes), np.uint8)
        chunks = self._verified_chunks(key, checksums, lambda offset, size: scratch[:size])
        return sum(count_nonfinite(part.view(info.dtype)) for part in chunks)

    def _verified_chunks(self, key: str, checksums: np.ndarray,
                         buffer: Callable[[int, int], np.ndarray]) -> Iterator[np.ndarray]:
        """Tensor `key` read chunk by chunk into `buffer(offset, size)`, each chunk verified while in cache."""
        info = self.container.tensors[key]
        chunk, first = CHUNK_BLOCKS * self.block_bytes, self.first_block[key]
        for offset in range(0, info.nbytes, chunk):
            size = min(chunk, info.nbytes - offset)
            part = buffer(offset, size)
            self.container.source.read_into(info.start + offset, part)
            for start in range(0, size, self.block_bytes):
                index = first + (offset + start) // self.block_bytes
                self._check_block(key, offset + start, part[start:start + self.block_bytes], int(checksums[index]))
            yield part


# --- writing ------------------------------------------------------------------------------------------------------

def layout(tensors: Mapping[str, tuple[str, tuple[int, ...]]]) -> list[str]:
    """Tensor names in the order the safetensors library writes them: by dtype (8-byte ones first), then name."""
    return sorted(tensors, key=lambda key: (LAYOUT_ORDER[tensors[key][0]], key.encode()))


def header_bytes(tensors: Mapping[str, tuple[str, tuple[int, ...]]], metadata: Mapping[str, str]) -> bytes:
    import json

    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key in layout(tensors):
        code, shape = tensors[key]
        nbytes = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[code]
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)  # pad so tensor data starts 8-byte aligned, as safetensors does


Finish = Callable[[list[str], list[int]], Mapping[str, str]]


def write(target: str | os.PathLike[str] | bytes, tensors: Sequence[tuple[str, np.ndarray]], block_bytes: int,
          finish: Finish, *, durable: bool = True, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a statefmt container: `tensors` in checksum order, then the `checksums` tensor.

    `finish(checksum_blocks, nonfinite_counts)` returns the `__metadata__`; it is called once with
    placeholders (as long as the real digests) to size the header, and once with the real values,
    and may raise (a NaN found) to abandon the file. Each chunk is copied once, and the copy is
    hashed, checked and written, so an array changed by another thread during the save still
    gives a file whose checksums match its bytes. A local target is replaced atomically; a URL is
    uploaded in one PUT (or multipart upload) once the whole file exists locally.
    """
    target = local_path(target)
    target = os.fsdecode(target) if isinstance(target, bytes) else target
    arrays = [(key, np.ascontiguousarray(array)) for key, array in tensors]
    counts = [block_count(array.nbytes, block_bytes) for _, array in arrays]
    total_blocks = sum(counts)
    table = {key: (_code(array), tuple(array.shape)) for key, array in arrays}
    table[CHECKSUMS_TENSOR] = ("U64", (total_blocks,))
    placeholder = [hex_digest(0)] * block_count(total_blocks * 8, block_bytes)
    header = header_bytes(table, finish(placeholder, [0] * len(arrays)))
    if len(header) > MAX_HEADER_BYTES:
        raise StateFormatError(f"the header would be {len(header)} bytes, over the {MAX_HEADER_BYTES}-byte cap "
                               "readers enforce", source=display(target))
    offsets, position = {}, 8 + len(header)
    for key in layout(table):
        offsets[key] = position
        code, shape = table[key]
        position += int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[code]
    size = position

    def fill(fd: int) -> None:
        checksums = np.empty(total_blocks, "<u8")
        nonfinite = _write_payload(fd, arrays, offsets, block_bytes, checksums, THREADED)
        raw = checksums.view(np.uint8)
        digests = [hex_digest(block_hash(raw[i:i + block_bytes])) for i in range(0, raw.size, block_bytes)]
        final = header_bytes(table, finish(digests, nonfinite))
        if len(final) != len(header):
            raise StateFormatError("internal error: the header changed length once the checksums were known")
        _pwrite_all(fd, raw, offsets[CHECKSUMS_TENSOR])
        _pwrite_all(fd, struct.pack("<Q", len(final)) + final, 0)

    if not is_url(target):
        _files.replace_atomically(target, fill, size=size, durable=durable)
        return
    _upload(str(target), fill, size, storage_options)


def _code(array: np.ndarray) -> str:
    return CODES[array.dtype.name]


def _write_payload(fd: int, arrays: Sequence[tuple[str, np.ndarray]], offsets: Mapping[str, int], block_bytes: int,
                   checksums: np.ndarray, threaded: bool) -> list[int]:
    """Copy each chunk once, hash and check the copy, and write it (by a thread, while the next is copied)."""
    chunk = CHUNK_BLOCKS * block_bytes
    writer = _Writer(fd) if threaded else None
    nonfinite, index = [], 0
    try:
        if writer:
            writer.begin()
        for key, array in arrays:
            raw = array.reshape(-1).view(np.uint8)
            found = 0
            for offset in range(0, raw.size, chunk):
                size = min(chunk, raw.size - offset)
                buffer = writer.buffer(chunk) if writer else np.empty(chunk, np.uint8)
                part = buffer[:size]
                np.copyto(part, raw[offset:offset + size])
                for start in range(0, size, block_bytes):
                    checksums[index] = block_hash(part[start:start + block_bytes])
                    index += 1
                found += count_nonfinite(part.view(array.dtype))
                if writer:
                    writer.put(buffer, size, offsets[key] + offset)
                else:
                    _pwrite_all(fd, part, offsets[key] + offset)
            nonfinite.append(found)
    finally:
        if writer:
            writer.close()
    return nonfinite


class _Writer(threading.Thread):
    """Writes chunks handed to it while the caller copies and hashes the next: os.pwrite, xxhash and
    numpy release the GIL, so on two cores a save costs about as much as the write alone.

    It writes through its own duplicate of the descriptor: however the caller leaves (an error,
    Ctrl-C), closing the caller's descriptor never sends a chunk into another file that reused it.
    """

    BUFFERS = 4

    def __init__(self, fd: int):
        super().__init__(name="statefmt-writer", daemon=True)
        self._caller_fd, self._fd = fd, -1
        self._work: queue.Queue[tuple[np.ndarray, int, int] | None] = queue.Queue()
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        self._made = 0
        self._error: BaseException | None = None

    def begin(self) -> None:
        """Start writing; inside the caller's `try`, so that `close()` always runs after it."""
        self._fd = os.dup(self._caller_fd)
        self.start()

    def buffer(self, size: int) -> np.ndarray:
        self._raise()
        if self._made < self.BUFFERS:
            self._made += 1
            return np.empty(size, np.uint8)
        while True:
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                self._raise()
                if not self.is_alive():
                    raise StateFormatError("internal error: the writer thread stopped") from None

    def put(self, buffer: np.ndarray, size: int, position: int) -> None:
        self._work.put((buffer, size, position))

    def run(self) -> None:
        try:
            while (item := self._work.get()) is not None:
                buffer, size, position = item
                if self._error is None:
                    _pwrite_all(self._fd, buffer[:size], position)
                self._free.put(buffer)
        except BaseException as error:  # handed to the caller by close()
            self._error = error
            while self._work.get() is not None:
                pass
        finally:
            os.close(self._fd)

    def close(self) -> None:
        """Wait for every chunk, and raise what stopped the writes (a full disk, say). However `begin`
        ended (Ctrl-C while the thread started, say), no thread and no descriptor outlive this."""
        self._work.put(None)
        if self._started.wait(timeout=1.0):  # type: ignore[attr-defined]  # Thread's own start event  # launched, if only just: it closes its descriptor itself
            self.join()
        elif self._fd >= 0:
            os.close(self._fd)
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _pwrite_all(fd: int, data: Any, position: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _upload(url: str, fill: Callable[[int], None], size: int, storage_options: Mapping[str, Any] | None) -> None:
    """Build the file in an unnamed local temporary, then put it whole: an object appears complete or not at
    all, and a process killed meanwhile leaves nothing behind (the temporary has no name to leak under)."""
    import tempfile

    try:
        import fsspec
    except ImportError:
        raise ImportError('saving to a URL needs fsspec: pip install "statefmt[remote]"') from None
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    with tempfile.TemporaryFile(prefix="statefmt-upload-") as temporary:  # O_TMPFILE, or unlinked at once
        fd = temporary.fileno()
        files_reserve(fd, size)
        fill(fd)
        try:
            fs.put_file(f"/proc/self/fd/{fd}", path)  # a path to the unnamed file, for clients that want one
        except (OSError, ValueError) as error:
            if isinstance(error, StateError):
                raise
            raise StateFormatError(f"upload failed: {type(error).__name__}: {error}", source=url) from None
