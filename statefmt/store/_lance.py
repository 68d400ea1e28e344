"""Lance's side: its errors turned into ours, URLs, and what must not reach Lance (special files)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .._source import local_path
from ..errors import StateError, StateFormatError, StoreConflictError, StoreMemoryError


@contextmanager
def lance_errors(url: str, action: str) -> Iterator[None]:
    """A Lance or Arrow error as one whole line naming the URL and what was being done: a conflict, running
    out of memory and a missing dataset each as their own `StoreError`, anything else as a `StateFormatError`."""
    from lance.commit import CommitConflictError

    try:
        yield
    except StateError:
        raise
    except CommitConflictError as error:
        raise StoreConflictError(f"{action}: another writer's commit preempted this one ({_reason(error)}); "
                                 "it was retried on the newer version until the retries ran out: write less "
                                 "often, or split the fleet so that fewer writers touch the same rows",
                                 source=url) from None
    except MemoryError:
        raise StoreMemoryError(f"{action}: out of memory; put fewer streams at a time", source=url) from None
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError, AttributeError) as error:
        reason = _reason(error)
        if "Too many concurrent writers" in reason or "Retryable commit conflict" in reason:  # Lance's own
            # retries ran out, or an operation that commits itself was preempted: a plain OSError, its text alone
            raise StoreConflictError(f"{action}: other writers' commits kept preempting this one ({reason}): write "
                                     "less often, or split the fleet so that fewer writers touch the same rows",
                                     source=url) from None
        if "Resources exhausted" in reason:  # Lance's only sign of its memory pool running dry: an OSError's text
            raise StoreMemoryError(f"{action}: Lance ran out of memory ({reason}); put fewer streams at a time, "
                                   "or give Lance a larger pool (the LANCE_MEM_POOL_SIZE environment variable, "
                                   "in bytes)", source=url) from None
        raise StateFormatError(f"{action}: {type(error).__name__}: {reason}", source=url) from None
    except Exception as error:  # pyarrow.ArrowException and Lance's own classes derive from Exception only
        if type(error).__module__.split(".")[0] not in ("lance", "pyarrow"):
            raise
        raise StateFormatError(f"{action}: {type(error).__name__}: {_reason(error)}", source=url) from None


def _reason(error: BaseException) -> str:
    """The error's text on one line, whole, less the Rust source positions Lance appends."""
    return re.sub(r",? ?/\S+\.rs:\d+:\d+", "", " ".join(str(error).split()))


def refuse_special_files(root: str, url: str) -> None:
    """A FIFO or a device anywhere in a local store (manifests, data, deletions, indices) would block Lance's
    read forever: refuse it first. A walk of the folders, no file opened: ~1 ms for a thousand files."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                special = not stat.S_ISREG(os.stat(path).st_mode)
            except FileNotFoundError:  # another writer's file, renamed or cleaned up meanwhile
                continue
            if special:
                raise StateFormatError(f"{os.path.relpath(path, root)} is not a regular file (a FIFO or a device?): "
                                       "not a readable store; remove it", source=url)


def local_store_path(url: str) -> str | None:
    """The local path of a URL without a scheme; None for an object store (`_url` turned file:// into a path)."""
    return None if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url) else url


def store_url(url: Any) -> str:
    """The URL Lance is given: a path for a local store (a file:// URL names one on this machine only)."""
    text = os.fspath(url) if isinstance(url, os.PathLike) else url
    if not isinstance(text, str) or not text:
        raise StateFormatError(f"a store URL must be a non-empty path or URL, found {text!r}")
    return str(local_path(text))


