"""The store at fleet scale, beside raw Lance: `python -m benchmarks.store_scale [--sizes 10000,100000] [--writers]`.

`python -m benchmarks.store --huge` runs it for 10^4 to 10^7 streams. Each size gets a fresh store
(2-layer LSTM, 64 units, float32: 1 KiB a stream) written by puts of at most 10^6 streams, then:
get 1 (p50, p99 over 200 random ids), get 10,000, puts of 10,000, 100,000 and 10^6 (as many as the
store holds), get 1 again (no compact), a stream of puts of 10,000 with get 1 after it, compact, get 1.
Every operation's time and the process's peak resident memory while it ran (VmHWM, reset before it:
the inputs it was handed included). The raw-Lance peer writes the same batches with `write_dataset`
(append) and a BTREE index, gets with `to_table(filter=)`, and puts with `merge_insert` as the store did
before it streamed its input. Figures go to benchmarks/results/store-scale.json after every row, so
a run stopped early keeps what it measured. `--checksum`: what verified rows cost, at 10^6 streams.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks._memory import reset_peak, status_bytes
from benchmarks.store import COLUMNS, SIGNATURE, arrays_for, ids_for, machine, percentiles, raw_table, state_set
from statefmt import store

RESULTS = Path(__file__).resolve().parent / "results" / "store-scale.json"
CHUNK = 10**6  # streams a put while the store is written
PUTS = (10_000, 100_000, 10**6)


class Memory(NamedTuple):
    """Resident memory while an operation ran: its peak, and what the process held just before (Lance's caches,
    the benchmark's inputs); the difference is the operation's own."""

    peak_mib: float
    before_mib: float

    @property
    def extra_mib(self) -> float:
        return self.peak_mib - self.before_mib


def peak_rss(action):
    """(seconds, `Memory` while `action()` ran, its result); the peak is reset before it starts."""
    reset_peak()
    before = status_bytes("VmRSS") / 2**20
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    return seconds, Memory(status_bytes("VmHWM") / 2**20, before), result


class Rows:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.document = json.loads(path.read_text()) if path.exists() else {"rows": []}
        self.document.update(machine=machine(), date=datetime.datetime.now(datetime.timezone.utc).isoformat())

    def add(self, streams: int, key: str, seconds: float, memory: Memory | None = None, **extra) -> None:
        self.document["rows"] = [r for r in self.document["rows"] if (r["streams"], r["key"]) != (streams, key)]
        if memory is not None:
            extra = {"rss_extra_mib": memory.extra_mib, **extra}
        self.document["rows"].append({"streams": streams, "key": key, "seconds": seconds,
                                      "rss_mib": None if memory is None else memory.peak_mib, **extra})
        rss = f"  peak RSS {memory.peak_mib:7.0f} MiB" if memory is not None else ""
        more = "".join(f"  {k} {v * 1e3:.2f} ms" if k in ("p99", "p90", "max") else f"  {k} {v:.2f}"
                       if isinstance(v, float) else f"  {k} {v}" for k, v in extra.items())
        print(f"  {streams:>10,}  {key:<28} {seconds * 1e3:11.2f} ms{rss}{more}", flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.document, indent=1) + "\n")


def chosen_ids(n: int, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"stream-{i:08d}" for i in np.sort(rng.choice(n, count, replace=False))]


def get_one(get, n: int, seed: int, count: int = 200) -> tuple[float, float]:
    """p50 and p99 of `get` over `count` random ids, after one warm-up call."""
    rng = np.random.default_rng(seed)
    keys = [f"stream-{i:08d}" for i in rng.integers(0, n, count)]
    get(keys[0])
    return percentiles(get, keys)


def one_size(rows: Rows, work: Path, n: int, stream_puts: int, raw: bool) -> None:
    import lance
    import pyarrow.compute as pc

    url, raw_url = str(work / f"fleet-{n}.lance"), str(work / f"raw-{n}.lance")
    for path in (url, raw_url):
        shutil.rmtree(path, ignore_errors=True)

    def create():
        fleet = store.create(url, SIGNATURE)
        for first in range(0, n, CHUNK):
            count = min(CHUNK, n - first)
            fleet.put(state_set(ids_for(count, first), arrays_for(count, seed=first)))
        return fleet

    seconds, rss, fleet = peak_rss(create)
    rows.add(n, "create", seconds, rss, note=f"create + puts of {min(n, CHUNK):,}")
    schema = lance.dataset(url).schema.remove(lance.dataset(url).schema.get_field_index("row_checksum"))
    dataset = None
    if raw:
        def raw_create():
            for first in range(0, n, CHUNK):
                count = min(CHUNK, n - first)
                lance.write_dataset(raw_table(ids_for(count, first), arrays_for(count, seed=first), schema), raw_url,
                                    schema=schema, mode="append" if first else "create")
            written = lance.dataset(raw_url)
            written.create_scalar_index("stream_id", "BTREE", name="stream_id_idx")
            return lance.dataset(raw_url)

        seconds, rss, dataset = peak_rss(raw_create)
        rows.add(n, "raw_create", seconds, rss)
    columns = ["stream_id", *COLUMNS]
    p50, p99 = get_one(lambda key: fleet.get([key]), n, seed=1)
    rows.add(n, "get1", p50, p99=p99)
    fresh = p50
    if dataset is not None:
        p50, p99 = get_one(lambda key: dataset.to_table(columns=columns, filter=pc.field("stream_id") == key), n, 1)
        rows.add(n, "raw_get1", p50, p99=p99)
    if n >= 10_000:
        keys = chosen_ids(n, 10_000, seed=2)
        seconds, rss, _ = peak_rss(lambda: fleet.get(keys))
        rows.add(n, "get10k", seconds, rss)
        if dataset is not None:
            seconds, rss, _ = peak_rss(lambda: dataset.to_table(columns=columns,
                                                                filter=pc.field("stream_id").isin(keys)))
            rows.add(n, "raw_get10k", seconds, rss)
    for size in PUTS:
        if size > n:
            continue
        ids = chosen_ids(n, size, seed=size)
        states = state_set(ids, arrays_for(size, seed=size + 1))
        version = fleet.version
        seconds, rss, _ = peak_rss(lambda states=states: fleet.put(states))
        rows.add(n, f"put{size}", seconds, rss, versions=fleet.version - version)
        if dataset is not None:
            table = raw_table(ids, arrays_for(size, seed=size + 1), schema)
            try:
                seconds, rss, _ = peak_rss(lambda dataset=dataset, table=table: dataset.merge_insert("stream_id")
                                           .when_matched_update_all().when_not_matched_insert_all().execute(table))
                rows.add(n, f"raw_put{size}", seconds, rss)
            except OSError as error:
                rows.add(n, f"raw_put{size}", float("nan"), None, failed=" ".join(str(error).split())[:160])
            dataset = lance.dataset(raw_url)
        del states
    p50, p99 = get_one(lambda key: fleet.get([key]), n, seed=3)
    rows.add(n, "get1_after_puts", p50, p99=p99, vs_fresh=p50 / fresh)
    if stream_puts:
        times, peaks, extras = [], [], []
        for turn in range(stream_puts):
            states = state_set(chosen_ids(n, min(10_000, n), seed=1000 + turn), arrays_for(min(10_000, n), seed=turn))
            seconds, rss, _ = peak_rss(lambda states=states: fleet.put(states))
            times.append(seconds)
            peaks.append(rss.peak_mib)
            extras.append(rss.extra_mib)
        rss_peak = Memory(max(peaks), max(peaks) - max(extras))  # the highest peak, and the largest put's own
        p50, p99 = get_one(lambda key: fleet.get([key]), n, seed=4)
        rows.add(n, f"get1_after_{stream_puts}_puts", p50, p99=p99, vs_fresh=p50 / fresh)
        rows.add(n, f"put10k_in_a_stream_of_{stream_puts}", float(np.median(times)), rss_peak,
                 p90=float(np.percentile(times, 90)), max=float(max(times)))
    seconds, rss, _ = peak_rss(fleet.compact)
    rows.add(n, "compact", seconds, rss)
    p50, p99 = get_one(lambda key: fleet.get([key]), n, seed=5)
    rows.add(n, "get1_compacted", p50, p99=p99)
    size_gib = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file()) / 2**30
    rows.add(n, "disk_gib", size_gib)
    for path in (url, raw_url):
        shutil.rmtree(path, ignore_errors=True)


def checksum_cost(rows: Rows, work: Path, n: int = 10**6, rounds: int = 9) -> None:
    """What verified rows cost (the issue's target: at most 10 % on create, put and get 10,000): a create(states=)
    of `n` streams, then three puts of 10,000 and gets of 10,000, with the row checksum and with it replaced by
    zeros (writing) or unchecked (reading), taking turns, each round on fresh stores; medians over the rounds."""
    from statefmt.store import _arrow

    real = _arrow.row_checksums

    def unverified(columns):
        return np.zeros(len(columns[0]), np.uint64)

    states = state_set(ids_for(n), arrays_for(n, seed=0))
    times: dict[tuple[str, bool], list[float]] = {}
    try:
        for turn in range(rounds):
            puts = [state_set(chosen_ids(n, 10_000, seed=50 + 3 * turn + k), arrays_for(10_000, seed=k))
                    for k in range(3)]
            gets = [chosen_ids(n, 10_000, seed=20 + 3 * turn + k) for k in range(3)]
            for verified in (True, False) if turn % 2 else (False, True):
                _arrow.row_checksums = real if verified else unverified
                url = work / f"checksum-{verified}.lance"
                shutil.rmtree(url, ignore_errors=True)
                started = time.perf_counter()
                fleet = store.create(str(url), SIGNATURE, states=states)
                times.setdefault(("create", verified), []).append(time.perf_counter() - started)
                fleet._verified = verified
                for put, keys in zip(puts, gets):  # three of each: these vary more than a create
                    for action, call, argument in (("put", fleet.put, put), ("get", fleet.get, keys)):
                        started = time.perf_counter()
                        call(argument)
                        times.setdefault((action, verified), []).append(time.perf_counter() - started)
                shutil.rmtree(url, ignore_errors=True)
    finally:
        _arrow.row_checksums = real
    for action, label in (("create", f"create{n}"), ("put", "put10000"), ("get", "get10k")):
        on, off = float(np.median(times[(action, True)])), float(np.median(times[(action, False)]))
        rows.add(n, f"checksum_cost_{label}", on, unverified=off, cost_pct=(on / off - 1) * 100)


WRITER = """
import sys, time
from benchmarks.store import arrays_for, state_set
from statefmt import store
fleet, me, puts = store.open(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
states = [state_set([f"w{me}-{turn}-{i}" for i in range(100)], arrays_for(100, seed=turn)) for turn in range(puts)]
print(time.time(), flush=True)
for s in states:
    fleet.put(s)
print(time.time(), flush=True)
"""


def writers(rows: Rows, work: Path, counts=(1, 2, 4, 8), puts: int = 20) -> None:
    """Commits per second of N processes each putting 100 new streams `puts` times into one local store."""
    print("\nconcurrent writers: N processes, each 20 puts of 100 new streams, one local store")
    for count in counts:
        url = str(work / f"writers-{count}.lance")
        store.create(url, SIGNATURE, states=state_set(ids_for(10_000), arrays_for(10_000, seed=0)))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(i), str(puts)], stdout=subprocess.PIPE,
                                  text=True, env=env) for i in range(count)]
        outputs = [p.communicate(timeout=900)[0].split() for p in procs]
        started, ended = min(float(o[0]) for o in outputs), max(float(o[1]) for o in outputs)
        commits = count * puts
        assert len(store.open(url)) == 10_000 + commits * 100
        rows.add(10_000, f"writers_{count}", ended - started, None, commits_per_s=commits / (ended - started))
        shutil.rmtree(url, ignore_errors=True)


TABLE = [("create (puts of ≤ 10⁶)", "create"), ("raw Lance: write_dataset + index", "raw_create"),
         ("get 1, p50 / p99", "get1"), ("raw Lance: get 1, p50 / p99", "raw_get1"),
         ("get 10,000", "get10k"), ("raw Lance: get 10,000", "raw_get10k"),
         ("put 10,000", "put10000"), ("raw Lance: merge_insert 10,000", "raw_put10000"),
         ("put 100,000", "put100000"), ("raw Lance: merge_insert 100,000", "raw_put100000"),
         ("put 10⁶", "put1000000"), ("raw Lance: merge_insert 10⁶", "raw_put1000000"),
         ("get 1 after those puts, no compact, p50 / p99", "get1_after_puts"),
         ("put 10,000 in a stream of 100: median (p90, max)", "put10k_in_a_stream_of_100"),
         ("get 1 after that stream, no compact, p50 / p99", "get1_after_100_puts"),
         ("compact", "compact"), ("get 1 once compacted, p50 / p99", "get1_compacted")]


def _duration(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _cell(row: dict | None) -> str:
    if row is None:
        return "\u2013"
    if "failed" in row:
        return "fails: out of memory" if "Resources exhausted" in row["failed"] else "fails"
    text = _duration(row["seconds"])
    if "p99" in row:
        text += f" / {_duration(row['p99'])}"
    if "p90" in row:
        text += f" ({_duration(row['p90'])}, {_duration(row['max'])})"
    if "vs_compacted" in row:
        text += f" ({row['vs_fresh']:.2f}\u00d7 fresh, {row['vs_compacted']:.2f}\u00d7 compacted)"
    elif "vs_fresh" in row:
        text += f" ({row['vs_fresh']:.2f}\u00d7)"
    if row.get("rss_mib") is not None:
        text += f", {row['rss_mib'] / 1024:.1f} GiB"
    if row.get("rss_extra_mib") is not None:
        text += f" (+{max(0.0, row['rss_extra_mib']) / 1024:.2f})"
    return text


def table(path: Path = RESULTS) -> str:
    """The figures of `path` as the Markdown table in docs/performance.md: time (and peak RSS) by size."""
    found = {(row["streams"], row["key"]): row for row in json.loads(path.read_text())["rows"]}
    sizes = sorted({streams for streams, key in found if key == "create"})
    lines = ["| operation (time; peak RSS in GiB, and above what the process held before) | "
             + " | ".join(f"{n:,} streams" for n in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for n in sizes:  # the yardstick: the same store freshly compacted
        after, compacted = found.get((n, "get1_after_100_puts")), found.get((n, "get1_compacted"))
        if after and compacted:
            after["vs_compacted"] = after["seconds"] / compacted["seconds"]
    lines += [f"| {label} | " + " | ".join(_cell(found.get((n, key))) for n in sizes) + " |" for label, key in TABLE]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stream-puts", type=int, default=100, help="puts of 10,000 in the stream (0: none)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw Lance peer")
    parser.add_argument("--writers", action="store_true", help="also the concurrent writers' commit throughput")
    parser.add_argument("--checksum", action="store_true", help="also what the row checksum costs, at 10^6 streams")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON file the figures are added to")
    parser.add_argument("--table", action="store_true", help="print the results as docs/performance.md's table")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        return
    rows = Rows(args.results)
    print(f"statefmt store at fleet scale, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(rows.document["machine"])
    with tempfile.TemporaryDirectory(prefix="statefmt-store-scale-", dir=os.environ.get("BENCH_DIR")) as work:
        for n in (int(size) for size in args.sizes.split(",")):
            print(f"\n{n:,} streams", flush=True)
            one_size(rows, Path(work), n, args.stream_puts, not args.no_raw)
        if args.writers:
            writers(rows, Path(work))
        if args.checksum:
            checksum_cost(rows, Path(work))
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
