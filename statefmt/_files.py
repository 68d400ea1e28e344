"""Local files: replacing one atomically, and opening one to read.

A save goes to a temporary file beside the target, is fsynced and renamed over it: a crash
at any point leaves either the previous file or the new one, never a mix. Only a regular file
is replaced; a symbolic link is followed to the file it names, and the link stays a link.

Temporaries are named after the file they replace and a slot, `.NAME.SLOT.statefmt-tmp` (NAME
cut to fit NAME_MAX), so a save never lists its folder (which cost 43 ms a save in a folder of
100,000 files; now 0.2 ms, as in an empty one): it takes the first slot that is free or holds a
dead writer's temporary. A writer holds an exclusive flock on its temporary from creation
to rename. A temporary that another process can lock has no live writer: the kernel drops a
killed process's locks, whatever its PID namespace, and the NFS lock manager does so across hosts.
Where locks are not honoured at all, nothing is ever taken for dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import os
import stat
import threading
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import TypeAlias

from .errors import StateFormatError, StateUnreadableError

PathArgument: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

_TEMP_SUFFIX = ".statefmt-tmp"
_NAME_MAX = 255  # bytes, on every file system Linux mounts read-write
_SWEPT_SLOTS = 8  # slots checked for dead writers' temporaries after each save
_MAX_SLOTS = 1024  # concurrent writers of one file before a save gives up
_NO_LOCKS = (errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL, errno.ENOSYS)

_OPEN_ERRORS = {errno.ENOENT: "no such file", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOTDIR: "no such file (a part of the path is not a folder)"}

# temporaries this process creates or probes now, each held by its owner (a _Temporary, a _Probe) only while
# the owner lives: a claim whose release a Ctrl-C skipped ends with the interrupted save's objects
_in_use: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()
_in_use_lock = threading.Lock()


def _after_fork() -> None:  # a fork while another thread held the lock must not leave the child stuck on it
    global _in_use_lock
    _in_use_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def replace_atomically(path: PathArgument, fill: Callable[[int], None], *, size: int,
                       durable: bool = True) -> None:
    """Replace `path` with a `size`-byte file whose bytes `fill(fd)` writes (with os.pwrite), atomically.

    `fill` may raise to abandon the file; the previous one is then left as it was, and neither a
    temporary nor a descriptor is left behind, whatever the exception (Ctrl-C included). A symbolic
    link is followed to its final target, which is replaced (the link stays a link, as with editors
    and write-file-atomic); anything but a regular file there is refused with a StateFormatError. The
    replaced file's permission bits, and its owner and group where the user may set them, are kept;
    a new file gets 0o666 less the umask. OSErrors name `path`, never the temporary.

    >>> replace_atomically("state.statefmt", lambda fd: os.pwrite(fd, b"data", 0), size=4)
    """
    shown = _checked_path(path)
    target = os.path.realpath(shown)
    directory, base = os.path.split(target)
    temporary = _Temporary(directory, base)
    try:
        existing = _regular_or_absent(target, shown)
        temporary.create(0o600 if existing else 0o666)  # a replaced file's mode is set once written
        _reserve(temporary.fd, size)
        fill(temporary.fd)
        if existing is not None:
            _keep_owner_and_mode(temporary.fd, existing)
        if durable:
            os.fsync(temporary.fd)
        _regular_or_absent(target, shown)  # again, just before the rename
        os.replace(temporary.path, target)
        temporary.renamed = True
        if durable:
            _fsync_directory(directory)
    except OSError as error:
        raise _named(error, shown) from None
    finally:
        temporary.close()
    _sweep(directory, base)


def open_regular(path: PathArgument) -> io.FileIO:
    """Open a regular file to read, unbuffered: FIFOs, devices, sockets and directories are refused.

    The open never blocks (O_NONBLOCK, cleared once the file is known to be regular), and the type
    is checked on the open descriptor, so nothing can swap the file in between. Read everything
    through this one descriptor: a file replaced meanwhile is then read whole, old or new.
    Every refusal is a one-line StateUnreadableError naming `path`: "no such file", "permission
    denied", "is a FIFO (named pipe), not a regular file", "cannot open: No such device"...

    >>> with open_regular("state.statefmt") as file:
    ...     length = file.read(8)
    """
    shown = _checked_path(path)
    try:
        fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):  # a socket, a device with no driver
            with contextlib.suppress(OSError):
                mode = os.stat(shown).st_mode
                if not stat.S_ISREG(mode):
                    raise StateUnreadableError(f"is {_kind(mode)}, not a regular file", source=shown) from None
        raise StateUnreadableError(_OPEN_ERRORS.get(error.errno or 0, f"cannot open: {error.strerror}"),
                               source=shown) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StateUnreadableError(f"is {_kind(mode)}, not a regular file", source=shown)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    file = io.FileIO(fd, "rb")  # (an exception as this returns drops the object, which closes fd)
    file.name = shown  # the caller's path, not the descriptor's number
    return file


def read_small(path: PathArgument, limit: int) -> bytes:
    """The bytes of a small regular file, at most `limit` of them (a signature file, say).

    The same checks as `open_regular`; a larger file is refused before anything is read, and
    one that grows past `limit` while it is read is refused too.

    >>> text = read_small("signature.json", 1 << 20).decode("utf-8")
    """
    with open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise StateFormatError(f"is {size:,} bytes, more than the {limit:,} allowed", source=file.name)
        chunks, total = [], 0
        while total <= limit:
            chunk = file.read(limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise StateFormatError(f"grew past the {limit:,} bytes allowed while it was read", source=file.name)
        return b"".join(chunks)


# --- saving ----------------------------------------------------------------------------------------------------

class _Temporary:
    """The file a save writes: held under an exclusive flock from creation to rename.

    `close` removes it unless it was renamed, and only while its name still holds this very file.
    Its descriptor lives in a FileIO object: however a save is left, an exception at any point
    (Ctrl-C included) drops the object, and that closes the descriptor.
    """

    def __init__(self, directory: str, base: str):
        self.directory, self.base = directory, base
        self.path = ""
        self.file: io.FileIO | None = None
        self.renamed = False

    @property
    def fd(self) -> int:
        if self.file is None:
            raise ValueError("the temporary is not open")
        return self.file.fileno()

    def create(self, mode: int) -> None:
        for slot in range(_MAX_SLOTS):
            name = _temporary_name(self.base, slot)
            path = os.path.join(self.directory, name)
            if name == self.base or not _claim(path, self):
                continue
            self.path = path
            if self._open(mode):
                return
            self.path = ""
            _release(self)
        raise OSError(errno.EEXIST, f"{_MAX_SLOTS} temporaries beside it are in use or not ours to remove")

    def _open(self, mode: int) -> bool:
        """Create the temporary at `self.path` and lock it; False if that slot is taken."""
        for _ in range(3):
            try:
                self.file = io.FileIO(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode),
                                      "wb")
            except FileExistsError:
                if not _remove_if_dead(self.path):
                    return False
                continue
            except BaseException:  # (Ctrl-C as os.open returned, say: nothing names the descriptor yet)
                _recover(self.path)
                raise
            _lock(self.fd)
            if _same_file(self.fd, self.path):
                return True
            # a prober removed it as a dead writer's in the instant before the lock: start again
            file, self.file = self.file, None
            file.close()
        return False

    def close(self) -> None:
        file = self.file
        try:
            if file is not None and not self.renamed:
                _unlink_if_same(self.path, file.fileno())
        finally:
            if file is not None:
                file.close()
            self.file = None
            _release(self)


def _temporary_name(base: str, slot: int) -> str:
    """`.BASE.SLOT.statefmt-tmp`, BASE cut (never inside a UTF-8 sequence) to keep within NAME_MAX bytes."""
    tail = f".{slot}{_TEMP_SUFFIX}".encode()
    name = os.fsencode(base)
    room = _NAME_MAX - 1 - len(tail)
    if len(name) > room:
        cut = room
        while cut > 0 and name[cut] & 0xC0 == 0x80:  # a continuation byte: the character began earlier
            cut -= 1
        name = name[:cut]
    return os.fsdecode(b"." + name + tail)


def _claim(path: str, owner: object) -> bool:
    with _in_use_lock:
        return _in_use.setdefault(path, owner) is owner


def _release(owner: object) -> None:
    """Every slot `owner` claimed, at once (not when it is collected). By owner, not by path: a Ctrl-C
    between a claim and the line that would have noted its path leaves nothing to look up."""
    with _in_use_lock:
        for path in [path for path, holder in _in_use.items() if holder is owner]:
            del _in_use[path]


class _Probe:
    """The owner of the slots a sweep claims (weakly referenced, as a plain object() cannot be)."""


def _lock(fd: int) -> None:
    """Take an exclusive flock, waiting for it (a prober holds one for an instant at most); where
    the file system has no locks, go on without."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise


