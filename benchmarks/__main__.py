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

import statefmt
from benchmarks._memory import LAYERS, UNITS, payload, state_set
from benchmarks._timing import best
from statefmt.adapters import torch as torch_adapter

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
REPEAT = 5


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


def loads(directory: str, arrays, states, nbytes: int, *, timed: bool = True) -> dict[str, str]:
    """The four files every later section reads, and (`timed`) their loads side by side."""
    files = {library: os.path.join(directory, f"load.{suffix}") for library, suffix in
             (("statefmt", "statefmt"), ("safetensors", "safetensors"), ("torch", "pt"), ("numpy", "npz"))}
    statefmt.save(states, files["statefmt"], durable=False)
    safetensors.numpy.save_file(arrays, files["safetensors"])
    torch.save({key: torch.from_numpy(array) for key, array in arrays.items()}, files["torch"])
    np.savez(files["numpy"], **arrays)
    if not timed:
        return files
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
    print("one stream: load(path, streams=[k]), 512 MiB file vs 1 MiB file (128 streams), by index")
    small = os.path.join(directory, "small.statefmt")
    statefmt.save(state_set(payload(128)), small, durable=False)
    big_time = best(lambda: statefmt.load(big, streams=[40_000]), repeat=20)
    small_time = best(lambda: statefmt.load(small, streams=[100]), repeat=20)
    row("from the 512 MiB file", big_time, peer=small_time, note="vs 1 MiB file, target <= 2.00x, a few ms")
    row("from the 1 MiB file", small_time)


SCALE = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
BULK = (1_000_000, 10_000_000)  # the sizes whose whole save and load are set beside the peer


