"""One byte-range source for every reader: a local file (pread) or an fsspec URL (range requests).

The reader asks for byte ranges and never knows which source serves them, as in zarr's
store abstraction. A local file is opened once, and header and data are read through that
one descriptor, so a writer renaming a new file over the path mid-read cannot mix two files.
A URL is read with explicit range requests (`cat_ranges`), never downloaded whole.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from . import _files
from .errors import StateError, StateFormatError, StateUnreadableError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
HTTP_TIMEOUT = 60.0  # seconds an http(s) server may stay silent
READ_DEADLINE = 600.0  # seconds one http(s) source may take in all: a server dripping a byte at a time ends too
WHOLE_READ_BYTES = 8 << 20  # an http(s) server that ignores Range: read whole up to this size, refused above
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

    def changed(self) -> bool: ...

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

    def changed(self) -> bool:
        return False  # read through one descriptor: a file renamed over the path is not this one

    def close(self) -> None:
        self._file.close()


class FsspecSource:
    """An object behind an fsspec URL (s3://, gs://, memory://), read by range requests.

    Whatever the client raises (no credentials, an endpoint down, a refused request) becomes one
    StateUnreadableError line naming the URL and the cause: clients raise their own exception types.
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.name = url
        try:
            import fsspec
        except ImportError:
            raise ImportError('reading a URL needs fsspec: pip install "statefmt[remote]" (and s3fs for s3://, '
                              "gcsfs for gs://)") from None
        try:
            self._fs, self._path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
            info = self._fs.info(self._path)
        except FileNotFoundError:
            raise StateUnreadableError("no such object", source=url) from None
        except Exception as error:  # (each client has its own types: botocore's, aiohttp's...)
            raise StateUnreadableError(f"cannot open: {_cause(error)}", source=url) from None
        if info.get("type") not in ("file", None) or info.get("size") is None:
            raise StateUnreadableError(f"is a {info.get('type')}, not a file", source=url)
        self.size = int(info["size"])
        self.etag = info.get("ETag") or info.get("etag")

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        if not ranges:
            return []
        try:
            out = self._fs.cat_ranges([self._path] * len(ranges), [r[0] for r in ranges], [r[1] for r in ranges],
                                      on_error="raise")
        except Exception as error:
            raise StateUnreadableError(f"range read failed: {_cause(error)}", source=self.name) from None
        for (start, stop), data in zip(ranges, out):
            if len(data) != stop - start:
                raise _truncated(self.name, stop, start + len(data))
        return list(out)

    def read_into(self, start: int, buffer: np.ndarray) -> None:
        _read_into_by_ranges(self, start, buffer)

    def changed(self) -> bool:
        """Whether the object is another one now (its ETag changed) than when it was opened."""
        if not self.etag:
            return False
        try:
            self._fs.invalidate_cache(self._path)
            info = self._fs.info(self._path)
        except Exception:  # (gone, or unreachable: nothing is proven)
            return False
        return (info.get("ETag") or info.get("etag")) not in (None, self.etag)

    def close(self) -> None:
        pass


def _cause(error: BaseException) -> str:
    """A client's exception as one line: its type and its first line (botocore's run to several)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class HttpSource:
    """An object behind an http(s) URL, read by Range requests with the standard library's client.

    Every failure is a one-line StateUnreadableError naming the URL: an HTTP error status, a body
    shorter than its Content-Length, a redirect to anything but http(s), silence for HTTP_TIMEOUT
    seconds, or more than READ_DEADLINE seconds in all. A server that ignores Range (it answers
    200 with the whole object, as `python -m http.server` does) is read whole once if the object
    is at most WHOLE_READ_BYTES, and refused if larger, so nothing is ever transferred unasked.
    `storage_options` may hold `headers` (a mapping, e.g. Authorization).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.name = url
        options = dict(storage_options or {})
        self._headers = dict(options.pop("headers", None) or {})
        if options:
            raise StateFormatError(f"storage_options for http(s) take `headers` only, found {sorted(options)}",
                                   source=url)
        self._deadline = time.monotonic() + READ_DEADLINE
        self._whole: bytes | None = None
        first, status, headers = self._get(0, FIRST_BYTES)
        self.etag = headers.get("ETag")
        if status == 206:
            self.size = _total_of(headers.get("Content-Range"), url)
            self._first = first
        else:
            self.size = len(first)
            self._whole = self._first = first

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        for start, stop in ranges:
            if self._whole is not None or stop <= len(self._first):
                data = (self._whole or self._first)[start:stop]
            else:
                data, status, headers = self._get(start, stop)
                if status != 206:
                    raise StateUnreadableError("the server stopped honouring Range requests", source=self.name)
                if self.etag and headers.get("ETag") not in (None, self.etag):
                    raise self._changed()
            if len(data) != stop - start:
                raise _truncated(self.name, stop, start + len(data))
            out.append(data)
        return out

    def read_into(self, start: int, buffer: np.ndarray) -> None:
        _read_into_by_ranges(self, start, buffer)

    def changed(self) -> bool:
        """Whether the object is another one now (its ETag changed) than when it was opened."""
        if not self.etag:
            return False
        try:
            _, _, headers = self._get(0, 1)
        except StateError:
            return False
        return headers.get("ETag") not in (None, self.etag)

    def close(self) -> None:
        pass

    def _changed(self) -> StateUnreadableError:
        return StateUnreadableError("the object changed while it was read (its ETag differs): read it again",
                                    source=self.name)

    def _get(self, start: int, stop: int) -> tuple[bytes, int, Mapping[str, str]]:
        """Bytes [start, stop) (or the whole object from a server that ignores Range), its status, its headers."""
        import http.client
        import urllib.error
        import urllib.request  # follows redirects to http(s) only: it refuses file:// and any other scheme

        left = self._deadline - time.monotonic()
        if left <= 0:
            raise StateUnreadableError(f"the read took more than {READ_DEADLINE:g} s in all", source=self.name)
        request = urllib.request.Request(self.name, headers={**self._headers,
                                                               "Range": f"bytes={start}-{stop - 1}"})
        try:
            with urllib.request.urlopen(request, timeout=min(HTTP_TIMEOUT, left)) as response:
                status, headers = response.status, response.headers
                if status == 200:
                    length = int(headers.get("Content-Length") or -1)
                    if length < 0 or length > WHOLE_READ_BYTES:
                        raise StateUnreadableError(
                            f"the server ignores Range requests and the object is {_size(length)}; statefmt "
                            f"reads such a server's object whole only up to {WHOLE_READ_BYTES:,} bytes: serve it "
                            "with Range support (nginx, any object store) or download it first", source=self.name)
                    stop = start + length
                elif status != 206:
                    raise StateUnreadableError(f"HTTP {status} {response.reason}", source=self.name)
                return self._body(response, stop - start), status, headers
        except urllib.error.HTTPError as error:
            raise StateUnreadableError(f"HTTP {error.code} {error.reason}", source=self.name) from None
        except urllib.error.URLError as error:
            raise StateUnreadableError(f"cannot reach the server: {error.reason}", source=self.name) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            if isinstance(error, StateError):
                raise
            raise StateUnreadableError(f"the read failed: {type(error).__name__}: {error}", source=self.name) from None

    def _body(self, response: Any, count: int) -> bytes:
        """At most `count` bytes of the body, within the deadline however slowly they come."""
        chunks, total = [], 0
        while total < count:
            if time.monotonic() > self._deadline:
                raise StateUnreadableError(f"the read took more than {READ_DEADLINE:g} s in all", source=self.name)
            chunk = response.read1(min(count - total, 1 << 20))
            if not chunk:
                raise StateUnreadableError(f"the server sent {total} bytes of the {count} it announced",
                                           source=self.name)
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)