def _remove_if_dead(path: str) -> bool:
    """Remove `path` if it is a temporary no live writer holds; True if the name is free now.

    Only a regular file of this user that can be locked is removed: a live writer holds its lock
    until it has renamed or removed the file, and a killed one holds none.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        return False
    try:
        probe = io.FileIO(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY))
    except OSError:
        _close_strays(path)  # FileIO leaves the descriptor open if it refuses a directory (one swapped in)
        return False
    except BaseException:
        _close_strays(path)
        raise
    with probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _same_file(probe.fileno(), path):
                return False
            os.unlink(path)
            return True
        except OSError:  # locked (a live writer), or no locks here: nothing is proven dead
            return False


def _sweep(directory: str, base: str) -> None:
    """Remove dead writers' temporaries of `base` from the first slots: a few lookups, no listing."""
    owner = _Probe()
    try:
        for slot in range(_SWEPT_SLOTS):
            path = os.path.join(directory, _temporary_name(base, slot))
            if _claim(path, owner):
                _remove_if_dead(path)
                _release(owner)
    finally:
        _release(owner)


def _same_file(fd: int, path: str) -> bool:
    try:
        mine, named = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _unlink_if_same(path: str, fd: int) -> None:
    """Remove `path` if it still names the file open at `fd`: under our lock, nobody else can
    remove it or put another file there in between."""
    try:
        _lock(fd)
        if _same_file(fd, path):
            os.unlink(path)
    except OSError:
        pass


