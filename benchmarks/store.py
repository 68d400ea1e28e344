"""The fleet store beside raw Lance and a Redis server: `python -m benchmarks.store [--streams N] [--huge]`.

A fleet of 1M streams of a 2-layer, 64-unit LSTM in float32 (4 columns of 64 floats: 1 KiB a stream).
Every statefmt figure has its raw peer on the same Arrow table: `write_dataset`, `to_table` with the
same id filter, `merge_insert`. Redis (Debian's redis-server on loopback, RAM only, no persistence) is
the in-memory yardstick: it keeps one 1 KiB value per stream and gives no durability, versions or
object storage. Best of N for bulk operations, p50/p99 over many calls for point gets. The get-one cost
is also taken at 10^4, 10^5 and 10^6 streams, and on moto's S3 server on loopback, with the requests
it made counted from the server's own request log, with a put of 10^5 streams there. Results go to
benchmarks/results/store.json as well. `--huge` adds `benchmarks.store_scale` from 10^4 to 10^7.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import statefmt
from benchmarks._timing import best
from statefmt import LayerSignature, LayerState, StateSet, StateSignature, store
from statefmt.store._durable import make_durable

LAYERS, UNITS = 2, 64
COLUMNS = [f"layer{i}_{s}" for i in range(LAYERS) for s in ("h", "c")]
RESULTS = Path(__file__).resolve().parent / "results" / "store.json"
SIGNATURE = StateSignature([LayerSignature("lstm", UNITS, name=f"l{i}") for i in range(LAYERS)], dtype="float32")


def ids_for(n: int, first: int = 0) -> list[str]:
    return [f"stream-{i:08d}" for i in range(first, first + n)]


def arrays_for(n: int, seed: int) -> dict[str, np.ndarray]:
    """[rows, UNITS] float32 per column, random."""
    rng = np.random.default_rng(seed)
    return {name: rng.random((n, UNITS), dtype=np.float32) for name in COLUMNS}


def state_set(ids: list[str], arrays: dict[str, np.ndarray]) -> StateSet:
    layers = [LayerState(f"l{i}", "lstm", h=arrays[f"layer{i}_h"][None], c=arrays[f"layer{i}_c"][None])
              for i in range(LAYERS)]
    return StateSet(layers, stream_ids=ids)


def raw_table(ids: list[str], arrays: dict[str, np.ndarray], schema):
    """The same rows as an Arrow table, built with pyarrow alone (the raw peer's input)."""
    import pyarrow as pa

    columns = [pa.array(ids, pa.string())]
    columns += [pa.FixedSizeListArray.from_arrays(pa.array(arrays[name].reshape(-1)), UNITS) for name in COLUMNS]
    return pa.Table.from_arrays(columns, schema=schema)


def duel(ours, theirs, repeat: int, before_ours=None, before_theirs=None) -> tuple[float, float]:
    """Best of `repeat` for each, the two taking turns, so that a noisy neighbour hits both alike."""
    mine, peers = [], []
    for _ in range(repeat):
        peers.append(best(theirs, repeat=1, before=before_theirs))
        mine.append(best(ours, repeat=1, before=before_ours))
    return min(mine), min(peers)


def percentiles(action, keys) -> tuple[float, float]:
    times = []
    for key in keys:
        start = time.perf_counter()
        action(key)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def section(self, title: str) -> None:
        print(f"\n{title}")

    def row(self, key: str, label: str, seconds: float, *, peer: float | None = None, peer_name: str = "",
            p99: float | None = None, note: str = "") -> None:
        ratio = f"{seconds / peer:6.2f}x {peer_name}" if peer else ""
        tail = f"  p99 {p99 * 1e3:8.2f} ms" if p99 is not None else ""
        print(f"  {label:<46} {seconds * 1e3:10.2f} ms{tail}  {ratio}  {note}".rstrip())
        self.rows.append({"key": key, "label": label, "seconds": seconds, "p99": p99, "peer_seconds": peer,
                          "peer": peer_name or None, "ratio": seconds / peer if peer else None, "note": note})


def machine() -> str:
    import lance
    import pyarrow

    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu} | {os.cpu_count()} cores | {memory:.0f} GiB | Linux {platform.release()} | "
            f"Python {platform.python_version()}, pylance {lance.__version__}, pyarrow {pyarrow.__version__}, "
            f"statefmt {statefmt.__version__}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- the sections -------------------------------------------------------------------------------------------------

