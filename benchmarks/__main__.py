"""Run every benchmark once, side by side, and print each figure with its ratio: `python -m benchmarks`."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch
from statefmt.adapters import torch as torch_adapter

import statefmt
from benchmarks._memory import LAYERS, UNITS, payload, state_set

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
REPEAT = 5


def best(action, *, repeat: int = REPEAT, before=None) -> float:
    """The shortest of `repeat` timed runs of `action()`; `before()` runs untimed ahead of each."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def row(label: str, seconds: float, *, nbytes: int = 0, peer: float | None = None, note: str = "") -> None:
    rate = f"{nbytes / seconds / 1e9:6.2f} GB/s" if nbytes else " " * 11
    ratio = f"{seconds / peer:5.2f}x" if peer else "      "
    print(f"  {label:<44} {seconds * 1e3:9.1f} ms {rate}  {ratio}  {note}")


def unlink(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def machine() -> str:
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    filesystem = subprocess.run(["df", "--output=fstype", str(REPO)], capture_output=True, text=True,
                                check=True).stdout.split()[-1]
    return (f"{platform.node()} | {cpu} | {os.cpu_count()} cores | {memory:.0f} GiB | Linux {platform.release()} | "
            f"{filesystem} | Python {platform.python_version()}, numpy {np.__version__}, "
            f"safetensors {safetensors.__version__}, torch {torch.__version__}, statefmt {statefmt.__version__}")


def raw_write(arrays, path: str) -> None:
    """The floor for any writer: the bytes into the page cache with os.write, nothing else."""
    with open(path, "wb", buffering=0) as file:
        file.writelines(array.reshape(-1).view(np.uint8) for array in arrays.values())


def raw_read(arrays, path: str, *, keep: bool = True) -> None:
    """The floor for any reader: the bytes out of the page cache with readinto, into new arrays
    (`keep`) or through one reused 1 MiB buffer."""
    buffer = np.empty(MiB, np.uint8)
    with open(path, "rb", buffering=0) as file:
        for array in arrays.values():
            target = np.empty(array.nbytes, np.uint8) if keep else None
            for start in range(0, array.nbytes, MiB):
                file.readinto(target[start:start + MiB] if keep else buffer)


def saves(directory: str, arrays, states, nbytes: int) -> None:
    tensors = {key: torch.from_numpy(array) for key, array in arrays.items()}
    writers = {
        "statefmt.save(durable=False)": lambda path: statefmt.save(states, path, durable=False),
        "safetensors.numpy.save_file": lambda path: safetensors.numpy.save_file(arrays, path),
        "torch.save": lambda path: torch.save(tensors, path),
        "np.savez": lambda path: np.savez(path, **arrays),
        "floor: os.write of the bytes, no checks": lambda path: raw_write(arrays, path),
    }
    for title, over in (("save to a new path (page cache)", False), ("save over an existing file (page cache)", True)):
        print(title)
        times = {}
        for label, write in writers.items():
            path = os.path.join(directory, f"save{label.split('.')[0]}.npz")
            if over:
                write(path)
            times[label] = best(lambda write=write, path=path: write(path),
                                before=None if over else lambda path=path: unlink(path))
            unlink(path)
        peer = min(t for label, t in times.items() if not label.startswith(("statefmt", "floor")))
        for label, seconds in times.items():
            row(label, seconds, nbytes=nbytes, peer=None if label.startswith("statefmt") else peer)
        row("statefmt / fastest peer", times["statefmt.save(durable=False)"], peer=peer, note="target <= 1.00x")
    print("durable save (fsync), new path")
    path = os.path.join(directory, "durable.statefmt")
    durable = best(lambda: statefmt.save(states, path), before=lambda: unlink(path))

    def safetensors_fsync():
        safetensors.numpy.save_file(arrays, path)
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    peer = best(safetensors_fsync, before=lambda: unlink(path))
    unlink(path)
    row("statefmt.save (durable)", durable, nbytes=nbytes, peer=peer, note="vs save_file + fsync")
    row("safetensors save_file + fsync", peer, nbytes=nbytes)


def loads(directory: str, arrays, states, nbytes: int) -> dict[str, str]:
    files = {library: os.path.join(directory, f"load.{suffix}") for library, suffix in
             (("statefmt", "statefmt"), ("safetensors", "safetensors"), ("torch", "pt"), ("numpy", "npz"))}
    statefmt.save(states, files["statefmt"], durable=False)
    safetensors.numpy.save_file(arrays, files["safetensors"])
    torch.save({key: torch.from_numpy(array) for key, array in arrays.items()}, files["torch"])
    np.savez(files["numpy"], **arrays)
    print("load, page cache warm, every byte read (statefmt also checks checksums and finiteness)")
    times = {
        "statefmt.load": best(lambda: statefmt.load(files["statefmt"])),
        "safetensors.numpy.load_file": best(lambda: safetensors.numpy.load_file(files["safetensors"])),
        "torch.load(weights_only=True)": best(lambda: torch.load(files["torch"], weights_only=True)),
        "np.load(npz) into a dict": best(lambda: dict(np.load(files["numpy"]))),
        "floor: readinto new arrays, no checks": best(lambda: raw_read(arrays, files["statefmt"])),
    }
    peer = min(t for label, t in times.items() if not label.startswith(("statefmt", "floor")))
    for label, seconds in times.items():
        row(label, seconds, nbytes=nbytes, peer=None if label.startswith("statefmt") else peer)
    row("statefmt / fastest peer", times["statefmt.load"], peer=peer, note="target <= 1.00x")
    validate = best(lambda: statefmt.validate(files["statefmt"]))
    row("statefmt.validate (checksums, finiteness)", validate, nbytes=nbytes, peer=times["statefmt.load"],
        note="vs statefmt.load, target <= 0.50x")
    row("floor: readinto one 1 MiB buffer, no checks", best(lambda: raw_read(arrays, files["statefmt"], keep=False)),
        nbytes=nbytes, peer=times["statefmt.load"])
    return files


def one_stream(directory: str, big: str) -> None:
    print("one stream: load(path, streams=[k]), 512 MiB file vs 1 MiB file (128 streams)")
    small = os.path.join(directory, "small.statefmt")
    statefmt.save(state_set(payload(128)), small, durable=False)
    big_time = best(lambda: statefmt.load(big, streams=[40_000]), repeat=20)
    small_time = best(lambda: statefmt.load(small, streams=[100]), repeat=20)
    row("from the 512 MiB file", big_time, peer=small_time, note="vs 1 MiB file, target <= 2.00x, a few ms")
    row("from the 1 MiB file", small_time)
    print("  the same with stream ids (65,536 ids vs 128 ids in the metadata), by id")
    arrays = payload()
    ids_big, ids_small = os.path.join(directory, "ids.statefmt"), os.path.join(directory, "ids-small.statefmt")
    ids = [f"stream-{i}" for i in range(arrays["layers.0.h"].shape[1])]
    statefmt.save(state_set(arrays, ids), ids_big, durable=False)
    del arrays
    statefmt.save(state_set(payload(128), [f"stream-{i}" for i in range(128)]), ids_small, durable=False)
    big_time = best(lambda: statefmt.load(ids_big, streams=["stream-40000"]), repeat=10)
    small_time = best(lambda: statefmt.load(ids_small, streams=["stream-100"]), repeat=10)
    row("from the 512 MiB file, 65,536 ids", big_time, peer=small_time, note="vs 1 MiB file with 128 ids")
    row("from the 1 MiB file, 128 ids", small_time)
    unlink(ids_big)


def exports() -> None:
    print("export from JAX (Flax) and Keras: host copies, one LSTM layer (in a process of their own)")
    result = subprocess.run([sys.executable, "-m", "benchmarks._exports"], capture_output=True, text=True, cwd=REPO,
                            check=False)  # a framework missing here should not stop the other figures
    print(result.stdout, end="" if result.returncode == 0 else f"  failed: {result.stderr.strip()[-300:]}\n")


def memory(directory: str, files: dict[str, str], nbytes: int) -> None:
    print("peak extra memory (RSS high-water mark in a fresh process, page-cache pages it maps included)")
    for action in ("save", "load"):
        for library in ("statefmt", "safetensors", "torch", "numpy"):
            command = [sys.executable, "-m", "benchmarks._memory", f"{action}-{library}", directory, files[library]]
            extra = int(subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout)
            target = "target <= 1.20x" if library == "statefmt" else ""
            print(f"  {action} {library:<12} {extra / MiB:8.0f} MiB  {extra / nbytes:5.2f}x payload  {target}")


def cold_start(directory: str) -> None:
    print("CLI cold start: `statefmt validate small_file` vs `python -c 'import numpy, safetensors'`")
    small = os.path.join(directory, "small.statefmt")
    cli = [str(Path(sys.executable).with_name("statefmt")), "validate", small]
    base = [sys.executable, "-c", "import numpy, safetensors"]
    ours, theirs = [], []
    for _ in range(7):  # interleaved, so both see the same load on the machine
        for command, times in ((cli, ours), (base, theirs)):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    row("statefmt validate small_file", min(ours), peer=min(theirs), note="target <= 2.00x")
    row("python -c 'import numpy, safetensors'", min(theirs))


def reinjection(states, nbytes: int) -> None:
    print("reinjection and export with PyTorch (CPU)")
    one = states.select([0])
    single = torch.nn.LSTM(UNITS, UNITS, num_layers=1)
    h0, c0 = torch_adapter.initial_state(one, single)
    shared = h0.data_ptr() == one[0]["h"].ctypes.data and c0.data_ptr() == one[0]["c"].ctypes.data
    row("initial_state, 1 layer (64+64 MiB)", best(lambda: torch_adapter.initial_state(one, single)),
        note=f"shares memory with the loaded arrays: {shared}")
    stacked = torch.nn.LSTM(UNITS, UNITS, num_layers=LAYERS)
    row("initial_state, 4 layers stacked (512 MiB)", best(lambda: torch_adapter.initial_state(states, stacked)),
        nbytes=nbytes, note="one copy: torch.cat into the stacked tensor")
    h_n = torch.zeros(LAYERS, states.batch_size, UNITS)
    c_n = torch.zeros(LAYERS, states.batch_size, UNITS)
    exported = torch_adapter.export(stacked, (h_n, c_n))
    zero_copy = exported[0]["h"].ctypes.data == h_n.data_ptr()
    row("export, 4 layers (512 MiB)", best(lambda: torch_adapter.export(stacked, (h_n, c_n))),
        note=f"shares memory with the tensors (no host copy): {zero_copy}")


def main() -> None:
    started = time.perf_counter()
    print(f"statefmt benchmarks, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(machine())
    arrays = payload()
    states = state_set(arrays)
    nbytes = sum(array.nbytes for array in arrays.values())
    print(f"payload: {LAYERS}-layer LSTM, {states.batch_size} streams x {UNITS} units, h and c, float32, "
          f"{nbytes / MiB:.0f} MiB; best of {REPEAT} unless said\n")
    directory = tempfile.mkdtemp(prefix=".bench-", dir=REPO)  # the repository's disk, not tmpfs
    try:
        saves(directory, arrays, states, nbytes)
        files = loads(directory, arrays, states, nbytes)
        one_stream(directory, files["statefmt"])
        reinjection(states, nbytes)
        del arrays, states
        exports()
        memory(directory, files, nbytes)
        cold_start(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