FIRST_BYTES = 65_536  # an http(s) source's first request: the header of any ordinary file (as _container.FIRST_READ)


def _total_of(content_range: str | None, url: str) -> int:
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", (content_range or "").strip())
    if not match:
        raise StateUnreadableError(f"a 206 answer without a valid Content-Range ({content_range!r})", source=url)
    return int(match.group(1))


def _size(length: int) -> str:
    return f"{length:,} bytes" if length >= 0 else "of unknown size"


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
        if target.startswith(("http://", "https://")):
            return HttpSource(target, storage_options)
        return FsspecSource(target, storage_options)
    if storage_options:
        raise StateFormatError("storage_options apply to URLs only", source=display(target))
    return LocalSource(target)


def _read_into_by_ranges(source: Source, start: int, buffer: np.ndarray) -> None:
    """A remote source's `read_into`: range reads of at most READ_BYTES each, copied into `buffer`."""
    view = buffer.reshape(-1).view(np.uint8)
    for first in range(0, view.size, READ_BYTES):
        stop = min(view.size, first + READ_BYTES)
        (data,) = source.read_ranges([(start + first, start + stop)])
        view[first:stop] = np.frombuffer(data, np.uint8)


def _truncated(name: str, expected: int, found: int) -> StateFormatError:
    return StateFormatError(f"the file is cut short: a read needs {expected} bytes, the file has {found}",
                            source=name)