def fleet_vs_raw(report: Report, work: Path, n: int, repeat: int) -> dict:
    import lance
    import pyarrow.compute as pc

    ids, arrays = ids_for(n), arrays_for(n, seed=0)
    states = state_set(ids, arrays)
    url, raw = str(work / "fleet.lance"), str(work / "raw.lance")
    schema = lance.dataset(store.create(str(work / "probe"), SIGNATURE).url).schema  # the same table, by design,
    schema = schema.remove(schema.get_field_index("row_checksum"))  # less the verification raw Lance does not do
    table = raw_table(ids, arrays, schema)

    report.section(f"write the whole fleet: {n:,} streams x 1 KiB, best of {repeat + 2}, taking turns")
    def ours() -> None:
        store.create(url, SIGNATURE, states=states)

    def ours_put() -> None:
        store.create(url, SIGNATURE).put(states)

    def theirs() -> None:
        lance.write_dataset(table, raw, schema=schema).create_scalar_index("stream_id", "BTREE", name="stream_id_idx")
        make_durable(raw, 0)  # Lance never fsyncs; statefmt does: the same fsyncs on both sides

    def clear(path: str):
        def clear() -> None:  # and flush the last run's gigabyte, so that no run pays for the one before
            shutil.rmtree(path, ignore_errors=True)
            os.sync()
        return clear

    raw_write = best(lambda: lance.write_dataset(table, raw, schema=schema), repeat=repeat, before=clear(raw))
    write_put = best(ours_put, repeat=1, before=clear(url))
    write, raw_indexed = duel(ours, theirs, repeat + 2, clear(url), clear(raw))  # the noisiest figure: 2 more
    report.row("raw_write", "raw Lance write_dataset", raw_write)
    report.row("raw_write_indexed", "raw Lance write_dataset + BTREE index + fsync", raw_indexed)
    report.row("write", "statefmt create(states=) (checked, indexed)", write, peer=raw_indexed, peer_name="raw",
               note=f"throughput {raw_indexed / write:.2f}x raw (target >= 0.8x)")
    report.row("write_put", "statefmt create + put (an upsert: a join)", write_put, peer=raw_indexed,
               peer_name="raw", note="once")
    own = best(lambda: store.open(url).check(states), repeat=repeat)
    report.row("write_own", "  of which statefmt's checks + Arrow conversion", own,
               note=f"{own / write:.0%} of the write; the rest is Lance's, and the disk's noise")

    fleet, dataset = store.open(url), lance.dataset(raw)
    rng = np.random.default_rng(1)
    report.section("get by id (rows in the order asked, checked finite, as a StateSet)")
    sample = [ids[i] for i in rng.integers(0, n, 300)]
    fleet.get(sample[:5])
    mine, peers = [], []
    for key in sample:  # taking turns, call by call
        peers.append(best(lambda key=key: dataset.to_table(columns=["stream_id", *COLUMNS],
                                                           filter=pc.field("stream_id") == key), repeat=1))
        mine.append(best(lambda key=key: fleet.get([key]), repeat=1))
    p50, p99, raw50, raw99 = (float(np.percentile(t, q)) for t in (mine, peers) for q in (50, 99))
    report.row("raw_get1", "raw Lance to_table(filter id ==)", raw50, p99=raw99)
    report.row("get1", "statefmt get 1 stream (p50; target <= 2 ms)", p50, p99=p99, peer=raw50, peer_name="raw")
    figures = {"get1_p50": p50, "get1_p99": p99}
    for size, target in ((1000, ""), (10_000, " (target <= 0.5 s)")):
        keys = [[ids[i] for i in rng.choice(n, size, replace=False)] for _ in range(repeat)]
        mine_turn, peer_turn = iter(keys), iter(keys)  # the same ids for both
        many, raw_many = duel(lambda t=mine_turn: fleet.get(next(t)),
                              lambda t=peer_turn: dataset.to_table(columns=["stream_id", *COLUMNS],
                                                                   filter=pc.field("stream_id").isin(next(t))), repeat)
        report.row(f"raw_get{size}", f"raw Lance to_table(filter id in {size:,})", raw_many)
        report.row(f"get{size}", f"statefmt get {size:,} random streams{target}", many, peer=raw_many,
                   peer_name="raw")
        figures[f"get{size}"] = many

    report.section(f"put (upsert) 10,000 random streams, one commit, best of {repeat}")
    batches = []
    for turn_seed in range(repeat * 3):
        chosen = rng.choice(n, 10_000, replace=False)
        new = arrays_for(10_000, seed=100 + turn_seed)
        batches.append((state_set([ids[i] for i in chosen], new), raw_table([ids[i] for i in chosen], new, schema)))
    mine_turn, peer_turn = iter(batches), iter(batches)  # the same rows for both

    def raw_upsert(durable: bool = True) -> None:
        started = time.time_ns()
        dataset.merge_insert("stream_id").when_matched_update_all().when_not_matched_insert_all().execute(
            next(peer_turn)[1])
        if durable:
            make_durable(raw, started)

    versions: list[tuple[int, int]] = []
    put, raw_put = duel(lambda: versions.append((fleet.version, fleet.put(next(mine_turn)[0]))), raw_upsert, repeat)
    raw_put_volatile = best(lambda: raw_upsert(durable=False), repeat=repeat)
    one_commit = all(after == before + 1 for before, after in versions)
    report.row("raw_put10k_volatile", "raw Lance merge_insert (no fsync)", raw_put_volatile)
    report.row("raw_put10k", "raw Lance merge_insert + fsync", raw_put)
    report.row("put10k", "statefmt put (the data commit)", put, peer=raw_put, peer_name="raw",
               note=f"one new version each: {one_commit}")

    after = [ids[i] for i in rng.integers(0, n, 200)]
    p50_after, p99_after = percentiles(lambda key: fleet.get([key]), after)
    report.row("get1_after_puts", f"statefmt get 1 after {2 * repeat} puts", p50_after, p99=p99_after)
    figures.update(write=write, put10k=put, one_commit=one_commit)
    return {"ids": ids, "arrays": arrays, "url": url, **figures}


