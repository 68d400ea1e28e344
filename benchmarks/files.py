"""Local-file figures for `statefmt._files`: `python -m benchmarks.files [--mib 512] [--files 100000]`.

1. Block reservation, an ablation: ctypes `fallocate(2)` against `os.posix_fallocate` against
   none, writing a `--mib` file to a new path and over an existing one, with `durable=False`
   (page cache) and `durable=True` (fsync), best of `--repeat`.
2. The cost of one small save in a folder of `--files` other files against an empty folder:
   a save must not list its folder.

Files go to a temporary folder on the repository's disk (not tmpfs) unless `--dir` says otherwise.
The machine is shared: read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from benchmarks._timing import best
from statefmt import _files

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20


@lru_cache(maxsize=1)
def _libc_fallocate():
    function = ctypes.CDLL(None, use_errno=True).fallocate64
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


def reserve_ctypes(fd: int, nbytes: int) -> None:
    """fallocate(2) through ctypes: the file system reserves the blocks or says it cannot."""
    if nbytes and _libc_fallocate()(fd, 0, 0, nbytes) != 0:
        error = ctypes.get_errno()
        if error in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OSError(error, os.strerror(error))


def reserve_posix(fd: int, nbytes: int) -> None:
    """os.posix_fallocate: glibc calls fallocate(2), or writes a byte per block where the file system lacks it."""
    if nbytes:
        os.posix_fallocate(fd, 0, nbytes)


def reserve_none(fd: int, nbytes: int) -> None:
    """No reservation: blocks are allocated as the pages are written back."""


RESERVATIONS: dict[str, Callable[[int, int], None]] = {
    "ctypes fallocate": reserve_ctypes,
    "os.posix_fallocate": reserve_posix,
    "none": reserve_none,
}


def unlink(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def filler(payload: np.ndarray) -> Callable[[int], None]:
    view = memoryview(payload).cast("B")
    step = 8 * MiB

    def fill(fd: int) -> None:
        position = 0
        for start in range(0, len(view), step):
            chunk = view[start:start + step]
            while chunk:
                written = os.pwrite(fd, chunk, position)
                chunk, position = chunk[written:], position + written
    return fill


def reservation_rows(directory: str, mib: int, repeat: int) -> None:
    payload = np.random.default_rng(0).integers(0, 255, mib * MiB, dtype=np.uint8)
    fill, size = filler(payload), payload.nbytes
    path = os.path.join(directory, "reserve.bin")
    print(f"block reservation: replace_atomically of a {mib} MiB file, best of {repeat} "
          f"(os.sync() untimed before each run)")
    print(f"  {'':<22} {'new, cache':>12} {'over, cache':>12} {'new, fsync':>12} {'over, fsync':>12}")
    original = _files._reserve
    try:
        for label, reserve in RESERVATIONS.items():
            _files._reserve = reserve
            cells = []
            for durable in (False, True):
                for over in (False, True):
                    def save(durable: bool = durable) -> None:
                        _files.replace_atomically(path, fill, size=size, durable=durable)

                    def before(over: bool = over) -> None:
                        if over:
                            if not os.path.exists(path):
                                save()
                        else:
                            unlink(path)
                        os.sync()
                    cells.append(best(save, repeat=repeat, before=before))
            new_cache, over_cache, new_sync, over_sync = cells
            print(f"  {label:<22} {new_cache * 1e3:9.1f} ms {over_cache * 1e3:9.1f} ms "
                  f"{new_sync * 1e3:9.1f} ms {over_sync * 1e3:9.1f} ms")
    finally:
        _files._reserve = original
        unlink(path)
    print("  statefmt reserves with ctypes fallocate: where the file system has fallocate, os.posix_fallocate is the\n"
          "  same call; where it has not (ext2, NFS before 4.2), glibc writes a byte into every block (--dir there)")


def folder_rows(directory: str, files: int, repeat: int) -> None:
    payload = np.zeros(4096, np.uint8)
    fill = filler(payload)
    empty, crowded = os.path.join(directory, "empty"), os.path.join(directory, "crowded")
    os.mkdir(empty)
    os.mkdir(crowded)
    for i in range(files):
        os.close(os.open(os.path.join(crowded, f"other-{i:06d}.statefmt"), os.O_WRONLY | os.O_CREAT, 0o644))
    print(f"one 4 KiB save (durable=False), median and best of {repeat}, the two folders taking turns: "
          f"empty vs {files:,} files")
    folders = {"empty folder": empty, f"folder of {files:,} files": crowded}
    times: dict[str, list[float]] = {label: [] for label in folders}
    os.sync()
    for _ in range(repeat):
        for label, folder in folders.items():
            path = os.path.join(folder, "state.statefmt")
            start = time.perf_counter()
            _files.replace_atomically(path, fill, size=payload.nbytes, durable=False)
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times["empty folder"])
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {label:<28} median {median * 1e3:7.3f} ms  best {min(values) * 1e3:7.3f} ms  {median / base:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the reservation ablation's file")
    parser.add_argument("--files", type=int, default=100_000, help="files in the crowded folder")
    parser.add_argument("--repeat", type=int, default=5, help="runs per reservation figure (best is shown)")
    parser.add_argument("--saves", type=int, default=200, help="saves per folder figure")
    parser.add_argument("--dir", default=str(REPO), help="where the temporary folder goes (its file system counts)")
    parser.add_argument("--only", choices=("reserve", "folder"), help="one section only")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix=".bench-files-", dir=args.dir)
    try:
        if args.only != "folder":
            reservation_rows(directory, args.mib, args.repeat)
        if args.only != "reserve":
            folder_rows(directory, args.files, args.saves)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
