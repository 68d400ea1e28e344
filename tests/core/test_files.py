"""Local files that nothing can damage: what a save may replace, and how; what a reader may open.

Saves go through `statefmt.save` where the public API shows the behaviour, and through
`_files.replace_atomically` (with a fill of known bytes) where the point is the file layer
itself. Writers that must stay alive mid-save are forked or spawned for real and hold their
temporary open while the test saves beside them.
"""

from __future__ import annotations

import errno
import io
import os
import random
import re
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
from builders import same, states_of
from forked import exit_code, fork

import statefmt
from statefmt import StateFormatError, _files

SUFFIX = ".statefmt-tmp"
ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def writes(data: bytes):
    """A fill that writes `data` with os.pwrite, as the container does."""
    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, len(data) - len(view)):]
    return fill


def replace(path, data: bytes, **options) -> None:
    _files.replace_atomically(path, writes(data), size=len(data), **options)


def temporaries(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(SUFFIX))


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_for(condition, timeout: float = 20.0, what: str = "a writer") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.005)


# --- what a save replaces --------------------------------------------------------------------------------------

SPECIAL = [("fifo", "a FIFO (named pipe)"), ("directory", "a directory"), ("socket", "a socket"),
           ("character device", "a character device")]


def special_files(folder: Path) -> dict[str, Path]:
    files = {"fifo": folder / "fifo", "directory": folder / "directory", "socket": folder / "socket"}
    os.mkfifo(files["fifo"])
    files["directory"].mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(files["socket"]))
    server.close()  # the socket file stays
    if IS_ROOT:
        # a /dev/null of our own: the real one is never the test's to risk (code that replaces it breaks the machine)
        files["character device"] = folder / "null"
        os.mknod(files["character device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return files


@pytest.mark.parametrize("kind, found", SPECIAL)
def test_a_save_never_replaces_a_special_file(tmp_path, kind, found):
    files = special_files(tmp_path)
    if kind not in files:
        pytest.skip("making a device node needs root")
    path = files[kind]
    before = os.lstat(path)
    with pytest.raises(StateFormatError, match="^" + re.escape(f"{path}: is {found}, not a regular file")) as caught:
        statefmt.save(states_of(1), path)
    assert "\n" not in str(caught.value)
    after = os.lstat(path)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("chain", [1, 2], ids=["link", "link-to-link"])
def test_a_save_through_a_symlink_writes_the_file_it_names(tmp_path, chain):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "s.statefmt"
    statefmt.save(states_of(1), target)
    link = target
    for i in range(chain):  # relative links, from another folder
        new = tmp_path / f"link{i}.statefmt"
        new.symlink_to(os.path.relpath(link, tmp_path))
        link = new
    statefmt.save(states_of(2), link)
    assert link.is_symlink() and os.path.realpath(link) == str(target)
    assert same(statefmt.load(target), states_of(2))
    assert temporaries(tmp_path) == [] and temporaries(target.parent) == []


def test_a_save_through_a_dangling_symlink_creates_the_file_it_names(tmp_path):
    link = tmp_path / "link.statefmt"
    link.symlink_to("made.statefmt")
    statefmt.save(states_of(3), link)
    assert link.is_symlink() and same(statefmt.load(tmp_path / "made.statefmt"), states_of(3))


def test_a_symlink_to_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("fifo")
    with pytest.raises(StateFormatError, match=f"^{tmp_path / 'link'}: is a FIFO"):
        statefmt.save(states_of(1), tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o666, 0o755, 0o444, 0o2775])
def test_a_save_keeps_the_replaced_files_permission_bits(tmp_path, mode):
    path = tmp_path / "s.statefmt"
    statefmt.save(states_of(1), path)
    os.chmod(path, mode)
    previous = os.umask(0o022)
    try:
        statefmt.save(states_of(2), path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert same(statefmt.load(path), states_of(2))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o000])
