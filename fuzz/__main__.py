"""The long fuzz run: `python -m fuzz --inputs 100000` (or `make fuzz`).

Input i uses `random.Random(seed * 1_000_003 + i)`, so a failure is replayed with
`--seed S --start i --inputs 1`. A seeded loop rather than hypothesis here: hypothesis
keeps a tree of every input it tried, which would grow the very memory this run watches.
Every input must load as the original state or raise StateFormatError, within
`--timeout` seconds, and the process's memory must not grow by more than `--max-growth-mb`.
"""

from __future__ import annotations

import argparse
import faulthandler
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from .mutations import encode, mutate, seed_states, verdict


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="how many mutated files to try")
    parser.add_argument("--seconds", type=float, default=600.0, help="stop earlier after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first input number (to replay one)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds allowed per input")
    parser.add_argument("--max-growth-mb", type=float, default=256.0, help="memory growth allowed after warm-up")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory(prefix="statefmt-fuzz-") as folder:
        path = Path(folder) / "input.statefmt"
        seeds = [(states, encode(states, path)) for states in seed_states()]
        outcomes: Counter[str] = Counter()
        failures = []
        slowest = (0.0, None)
        started = time.monotonic()
        baseline = None
        ran = 0
        for i in range(args.start, args.start + args.inputs):
            if time.monotonic() - started > args.seconds:
                break
            rnd = random.Random(args.seed * 1_000_003 + i)
            original, data = rnd.choice(seeds)
            kind, mutated = mutate(data, rnd)
            path.write_bytes(mutated)
            t0 = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            faulthandler.dump_traceback_later(args.timeout * 3, exit=True)  # a hang inside native code
            try:
                outcome = verdict(path, original)
            except Timeout:
                outcome = "TIMEOUT"
            except Exception as error:
                outcome = f"{type(error).__name__}"
                if len(failures) < 20:
                    failures.append(f"input {i} ({kind}): {traceback.format_exc(limit=-3)}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                faulthandler.cancel_dump_traceback_later()
            took = time.monotonic() - t0
            if took > slowest[0]:
                slowest = (took, f"input {i} ({kind}, {len(mutated)} bytes)")
            outcomes[f"{kind}: {outcome}"] += 1
            ran += 1
            if ran == 1000:
                baseline = _rss_mb()
        elapsed = time.monotonic() - started
    growth = _rss_mb() - baseline if baseline is not None else 0.0
    print(f"{ran} inputs in {elapsed:.0f} s ({ran / max(elapsed, 1e-9):.0f}/s), seed {args.seed}")
    for key, count in sorted(outcomes.items()):
        print(f"  {key:<40} {count}")
    totals = Counter(key.split(": ")[1] for key in outcomes.elements())
    print(f"totals: {dict(totals)}")
    print(f"slowest input: {slowest[0]:.2f} s, {slowest[1]}")
    print(f"memory: {_rss_mb():.0f} MiB resident, growth after the first 1000 inputs {growth:+.0f} MiB")
    for failure in failures:
        print(failure, file=sys.stderr)
    bad = ran - totals["valid"] - totals["format_error"]
    if bad or growth > args.max_growth_mb:
        print(f"FAILED: {bad} inputs had another outcome; memory growth {growth:.0f} MiB "
              f"(limit {args.max_growth_mb:.0f})", file=sys.stderr)
        return 1
    print("OK: every input loaded as the original state or raised StateFormatError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
