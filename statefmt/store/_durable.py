"""Durability on a local directory: Lance renames its files into place but never fsyncs them."""

from __future__ import annotations

import os

from ._lance import local_store_path


def make_durable(url: str, since_ns: int) -> None:
    """fsync what a commit wrote to a local store: Lance renames and links its files into place (atomic)
    but never fsyncs them, so without this a power cut could lose a commit that returned.

    Object stores need nothing: a completed PUT is durable. The files are found by modification time,
    with a margin for the file system's coarse clock; syncing an older file too is harmless.
    """
    root = local_store_path(url)
    if root is None:
        return
    since_ns -= 100_000_000
    directories = [root]
    for sub in ("data", "_deletions", "_transactions", "_indices", "_versions"):
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            directories.append(path)
    for directory in list(directories):
        for entry in os.scandir(directory):
            if directory == root or entry.name.startswith(".tmp"):  # another writer's file, not yet in place
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime_ns < since_ns:
                    continue
                if entry.is_dir(follow_symlinks=False):  # an index's own directory
                    directories.append(entry.path)
                    for inner in os.scandir(entry.path):
                        fsync(inner.path)
                elif entry.is_file(follow_symlinks=False):
                    fsync(entry.path)
            except FileNotFoundError:  # another writer's, renamed or cleaned up meanwhile
                continue
    for directory in directories:
        fsync(directory)


def fsync(path: str) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