def redis_peer(report: Report, work: Path, fleet: dict, repeat: int) -> None:
    executable = shutil.which("redis-server")
    report.section("Redis peer: redis-server on loopback, RAM only (no durability, no versions, no object store)")
    if executable is None:
        print("  redis-server is not installed here (apt-get install redis-server): no Redis figures")
        return
    import redis

    port = free_port()
    server = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        ids, arrays = fleet["ids"], fleet["arrays"]
        values = np.concatenate([arrays[name] for name in COLUMNS], axis=1)  # [n, 256] float32: 1 KiB a stream

        def load() -> None:
            client.flushall()
            for start in range(0, len(ids), 10_000):
                client.mset({ids[i]: values[i].tobytes() for i in range(start, min(start + 10_000, len(ids)))})

        write = best(load, repeat=1)
        report.row("redis_write", "Redis MSET the whole fleet (pipelined 10k)", write)
        rng = np.random.default_rng(2)
        sample = [ids[i] for i in rng.integers(0, len(ids), 300)]
        p50, p99 = percentiles(lambda key: np.frombuffer(client.get(key), np.float32), sample)
        report.row("redis_get1", "Redis GET 1", p50, p99=p99, note=f"statefmt is {fleet['get1_p50'] / p50:.1f}x")
        for size in (1000, 10_000):
            keys = [[ids[i] for i in rng.choice(len(ids), size, replace=False)] for _ in range(repeat)]
            turn = iter(keys)
            many = best(lambda turn=turn: [np.frombuffer(v, np.float32) for v in client.mget(next(turn))],
                        repeat=repeat)
            report.row(f"redis_get{size}", f"Redis MGET {size:,}", many,
                       note=f"statefmt is {fleet[f'get{size}'] / many:.1f}x")
        chosen = [ids[i] for i in rng.choice(len(ids), 10_000, replace=False)]
        put = best(lambda: client.mset({key: values[0].tobytes() for key in chosen}), repeat=repeat)
        report.row("redis_put10k", "Redis MSET 10,000", put, note=f"statefmt is {fleet['put10k'] / put:.1f}x")
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def scale(report: Report, work: Path, fleet: dict) -> None:
    report.section("get 1 stream by id as the fleet grows (compacted stores; p50, p99 over 200 random ids)")
    sizes = [10**4, 10**5]
    rng = np.random.default_rng(3)
    results = {}
    for n in sizes:
        url = str(work / f"scale-{n}.lance")
        shutil.rmtree(url, ignore_errors=True)
        target = store.create(url, SIGNATURE)
        for first in range(0, n, 10**6):  # a million streams a commit
            count = min(10**6, n - first)
            source = fleet["arrays"] if count <= len(fleet["ids"]) else arrays_for(count, seed=first)
            target.put(state_set(ids_for(count, first), {k: v[:count] for k, v in source.items()}))
        target.compact()
        results[n] = url
    store.open(fleet["url"]).compact()  # like the smaller ones: compacted, every row indexed
    results[len(fleet["ids"])] = fleet["url"]
    for n in sorted(results):
        target = store.open(results[n])
        sample = [f"stream-{i:08d}" for i in rng.integers(0, n, 200)]
        target.get(sample[:3])
        p50, p99 = percentiles(lambda key, target=target: target.get([key]), sample)
        report.row(f"scale_get1_{n}", f"statefmt get 1 of {n:,} streams", p50, p99=p99)
        if n != len(fleet["ids"]):
            shutil.rmtree(results[n], ignore_errors=True)


