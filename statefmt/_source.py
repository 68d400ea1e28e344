"""One byte-range source for every reader: a local file (pread) or an fsspec URL (range requests).

The reader asks for byte ranges and never knows which source serves them, as in zarr's
store abstraction. A local file is opened once, and header and data are read through that
one descriptor, so a writer renaming a new file over the path mid-read cannot mix two files.
A URL is read with explicit range requests (`cat_ranges`), never downloaded whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from . import _files
from .errors import StateFormatError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
HTTP_TIMEOUT = 60.0  # seconds an http(s) server may stay silent; storage_options={"client_kwargs": ...} overrides
READ_BYTES = 8 << 20  # one range request at most: keeps memory per request bounded on huge tensors


def is_url(target: str | os.PathLike[str] | bytes) -> bool:
    return isinstance(target, str) and bool(_URL.match(target)) and not target.startswith("file://")


def display(target: str | os.PathLike[str] | bytes) -> str:
    """The name errors use for a path or URL (bytes paths decoded as the file system would)."""
    if isinstance(target, bytes):
        return os.fsdecode(target)
    return os.fspath(target)


class Source(Protocol):
    name: str
    size: int

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]: ...

    def read_into(self, start: int, buffer: np.ndarray) -> None: ...

    def close(self) -> None: ...


class LocalSource:
    """A regular local file, read with pread through one descriptor."""

    def __init__(self, path: str | os.PathLike[str] | bytes):
        self.name = display(path)
        self._file = _files.open_regular(path)
        self._fd = self._file.fileno()
        self.size = os.fstat(self._fd).st_size

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        for start, stop in ranges:
            data = os.pread(self._fd, stop - start, start)
            if len(data) != stop - start:
                raise _truncated(self.name, stop, start + len(data))
            out.append(data)
        return out

    def read_into(self, start: int, buffer: np.ndarray) -> None:
        view = memoryview(buffer.reshape(-1).view(np.uint8).data)
        done = 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], start + done)
            if not count:
                raise _truncated(self.name, start + len(view), start + done)
            done += count

    def close(self) -> None:
        self._file.close()


class FsspecSource:
    """An object behind an fsspec URL (s3://, gs://, memory://, http(s)://), read by range requests."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.name = url
        try:
            import fsspec
        except ImportError:
            raise ImportError('reading a URL needs fsspec: pip install "statefmt[remote]" (and s3fs for s3://, '
                              "gcsfs for gs://)") from None
        options = dict(storage_options or {})
        if url.startswith(("http://", "https://")) and "client_kwargs" not in options:
            import aiohttp  # fsspec's HTTP client: without a timeout, a server that never answers hangs the read

            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(sock_connect=HTTP_TIMEOUT,
                                                                         sock_read=HTTP_TIMEOUT)}
        try:
            self._fs, self._path = fsspec.core.url_to_fs(url, **options)
            info = self._fs.info(self._path)
        except FileNotFoundError:
            raise StateFormatError("no such object", source=url) from None
        except (OSError, ValueError) as error:
            raise StateFormatError(f"cannot open: {type(error).__name__}: {error}", source=url) from None
        if info.get("type") not in ("file", None) or info.get("size") is None:
            raise StateFormatError(f"is a {info.get('type')}, not a file", source=url)
        self.size = int(info["size"])
        self.etag = info.get("ETag") or info.get("etag")

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if not ranges:
            return []
        try:
            out = self._fs.cat_ranges([self._path] * len(ranges), [r[0] for r in ranges], [r[1] for r in ranges],
                                      on_error="raise")
        except (OSError, ValueError) as error:
            raise StateFormatError(f"range read failed: {type(error).__name__}: {error}", source=self.name) from None
        for (start, stop), data in zip(ranges, out):
            if len(data) != stop - start:
                raise _truncated(self.name, stop, start + len(data))
        return list(out)

    def read_into(self, start: int, buffer: np.ndarray) -> None:
        view = buffer.reshape(-1).view(np.uint8)
        for first in range(0, view.size, READ_BYTES):
            stop = min(view.size, first + READ_BYTES)
            (data,) = self.read_ranges([(start + first, start + stop)])
            view[first:stop] = np.frombuffer(data, np.uint8)

    def close(self) -> None:
        pass


def local_path(target: str | os.PathLike[str] | bytes) -> str | os.PathLike[str] | bytes:
    """A `file://` URL as the path it names (empty or `localhost` host only); anything else unchanged."""
    if isinstance(target, str) and target.startswith("file://"):
        host, _, path = target[len("file://"):].partition("/")
        if host not in ("", "localhost"):
            raise StateFormatError(f"a file:// URL names a file on this machine: host {host!r} is not local",
                                   source=target)
        return "/" + path
    return target


def open_source(target: str | os.PathLike[str] | bytes, storage_options: Mapping[str, Any] | None = None) -> Source:
    """The byte source for a local path or a URL."""
    target = local_path(target)
    if is_url(target):
        assert isinstance(target, str)
        return FsspecSource(target, storage_options)
    if storage_options:
        raise StateFormatError("storage_options apply to URLs only", source=display(target))
    return LocalSource(target)


def _truncated(name: str, expected: int, found: int) -> StateFormatError:
    return StateFormatError(f"the file is cut short: a read needs {expected} bytes, the file has {found}",
                            source=name)