def scale(directory: str) -> dict[str, dict[str, float]]:
    """One stream by id (and by index) out of files of 10^3 to 10^7 streams: the id index keeps it flat.
    At 10^6 and 10^7, the whole save and load too, beside safetensors writing the same arrays plus the ids
    as one bytes tensor (newline-joined) and reading them back with the ids decoded."""
    print("one stream by id, from files of 10^3 to 10^7 named streams (2-layer LSTM, 8 units, float32); at 10^6\n"
          "and 10^7 the whole save and load beside safetensors + the ids as one newline-joined bytes tensor")
    by_id_results: dict[str, float] = {}
    bulk: dict[str, float] = {}
    for count in SCALE:
        path = os.path.join(directory, f"scale-{count}.statefmt")
        rng = np.random.default_rng(count)
        layers = [statefmt.LayerState(f"lstm_{i}", "lstm", h=rng.random((1, count, 8), np.float32),
                                      c=rng.random((1, count, 8), np.float32)) for i in range(2)]
        ids = [f"sensor-{i:08d}" for i in range(count)]
        states = statefmt.StateSet(layers, stream_ids=ids)
        repeat = 1 if count < BULK[0] else 3 if count == BULK[0] else 2
        saved = best(lambda path=path, states=states: statefmt.save(states, path, durable=False), repeat=repeat)
        if count in BULK:
            bulk.update(bulk_ids(directory, count, layers, ids, path, saved))
        del layers, ids, states
        probe = [f"sensor-{(count * 7) // 9 + i:08d}" for i in range(REPEAT * 4)]
        by_id = best(lambda path=path, probe=probe: statefmt.load(path, streams=[probe.pop()]), repeat=REPEAT * 4)
        by_index = best(lambda path=path, count=count: statefmt.load(path, streams=[count // 3]), repeat=REPEAT * 4)
        by_id_results[str(count)] = by_id
        base = by_id_results[str(SCALE[0])]
        row(f"{count:>10,} streams: by id", by_id, peer=base, note=f"vs 10^3, target <= 2.00x; by index "
            f"{by_index * 1e3:.2f} ms; save {saved:.2f} s, file {os.path.getsize(path) / MiB:.0f} MiB")
        unlink(path)
    return {"one_stream_by_id_seconds": by_id_results, "bulk_ids_seconds": bulk}


def bulk_ids(directory: str, count: int, layers, ids: list[str], path: str, saved: float) -> dict[str, float]:
    """Whole save and load of `count` named streams against the safetensors-plus-ids peer: the id index's
    cost in bulk (hashing, sorting, decoding, checking), which per-id Python once made 11x the peer's."""
    peer_path = os.path.join(directory, "scale-peer.safetensors")
    repeat = 3

    def peer_save() -> None:
        tensors = {f"layers.{i}.{name}": layer[name] for i, layer in enumerate(layers) for name in ("h", "c")}
        tensors["stream_ids"] = np.frombuffer("\n".join(ids).encode(), np.uint8)
        safetensors.numpy.save_file(tensors, peer_path)

    def peer_load() -> tuple[dict, list[str]]:
        tensors = safetensors.numpy.load_file(peer_path)
        return tensors, tensors.pop("stream_ids").tobytes().decode().split("\n")

    peer_saved = best(peer_save, repeat=repeat)
    loaded = best(lambda: statefmt.load(path), repeat=repeat)
    peer_loaded = best(peer_load, repeat=repeat)
    unlink(peer_path)
    row(f"{count:>10,} streams: save", saved, peer=peer_saved, note="vs the peer, target <= 2.00x")
    row(f"{count:>10,} streams: peer save (safetensors + ids)", peer_saved)
    row(f"{count:>10,} streams: whole load", loaded, peer=peer_loaded,
        note="vs the peer, target <= 2.00x; every block and the whole index checked")
    row(f"{count:>10,} streams: peer load (ids decoded)", peer_loaded)
    return {f"{count}_save": saved, f"{count}_peer_save": peer_saved, f"{count}_load": loaded,
            f"{count}_peer_load": peer_loaded}


def load_breakdown(files: dict[str, str], arrays, nbytes: int) -> dict[str, float]:
    """Where a whole load's time goes, and the load-then-use figure beside the peers: each array summed
    after the load, as a caller would touch them."""
    from statefmt import _container

    def summed(values) -> float:
        return sum(float(np.add.reduce(value, axis=None)) for value in values)

    print("whole load, then every array summed (page cache warm); and where statefmt.load's time goes")
    times = {
        "statefmt.load + sum": best(lambda: summed(layer[name] for layer in statefmt.load(files["statefmt"]).layers
                                                   for name in layer.state_names), repeat=7),
        "safetensors.numpy.load_file + sum": best(lambda: summed(safetensors.numpy.load_file(
            files["safetensors"]).values()), repeat=7),
        "torch.load(weights_only=True) + sum": best(lambda: summed(tensor.numpy() for tensor in torch.load(
            files["torch"], weights_only=True).values()), repeat=7),
    }
    peer = min(seconds for label, seconds in times.items() if not label.startswith("statefmt"))
    for label, seconds in times.items():
        row(label, seconds, nbytes=nbytes, peer=None if label.startswith("statefmt") else peer)
    row("statefmt / fastest peer, load + sum", times["statefmt.load + sum"], peer=peer,
        note="target <= 0.67x (1.5x faster)")
    chunk = _container.CHUNK_BLOCKS * 65_536
    flat = [array.reshape(-1) for array in arrays.values()]
    raw = [array.view(np.uint8) for array in flat]
    parts = {
        "fresh pages: np.empty + fill (huge pages)": lambda: [np.ones(array.nbytes, np.uint8) for array in flat],
        "copy out of the page cache (one reused buffer)": lambda: raw_read(arrays, files["statefmt"], keep=False),
        "xxh3 of every 64 KiB block": lambda: [_container.block_hash(data[i:i + 65_536]) for data in raw
                                               for i in range(0, data.size, 65_536)],
        "finite check of whole arrays (what load does)": lambda: [_container.count_nonfinite(array)
                                                                  for array in flat],
        "finite check of each 1 MiB chunk (ablation)": lambda: [_container.count_nonfinite(data[i:i + chunk].view(
            np.float32)) for data in raw for i in range(0, data.size, chunk)],
        "sum of every array (the caller's use)": lambda: summed(flat),
    }
    for label, action in parts.items():
        times[label] = best(action, repeat=7)
        row(f"  {label}", times[label], nbytes=nbytes, peer=times["statefmt.load + sum"], note="share of load + sum")
    return times


def ablations(directory: str, states) -> None:
    """Hand-written machinery, each against the plain way it replaces: keep only what pays."""
    import json

    from statefmt import _container, _document

    print("ablation: what each piece of hand-written machinery buys")
    path = os.path.join(directory, "ablation.statefmt")
    threaded = best(lambda: statefmt.save(states, path, durable=False), before=lambda: unlink(path))
    _container.THREADED = False
    try:
        inline = best(lambda: statefmt.save(states, path, durable=False), before=lambda: unlink(path))
    finally:
        _container.THREADED = True
    row("save, writer thread (copy+hash || write)", threaded, peer=inline, note="vs the same save, all inline")
    row("save, inline", inline)
    statefmt.save(states.select([0]).rows(list(range(8))), path, durable=False)
    document = json.loads(_container.Container(statefmt._source.open_source(path)).metadata["statefmt"])
    walk = best(lambda: _document._conforms(document, _document.schema("2")), repeat=200)
    import jsonschema

    validator = jsonschema.Draft202012Validator(_document.schema("2"))
    schema_time = best(lambda: validator.validate(document), repeat=200)
    row("schema check: quick walk of the schema", walk, peer=schema_time, note="vs jsonschema, warm")
    row("schema check: jsonschema (warm)", schema_time)
    imported = subprocess.run([sys.executable, "-X", "importtime", "-c", "import jsonschema"], capture_output=True,
                              text=True, check=True).stderr.splitlines()[-1]
    print(f"  import jsonschema (cold, once per process): {int(imported.split('|')[1]) / 1e3:.1f} ms cumulative")
    unlink(path)


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


def _write_results(name: str, results: dict) -> None:
    """Figures for the docs' plots: benchmarks/results/NAME.json."""
    import json

    folder = REPO / "benchmarks" / "results"
    folder.mkdir(exist_ok=True)
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    (folder / f"{name}.json").write_text(json.dumps({"measured": stamp, "machine": machine(), **results}, indent=1))


SECTIONS = ("saves", "loads", "breakdown", "one_stream", "ablations", "reinjection", "exports", "memory",
            "cold_start", "scale")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help=f"a comma-separated subset of {', '.join(SECTIONS)}")
    only = parser.parse_args().only
    wanted = set(only.split(",") if only else SECTIONS)
    if not wanted <= set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(wanted - set(SECTIONS))}")
    started = time.perf_counter()
    print(f"statefmt benchmarks, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(machine())
    arrays = payload()
    states = state_set(arrays)
    nbytes = sum(array.nbytes for array in arrays.values())
    print(f"payload: {LAYERS}-layer LSTM, {states.batch_size} streams x {UNITS} units, h and c, float32, "
          f"{nbytes / MiB:.0f} MiB; best of {REPEAT} unless said\n")
    directory = tempfile.mkdtemp(prefix=".bench-", dir=REPO)  # the repository's disk, not tmpfs
    results: dict = {}
    try:
        if "saves" in wanted:
            saves(directory, arrays, states, nbytes)
        files = loads(directory, arrays, states, nbytes, timed="loads" in wanted)
        if "breakdown" in wanted:
            results["whole_load_seconds"] = load_breakdown(files, arrays, nbytes)
        if "one_stream" in wanted:
            one_stream(directory, files["statefmt"])
        if "ablations" in wanted:
            ablations(directory, states)
        if "reinjection" in wanted:
            reinjection(states, nbytes)
        del arrays, states
        if "exports" in wanted:
            exports()
        if "memory" in wanted:
            memory(directory, files, nbytes)
        if "cold_start" in wanted:
            cold_start(directory)
        if "scale" in wanted:
            results.update(scale(directory))
        if wanted == set(SECTIONS):
            _write_results("file", results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