def test_a_new_file_gets_0o666_less_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        statefmt.save(states_of(1), tmp_path / "s.statefmt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "s.statefmt").st_mode) == 0o666 & ~umask


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_a_save_keeps_the_replaced_files_owner(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(states_of(1), path)
    os.chown(path, 4321, 8765)
    os.chmod(path, 0o4750)  # set-user-ID survives: the mode is set after the owner
    statefmt.save(states_of(2), path)
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 8765, 0o4750)


# --- temporaries: never a listing, never another writer's --------------------------------------------------------

def test_a_save_does_not_list_its_folder(tmp_path, monkeypatch):
    calls = []
    for name in ("listdir", "scandir"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *args, real=real, name=name: calls.append((name, args)) or real(*args))
    statefmt.save(states_of(1), tmp_path / "s.statefmt")
    statefmt.save(states_of(2), tmp_path / "s.statefmt")
    monkeypatch.undo()
    assert calls == []
    assert same(statefmt.load(tmp_path / "s.statefmt"), states_of(2))


def test_files_named_like_temporaries_never_fail_a_save_and_are_kept(tmp_path):
    """Everything here is named like a temporary of `s.statefmt`, and none is a dead writer's."""
    path = tmp_path / "s.statefmt"
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    (tmp_path / f".s.statefmt.0{SUFFIX}").mkdir()
    os.mkfifo(tmp_path / f".s.statefmt.1{SUFFIX}")
    (tmp_path / f".s.statefmt.2{SUFFIX}").symlink_to("precious")
    odd = [f".s.statefmt.{'9' * 30}-abcd{SUFFIX}",  # an old-style name whose pid overflows os.kill
           f".s.statefmt.-1-x{SUFFIX}", f".s.statefmt..{SUFFIX}", f".s.statefmt.{SUFFIX}"]
    for name in odd:
        (tmp_path / name).mkdir()
    if IS_ROOT:  # another user's file: not ours to remove, even unlocked
        (tmp_path / f".s.statefmt.3{SUFFIX}").write_bytes(b"theirs")
        os.chown(tmp_path / f".s.statefmt.3{SUFFIX}", 4321, 4321)
    before = temporaries(tmp_path)
    for seed in range(3):
        statefmt.save(states_of(seed), path)
    assert same(statefmt.load(path), states_of(2))
    assert temporaries(tmp_path) == before
    assert precious.read_bytes() == b"keep me" and (tmp_path / f".s.statefmt.2{SUFFIX}").is_symlink()


def _blocked_writer(path: Path, data: bytes, ready: Path, go: Path) -> None:
    """Save `data` to `path`, stopping mid-fill until `go` exists (after saying `ready`)."""
    def fill(fd):
        writes(data[: len(data) // 2])(fd)
        ready.touch()
        while not go.exists():
            time.sleep(0.005)
        writes(data)(fd)
    _files.replace_atomically(path, fill, size=len(data))


def _saves_beside_a_live_writer(tmp_path: Path, path: Path, ready: Path, go: Path, finish, alive=None) -> None:
    wait_for(lambda: ready.exists() or (alive is not None and not alive()))
    if not ready.exists():
        finish()  # it died: say why
    live = temporaries(tmp_path)
    assert len(live) == 1
    for seed in range(5):
        replace(path, b"ours %d" % seed)
        assert set(live) <= set(temporaries(tmp_path)), "a live writer's temporary was removed"
    assert path.read_bytes() == b"ours 4"
    go.touch()
    finish()
    assert path.read_bytes() == b"theirs" * 1000, "the live writer renamed last and wins"
    assert temporaries(tmp_path) == []


def test_a_live_writer_in_another_process_keeps_its_temporary(tmp_path):
    path, ready, go = tmp_path / "s.statefmt", tmp_path / "ready", tmp_path / "go"
    replace(path, b"old")
    pid = fork(lambda: _blocked_writer(path, b"theirs" * 1000, ready, go))
    _saves_beside_a_live_writer(tmp_path, path, ready, go, lambda: exit_code(pid) == 0 or pytest.fail("writer"))


def test_a_live_writer_in_another_thread_keeps_its_temporary(tmp_path):
    path, ready, go = tmp_path / "s.statefmt", tmp_path / "ready", tmp_path / "go"
    replace(path, b"old")
    writer = threading.Thread(target=_blocked_writer, args=(path, b"theirs" * 1000, ready, go))
    writer.start()
    _saves_beside_a_live_writer(tmp_path, path, ready, go, lambda: writer.join(30))


def test_a_live_writer_in_another_pid_namespace_keeps_its_temporary(tmp_path):
    """Its process id means nothing here; its lock does."""
    path, ready, go = tmp_path / "s.statefmt", tmp_path / "ready", tmp_path / "go"
    replace(path, b"old")
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no PID namespaces here: {probe.stderr.decode().strip()}")
    code = ("import sys, os; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/..']; from pathlib import Path; "
            "import test_files as t; "
            "assert os.getpid() == 1; a = [Path(p) for p in sys.argv[2:]]; "
            "t._blocked_writer(a[0], b'theirs' * 1000, a[1], a[2])")
    process = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", code, str(ROOT / "tests" / "core"),
                                str(path), str(ready), str(go)], stderr=subprocess.PIPE, text=True)
    try:
        def finish() -> None:
            assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
        _saves_beside_a_live_writer(tmp_path, path, ready, go, finish, alive=lambda: process.poll() is None)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_killed_writers_temporaries_are_removed_by_the_next_save(tmp_path):
    """Writers killed mid-save in slots 0 and 1 (two at once), and a dead one's file in slot 5."""
    path = tmp_path / "s.statefmt"
    replace(path, b"old")
    pids = []
    for k in range(2):
        ready = tmp_path / f"ready{k}"
        pids.append(fork(lambda ready=ready: _blocked_writer(path, b"never" * 100, ready, tmp_path / "go")))
        wait_for(ready.exists)
    (tmp_path / f".s.statefmt.5{SUFFIX}").write_bytes(b"left by a writer that died")
    assert len(temporaries(tmp_path)) == 3
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    replace(path, b"new")
    assert path.read_bytes() == b"new" and temporaries(tmp_path) == []


@pytest.mark.parametrize("name", ["x" * 226, "x" * 240, "x" * 250 + ".safe", "é" * 127 + "x", "名" * 85],
                         ids=["226", "240", "255-ascii", "255-bytes-2-byte-chars", "255-bytes-3-byte-chars"])
def test_names_up_to_name_max_save_and_load(tmp_path, name):
    assert len(name.encode()) <= 255
    path = tmp_path / name
    statefmt.save(states_of(1), path)
    statefmt.save(states_of(2), path)
    assert same(statefmt.load(path), states_of(2))
    assert os.listdir(tmp_path) == [name]


def test_long_names_that_share_a_prefix_save_side_by_side(tmp_path):
    """Their temporaries' names are cut to the same prefix: the lock, not the name, tells them apart."""
    a, b = tmp_path / ("y" * 250 + "a"), tmp_path / ("y" * 250 + "b")
    ready, go = tmp_path / "ready", tmp_path / "go"
    pid = fork(lambda: _blocked_writer(a, b"theirs" * 1000, ready, go))
    wait_for(ready.exists)
    replace(b, b"b")
    go.touch()
    assert exit_code(pid) == 0
    assert a.read_bytes() == b"theirs" * 1000 and b.read_bytes() == b"b"
    assert sorted(os.listdir(tmp_path)) == sorted([a.name, b.name, "go", "ready"])


# --- interrupted saves: no temporary, no descriptor ----------------------------------------------------------------

class _Interrupting:
    """Stands in for a module inside `_files`: the `at`-th call to any of its functions raises
    KeyboardInterrupt just before or just after the real call, as Ctrl-C can. Only in the main
    thread: Python raises KeyboardInterrupt nowhere else."""

    def __init__(self, module, plan):
        self._module, self._plan = module, plan

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if not callable(value) or isinstance(value, type):
            return value
        plan = self._plan

        def call(*args, **kwargs):
            main = threading.current_thread() is threading.main_thread()
            plan["calls"] += main
            hit = main and plan["calls"] == plan["at"]
            if hit and plan["before"]:
                raise KeyboardInterrupt(f"before {name}")
            try:
                result = value(*args, **kwargs)
            except BaseException:
                plan["raised"] += hit  # no interrupt lands after a call that raised: nothing ran after it
                raise
            if hit:
                raise KeyboardInterrupt(f"after {name}")
            return result
        return call


@pytest.mark.parametrize("existing", [True, False], ids=["over-a-file", "new-file"])
def test_an_interrupt_at_any_point_leaves_no_temporary_and_no_descriptor(tmp_path, monkeypatch, existing):
    path = tmp_path / "s.statefmt"
    plan = {"calls": 0, "at": 0, "before": True, "raised": 0}
    monkeypatch.setattr(_files, "os", _Interrupting(os, plan))
    monkeypatch.setattr(_files, "fcntl", _Interrupting(_files.fcntl, plan))
    replace(path, b"warm-up")  # (lazy imports and caches)
    if not existing:
        path.unlink()
    plan["calls"] = 0
    replace(path, b"new")
    points = plan["calls"]
    assert points >= 15
    interrupted = []
    for at in range(1, points + 1):
        for before in (True, False):
            if existing:
                path.write_bytes(b"old")
            elif path.exists():
                path.unlink()
            descriptors = open_descriptors()
            plan.update(calls=0, at=at, before=before)
            try:
                replace(path, b"new")
            except KeyboardInterrupt as stop:
                interrupted.append(str(stop))
            plan["at"] = 0
            where = f"interrupt {'before' if before else 'after'} call {at}"
            assert open_descriptors() == descriptors, f"{where}: a descriptor leaked"
            assert temporaries(tmp_path) == [], f"{where}: a temporary was left"
            assert os.listdir(tmp_path) in ([], [path.name]) and _files._in_use == set()
            if existing or path.exists():
                assert path.read_bytes() in (b"old", b"new"), where
    assert len(interrupted) + plan["raised"] == 2 * points, "every point was reached"
    assert plan["raised"] <= _files._SWEPT_SLOTS + 2, "only lookups of absent files raise (FileNotFoundError)"
    assert {"after open", "after flock", "before replace", "after replace"} <= set(interrupted)


def _chunked(data: bytes):
    """A fill that writes in 64 KiB pwrites from the calling thread, so an interrupt can land between any two."""
    def fill(fd: int) -> None:
        for start in range(0, len(data), 1 << 16):
            os.pwrite(fd, data[start:start + (1 << 16)], start)
    return fill


def _file_layer():
    """(save, read) of 4 MiB through replace_atomically alone, durable."""
    versions = [bytes([k]) * (4 << 20) for k in (1, 2)]

    def save(version: int, path: Path) -> None:
        _files.replace_atomically(path, _chunked(versions[version]), size=4 << 20)
    return save, lambda path: versions.index(path.read_bytes())


def _public_save():
    """(save, read) of a 4 MiB state through statefmt.save, whose container writes from a thread."""
    versions = [states_of(1, batch=1024, units=512), states_of(2, batch=1024, units=512)]

    def save(version: int, path: Path) -> None:
        statefmt.save(versions[version], path)
    return save, lambda path: next(k for k, v in enumerate(versions) if same(statefmt.load(path), v))


@pytest.mark.parametrize("layer", [
    _file_layer,
    _public_save,
], ids=["replace_atomically", "statefmt.save"])
def test_ctrl_c_at_random_moments_of_a_save_leaves_nothing(tmp_path, layer):
    """SIGINT-like interrupts (SIGALRM raising KeyboardInterrupt) at random moments of a 4 MiB save."""
    save, read = layer()
    path = tmp_path / "s.statefmt"
    save(0, path)
    start = time.perf_counter()
    save(0, path)
    seconds = time.perf_counter() - start
    baseline_threads = set(threading.enumerate())

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGALRM, interrupt)
    rnd, landed = random.Random(0), 0
    try:
        for trial in range(30):
            descriptors, current = open_descriptors(), read(path)
            done = False
            try:
                signal.setitimer(signal.ITIMER_REAL, rnd.uniform(0.0001, 1.2 * seconds))
                save(1 - current, path)
                done = True
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                landed += not done
            signal.setitimer(signal.ITIMER_REAL, 0)
            wait_for(lambda: set(threading.enumerate()) <= baseline_threads, 3,  # an interrupted join's writer
                     what=lambda trial=trial: f"threads to end, trial {trial}: " + "|".join(
                         "".join(traceback.format_stack(f)) for f in sys._current_frames().values()))
            assert open_descriptors() == descriptors, f"trial {trial}: a descriptor leaked"
            assert temporaries(tmp_path) == [], f"trial {trial}: a temporary was left"
            assert read(path) in (0, 1), f"trial {trial}: torn file"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert landed >= 5, f"only {landed} of 30 interrupts landed mid-save"