def s3(report: Report, n: int = 10_000) -> None:
    report.section(f"on S3: moto's server on loopback, a store of {n:,} streams; requests from the server's log")
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("  moto is not installed: no S3 figures")
        return
    requests: list[str] = []

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # werkzeug colours some lines
            if '"' in message:
                requests.append(message.split('"')[1].split(" ")[0])

    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(Count())
    werkzeug.propagate = False
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="fleet")
        options = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1",
                   "aws_endpoint": endpoint, "allow_http": "true"}
        url = "s3://fleet/pumps"
        store.create(url, SIGNATURE, storage_options=options).put(state_set(ids_for(n), arrays_for(n, seed=4)))

        def counted(action):
            del requests[:]
            start = time.perf_counter()
            result = action()
            return result, time.perf_counter() - start, dict(sorted(
                {method: requests.count(method) for method in set(requests)}.items()))

        opened, seconds, made = counted(lambda: store.open(url, storage_options=options))
        report.row("s3_open", "open the store", seconds, note=f"requests {made}")
        _, seconds, made = counted(lambda: opened.get(["stream-00000042"]))
        report.row("s3_get1_cold", "get 1 stream, first (cold caches)", seconds, note=f"requests {made}")
        rng = np.random.default_rng(5)
        timings, counts = [], []
        for i in rng.integers(0, n, 30):
            _, seconds, made = counted(lambda i=i: opened.get([f"stream-{i:08d}"]))
            timings.append(seconds)
            counts.append(sum(made.values()))
        import lance
        import pyarrow.compute as pc

        dataset = lance.dataset(url, storage_options=options)
        dataset.to_table(filter=pc.field("stream_id") == "stream-00000042")
        raw_timings = []
        for i in rng.integers(0, n, 30):
            _, seconds, made = counted(lambda i=i: dataset.to_table(
                columns=["stream_id", *COLUMNS], filter=pc.field("stream_id") == f"stream-{i:08d}"))
            raw_timings.append(seconds)
        report.row("s3_raw_get1", "raw Lance to_table(filter id ==), warm (p50 of 30)", float(np.median(raw_timings)),
                   p99=float(np.percentile(raw_timings, 99)), note=f"requests {made}")
        report.row("s3_get1", "statefmt get 1 stream, warm (p50 of 30)", float(np.median(timings)),
                   p99=float(np.percentile(timings, 99)), peer=float(np.median(raw_timings)), peer_name="raw",
                   note=f"requests per get: median {int(np.median(counts))}, max {max(counts)} "
                        "(one range read per column)")
        from benchmarks.store_scale import peak_rss

        for size, first in ((10_000, n // 2), (100_000, n // 2)):  # half updates, half new streams
            states = state_set(ids_for(size, first), arrays_for(size, seed=size))
            (took, rss, _), _, made = counted(lambda states=states: peak_rss(lambda: opened.put(states)))
            report.row(f"s3_put{size}", f"statefmt put {size:,} streams into the S3 store", took,
                       note=f"peak RSS {rss.peak_mib:.0f} MiB (+{rss.extra_mib:.0f}); requests {made}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10**6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--huge", action="store_true", help="also the store at fleet scale, 10^4 to 10^7 streams "
                        "(benchmarks.store_scale: 25 GiB on disk, 30 minutes)")
    args = parser.parse_args()
    print(f"statefmt store benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(machine())
    report = Report()
    with tempfile.TemporaryDirectory(prefix="statefmt-store-bench-", dir=os.environ.get("BENCH_DIR")) as work:
        started = time.perf_counter()
        fleet = fleet_vs_raw(report, Path(work), args.streams, args.repeat)
        redis_peer(report, Path(work), fleet, args.repeat)
        scale(report, Path(work), fleet)
        s3(report)
        if args.huge:  # the store at fleet scale, 10^4 to 10^7 streams: benchmarks/results/store-scale.json
            from benchmarks import store_scale

            rows = store_scale.Rows(store_scale.RESULTS)
            for n in (10**4, 10**5, 10**6, 10**7):
                store_scale.one_size(rows, Path(work), n, stream_puts=100, raw=True)
            store_scale.writers(rows, Path(work))
            store_scale.checksum_cost(rows, Path(work))
        print(f"\n{time.perf_counter() - started:.0f} s in all; a shared, noisy machine: read ratios, not digits")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                   "machine": machine(), "streams": args.streams, "rows": report.rows},
                                  indent=1) + "\n")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