def _recover(path: str) -> None:
    """Undo a creation of `path` that an exception cut short: close a descriptor that os.open
    returned but nothing holds yet, then remove the file if no live writer holds it."""
    _close_strays(path)
    _remove_if_dead(path)


def _close_strays(path: str) -> None:
    """Close this process's descriptors on `path`, found by their links in /proc/self/fd.

    Only for paths this process has claimed (`_claim`): no other descriptor of ours names them.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link in (path, path + " (deleted)"):
            _close_quietly(int(name))


def _keep_owner_and_mode(fd: int, previous: os.stat_result) -> None:
    """Give the new file the replaced one's owner and group where allowed, then its permission bits
    (after: a change of owner clears set-user-ID)."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (previous.st_uid, previous.st_gid):
        try:
            os.fchown(fd, previous.st_uid, previous.st_gid)
        except PermissionError:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, previous.st_gid)  # a group the user belongs to
    os.fchmod(fd, stat.S_IMODE(previous.st_mode))


def _regular_or_absent(target: str, shown: str) -> os.stat_result | None:
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise StateFormatError(f"is {_kind(info.st_mode)}, not a regular file; only a regular file is replaced",
                               source=shown)
    return info


def _reserve(fd: int, nbytes: int) -> None:
    """Allocate the file's blocks before writing: a full disk fails here, before any payload
    is written; ext4 need not reserve blocks page by page, and renaming over an existing file
    does not make it flush delayed allocations. 512 MiB to a new path, page cache, ext4: 81 ms
    reserved, 183 ms not (`python -m benchmarks.files`; noisy, shared machine).

    Linux fallocate(2) through ctypes, where the file system has it, else nothing. Where it has
    it, os.posix_fallocate is the same call (118 ms, within the noise); where it has not (ext2,
    NFS before 4.2), glibc's fallback writes a byte into every block: 1.9 s against 0.43 s for
    512 MiB on ext2. That fallback is why ctypes stays.
    """
    fallocate = _fallocate()
    if fallocate is not None and nbytes and fallocate(fd, 0, 0, nbytes) != 0:
        error = ctypes.get_errno()
        if error in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise OSError(error, os.strerror(error))


@lru_cache(maxsize=1)
def _fallocate():  # type: ignore[no-untyped-def]
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate64
    except (OSError, AttributeError):  # not glibc or musl on Linux: nothing to reserve with
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


def _fsync_directory(directory: str) -> None:
    """fsync the folder, so the rename outlives a power cut. In the main thread this runs in a
    helper thread: Ctrl-C (raised only in the main thread) could land as os.open returns, before
    the descriptor has a name to close it by."""
    if threading.current_thread() is not threading.main_thread():
        _fsync_directory_now(directory)
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _fsync_directory_now(directory)
        except BaseException as error:
            errors.append(error)
    helper = threading.Thread(target=run, name="statefmt-fsync-folder")
    helper.start()
    helper.join()
    if errors:
        raise errors[0]


def _fsync_directory_now(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- shared ----------------------------------------------------------------------------------------------------

def _checked_path(path: PathArgument) -> str:
    """The path as a str (bytes are decoded as the file system does), refused if no file can have it."""
    try:
        text = os.fsdecode(os.fspath(path))
        os.fsencode(text)
    except TypeError:
        raise StateFormatError(f"a path must be a str, bytes or os.PathLike, not {type(path).__name__}") from None
    except (UnicodeEncodeError, UnicodeDecodeError) as error:
        raise StateFormatError(f"the path cannot be encoded for the file system ({error.reason})",
                               source=ascii(path)) from None
    if "\0" in text:
        raise StateFormatError("a path cannot contain a NUL character", source=ascii(text))
    if not text:
        raise StateFormatError("the path is empty; name a file")
    if text.endswith(os.sep):
        raise StateFormatError("ends with a slash, so it names a folder, not a file", source=text)
    return text


def _named(error: OSError, shown: str) -> OSError:
    """The same error (same class, same errno), naming the caller's path instead of a temporary."""
    if error.errno is None:
        return error
    return OSError(error.errno, error.strerror or os.strerror(error.errno), shown)


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "a special file"


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
