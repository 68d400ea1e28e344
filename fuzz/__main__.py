"""The long fuzz run: `python -m fuzz --inputs 100000` (or `make fuzz`).

Input i uses `random.Random(seed * 1_000_003 + i)`, so a failure is replayed with
`--seed S --start i --inputs 1`. A seeded loop rather than hypothesis here: hypothesis
keeps a tree of every input it tried, which would grow the very memory this run watches.
Seeds: 2.0 files saved by statefmt (two re-blocked to 4 KiB blocks), the valid 2.0 vectors and
the frozen valid 1.0 vectors (`fuzz.mutations.seeds`). Every input gets `fuzz.mutations.verdict`:
`read` returns the seed's data (or what a re-sealed edit made of it) or raises StateFormatError
with the spec's step; `validate` agrees; `load(streams=...)` returns exactly the rows asked for,
ids included, or raises StateFormatError/StateMismatchError; no warning. Each input within
`--timeout` seconds, and the process's memory must not grow by more than `--max-growth-mb`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import gc
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from .mutations import mutate, seeds, verdict


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout


def _rss_mb() -> float:
    """Resident memory once freed memory has gone back to the system: what is still held, not the peak."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="how many mutated files to try")
    parser.add_argument("--seconds", type=float, default=600.0, help="stop earlier after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first input number (to replay one)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds allowed per input")
    parser.add_argument("--max-growth-mb", type=float, default=64.0, help="memory growth allowed after warm-up")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="statefmt-fuzz-") as folder:
        path = Path(folder) / "input.statefmt"
        pool = seeds(Path(folder))
        outcomes: Counter[str] = Counter()
        failures = []
        shown: Counter[str] = Counter()
        samples: list[str] = []  # resident MiB every 5000 inputs: a leak climbs, a high-water mark levels off
        slowest = (0.0, None)
        started = time.monotonic()
        baseline = None
        ran = 0
        for i in range(args.start, args.start + args.inputs):
            if time.monotonic() - started > args.seconds:
                break
            rnd = random.Random(args.seed * 1_000_003 + i)
            seed = rnd.choice(pool)
            try:
                mutant = mutate(seed, rnd)
            except Exception as error:  # a bug of the fuzzer itself: counted as a failure, the run goes on
                outcomes[f"mutator: {type(error).__name__}"] += 1
                failures.append(f"input {i} (mutating {seed.name}): {traceback.format_exc(limit=-3)}"[:3000])
                ran += 1
                continue
            kind, mutated = mutant.kind, mutant.data
            path.unlink(missing_ok=True)  # a new file, not a truncated one: ext4 flushes on truncate-and-rewrite
            path.write_bytes(mutated)
            t0 = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            faulthandler.dump_traceback_later(args.timeout * 3, exit=True)  # a hang inside native code
            try:
                outcome = verdict(path, mutant, rnd)
            except Timeout:
                outcome = "TIMEOUT"
            except Exception as error:
                outcome = f"{type(error).__name__}"
                shown[outcome] += 1
                if shown[outcome] <= 3:  # the first three of each kind of failure
                    failures.append(f"input {i} ({kind} of {seed.name}): {traceback.format_exc(limit=-3)}"[-3000:])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                faulthandler.cancel_dump_traceback_later()
            took = time.monotonic() - t0
            if took > slowest[0]:
                slowest = (took, f"input {i} ({kind} of {seed.name}, {len(mutated)} bytes)")
            outcomes[f"{kind}: {outcome}"] += 1
            ran += 1
            if ran == 1000:
                baseline = _rss_mb()
            if ran % 5000 == 0:
                samples.append(f"{ran}: {_rss_mb():.0f}")
        elapsed = time.monotonic() - started
    growth = _rss_mb() - baseline if baseline is not None else 0.0
    print(f"{ran} inputs in {elapsed:.0f} s ({ran / max(elapsed, 1e-9):.0f}/s), seed {args.seed}, "
          f"{len(pool)} seed files: {', '.join(s.name for s in pool)}")
    for key, count in sorted(outcomes.items()):
        print(f"  {key:<40} {count}")
    totals = Counter(key.split(": ")[1] for key in outcomes.elements())
    print(f"totals: {dict(totals)}")
    print(f"slowest input: {slowest[0]:.2f} s, {slowest[1]}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"memory: {_rss_mb():.0f} MiB resident ({peak:.0f} MiB peak), growth after the first 1000 inputs "
          f"{growth:+.0f} MiB; by input count (MiB): {', '.join(samples)}")
    for failure in failures:
        print(failure, file=sys.stderr)
    bad = ran - totals["valid"] - totals["format_error"]
    if bad or growth > args.max_growth_mb:
        print(f"FAILED: {bad} inputs had another outcome; memory growth {growth:.0f} MiB "
              f"(limit {args.max_growth_mb:.0f})", file=sys.stderr)
        return 1
    print("OK: every input read as the data it may hold or was refused with a StateFormatError naming its step; "
          "validate agreed; every row picked by id or index was the row asked for")
    return 0


if __name__ == "__main__":
    sys.exit(main())