def test_a_fill_that_raises_leaves_the_old_file(tmp_path):
    path = tmp_path / "s.statefmt"
    replace(path, b"old")

    def fill(fd):
        os.pwrite(fd, b"half", 0)
        raise StateFormatError("a NaN in layer 0")
    descriptors = open_descriptors()
    with pytest.raises(StateFormatError, match="a NaN"):
        _files.replace_atomically(path, fill, size=4)
    assert path.read_bytes() == b"old" and temporaries(tmp_path) == [] and open_descriptors() == descriptors


# --- errors name the caller's path ---------------------------------------------------------------------------------

def test_errors_name_the_callers_path_not_the_temporary(tmp_path):
    path = tmp_path / "missing folder" / "s.statefmt"
    with pytest.raises(FileNotFoundError) as caught:
        statefmt.save(states_of(1), path)
    assert caught.value.filename == str(path) and SUFFIX not in str(caught.value)


def test_a_symlink_loop_is_an_error_that_names_the_path(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as caught:
        statefmt.save(states_of(1), tmp_path / "a")
    assert (caught.value.errno, caught.value.filename) == (errno.ELOOP, str(tmp_path / "a"))
    with pytest.raises(StateFormatError, match=f"^{tmp_path / 'a'}: cannot open: Too many levels of symbolic links$"):
        _files.open_regular(tmp_path / "a")
    assert (tmp_path / "a").is_symlink() and sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_full_disk_names_the_path_and_leaves_the_old_file(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk, in a forked child."""
    path = tmp_path / "s.statefmt"
    statefmt.save(states_of(1), path)

    def save_under_a_1_mib_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            statefmt.save(states_of(2, batch=4096, units=256), path)
        except OSError as error:
            os._exit(3 if (error.errno, error.filename) == (errno.EFBIG, str(path)) else 4)

    assert exit_code(fork(save_under_a_1_mib_limit)) == 3
    assert same(statefmt.load(path), states_of(1)) and temporaries(tmp_path) == []


@pytest.mark.parametrize("name", [b"s.statefmt", b"\xff\xfe-not-utf8.statefmt"], ids=["ascii", "not-utf-8"])
def test_bytes_paths_work(tmp_path, name):
    path = os.fsencode(tmp_path) + b"/" + name
    replace(path, b"old")
    replace(path, b"new")
    with open(path, "rb") as file:
        assert file.read() == b"new"
    assert _files.read_small(path, 100) == b"new"
    assert os.listdir(os.fsencode(tmp_path)) == [name]


@pytest.mark.parametrize("path", ["bad\udc00\ud800.statefmt", "nul\0byte.statefmt"], ids=["surrogate", "nul"])
def test_paths_no_file_can_have_are_refused_clearly(tmp_path, path):
    with pytest.raises(StateFormatError, match="path") as caught:
        replace(os.path.join(tmp_path, path), b"x")
    assert "\n" not in str(caught.value)
    with pytest.raises(StateFormatError, match="path"):
        _files.open_regular(os.path.join(tmp_path, path))


# --- reading -----------------------------------------------------------------------------------------------------

@pytest.fixture
def alarm():
    """A regression that blocks fails after 5 s instead of hanging the run."""
    def expire(signum, frame):
        raise TimeoutError("blocked: the open did not return")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_open_regular_reads_through_one_unbuffered_descriptor(tmp_path):
    path = tmp_path / "s.statefmt"
    replace(path, b"old bytes, all of them")
    with _files.open_regular(path) as file:
        assert isinstance(file, io.FileIO) and file.name == str(path) and file.read(4) == b"old "
        replace(path, b"new")  # replaced under the reader: it keeps reading the file it opened
        assert file.read() == b"bytes, all of them"
        assert os.get_blocking(file.fileno())  # O_NONBLOCK is cleared once the file is known to be regular
    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("kind, found", SPECIAL)
def test_open_regular_refuses_special_files_without_blocking(tmp_path, alarm, kind, found):
    files = special_files(tmp_path)
    if kind not in files:
        pytest.skip("making a device node needs root")
    descriptors = open_descriptors()
    for read in (_files.open_regular, lambda path: _files.read_small(path, 1000)):
        expected = f"{files[kind]}: is {found}, not a regular file"
        with pytest.raises(StateFormatError, match="^" + re.escape(expected) + "$"):
            read(files[kind])
    assert open_descriptors() == descriptors


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_devices_are_refused_before_a_byte_is_read(alarm, device):
    with pytest.raises(StateFormatError, match=f"^{device}: is a character device, not a regular file$"):
        _files.read_small(device, 1 << 20)


@pytest.mark.skipif(not IS_ROOT, reason="a node with no driver needs root to make")
def test_a_device_with_no_driver_is_named(tmp_path):
    node = tmp_path / "nodriver"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(240, 77))  # local/experimental major: no driver
    with pytest.raises(StateFormatError, match=f"^{node}: is a character device"):
        _files.open_regular(node)


@pytest.mark.parametrize("name, problem", [("missing.statefmt", "no such file"),
                                           ("missing/s.statefmt", "no such file"),
                                           ("file/s.statefmt", "no such file (a part of the path is not a folder)")])
def test_a_missing_file_says_so_and_names_it(tmp_path, name, problem):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StateFormatError) as caught:
        _files.open_regular(tmp_path / name)
    assert str(caught.value) == f"{tmp_path / name}: {problem}"


def test_permission_denied_says_permission_denied(tmp_path):
    path = tmp_path / "secret.statefmt"
    replace(path, b"secret")
    os.chmod(path, 0o600)

    def read_as_nobody():
        if IS_ROOT:  # root reads anything: drop to nobody in this child
            os.chmod(tmp_path, 0o755)
            os.setgid(65534)
            os.setuid(65534)
        try:
            _files.open_regular(path)
        except StateFormatError as error:
            os._exit(3 if str(error) == f"{path}: permission denied" else 4)
        os._exit(5)

    if IS_ROOT:
        assert exit_code(fork(read_as_nobody)) == 3
    else:
        os.chmod(path, 0o000)
        with pytest.raises(StateFormatError, match=f"^{re.escape(str(path))}: permission denied$"):
            _files.open_regular(path)


def test_read_small_caps_the_size(tmp_path):
    path = tmp_path / "signature.json"
    path.write_bytes(b"x" * 1000)
    assert _files.read_small(path, 1000) == b"x" * 1000
    with pytest.raises(StateFormatError, match=rf"^{path}: is 1,000 bytes, more than the 999 allowed$"):
        _files.read_small(path, 999)
    sparse = tmp_path / "sparse.json"
    with open(sparse, "wb") as file:
        file.truncate(64 << 30)  # 64 GiB that take no space: refused from its size, nothing read
    start = time.perf_counter()
    with pytest.raises(StateFormatError, match="is 68,719,476,736 bytes"):
        _files.read_small(sparse, 1 << 20)
    assert time.perf_counter() - start < 1.0


# --- the benchmark runs --------------------------------------------------------------------------------------------

def test_the_files_benchmark_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.files", "--mib", "4", "--files", "300", "--repeat", "1",
                             "--saves", "5", "--dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines if line.strip().startswith(("ctypes", "os.posix", "none"))] == [
        "ctypes", "os.posix_fallocate", "none"]
    assert any("folder of 300 files" in line for line in lines)
    assert os.listdir(tmp_path) == []
