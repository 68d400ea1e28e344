"""The safetensors container: a streaming, atomic writer and a sliced reader.

Writing is done here rather than with `safetensors.numpy.save_file` because that
function first copies every tensor into one bytes object; writing each array's
buffer straight to the file needs no extra copy of the payload, and lets the
write go to a temporary file that is fsynced and renamed into place, so a crash
never leaves a torn file under the target name. Reading uses safetensors'
own `safe_open`, whose header checks are written in Rust and are fuzzed upstream.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import xxhash
from safetensors import SafetensorError, safe_open

from ._dtypes import SAFETENSORS_CODES, dtype_name, numpy_dtype
from .errors import StateFormatError

CHECKSUM_PREFIX = "xxh3_64:"
_TEMP_SUFFIX = ".statefmt-tmp"


def raw_bytes(array: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous copy-free array (bfloat16 has no buffer protocol)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def checksum(array: np.ndarray) -> str:
    """The checksum stored for a tensor: xxh3-64 of its little-endian bytes, about 15 GB/s."""
    return CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(raw_bytes(array))


def write(path: str | os.PathLike, tensors: Iterable[tuple[str, np.ndarray]], metadata: dict[str, str], *, durable: bool = True) -> None:
    """Write a safetensors file atomically: temporary file, (fsync), rename.

    Tensors are laid out in the order given, so the same input gives the same bytes.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    buffers = []
    offset = 0
    for key, array in tensors:
        data = raw_bytes(array)
        header[key] = {
            "dtype": SAFETENSORS_CODES[dtype_name(array.dtype)],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        buffers.append(data)
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # pad so tensor data starts 8-byte aligned

    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666  # umask applies to new files
    temporary = os.path.join(directory, f".{base}.{os.getpid()}-{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with open(fd, "wb", buffering=0, closefd=True) as file:
            _write_all(file, struct.pack("<Q", len(text)))
            _write_all(file, text)
            for data in buffers:
                _write_all(file, data)
            if durable:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    if durable:
        _fsync_directory(directory)
    _remove_stale_temporaries(directory, base)


def _write_all(file, data) -> None:
    view = memoryview(data)
    while view:
        view = view[file.write(view):]


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporaries left by writers of `base` that were killed mid-save.

    A temporary whose writer is still alive belongs to a concurrent save and is kept.
    """
    prefix = f".{base}."
    for name in os.listdir(directory):
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        pid = name[len(prefix):-len(_TEMP_SUFFIX)].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            _unlink_quietly(os.path.join(directory, name))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Reader:
    """An open safetensors file: its metadata, the dtype code and shape of each tensor, and reads."""

    def __init__(self, handle, source: str):
        self._handle = handle
        self.source = source
        self.metadata: dict[str, str] = handle.metadata() or {}
        self.tensors: dict[str, tuple[str, list[int]]] = {}
        for key in handle.keys():
            part = handle.get_slice(key)
            self.tensors[key] = (part.get_dtype(), part.get_shape())
        if any(code == "BF16" for code, _ in self.tensors.values()):
            numpy_dtype("bfloat16")  # safetensors finds numpy's bfloat16 only once ml_dtypes is imported

    def read(self, key: str) -> np.ndarray:
        return self._handle.get_tensor(key)

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
        try:
            yield Reader(handle, source)
        except SafetensorError as error:
            raise StateFormatError(f"unreadable tensor data ({error})", source=source) from None


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
