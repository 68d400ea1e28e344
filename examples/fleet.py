"""A streaming job over a fleet of sensors, with its state in a statefmt store.

Each tick, a random subset of the fleet sends a new chunk of readings. The job gets those streams'
states from the store (a stream seen for the first time starts from zeros), runs a PyTorch LSTM on
the chunk, and puts the new states back: one commit per tick. At the end every stream's output is
checked against one uninterrupted run of that stream over all its chunks, and against a run that
forgot the state (started the last chunk from zeros), which must differ.

    python examples/fleet.py /tmp/fleet.lance
    python examples/fleet.py s3://bucket/fleet -s aws_endpoint=http://127.0.0.1:5000 -s allow_http=true
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from statefmt import store
from statefmt.adapters import torch as st

INPUTS, UNITS, LAYERS, CHUNK = 3, 16, 2, 5  # readings per step, LSTM units, layers, steps per chunk


def readings(stream: int, chunk: int, seed: int) -> np.ndarray:
    """The `chunk`-th chunk of readings of sensor `stream`: [CHUNK, INPUTS], the same whenever asked."""
    rng = np.random.default_rng([seed, stream, chunk])
    return rng.standard_normal((CHUNK, INPUTS)).astype(np.float32)


def run(url: str, *, storage_options: dict[str, str] | None = None, streams: int = 3000, ticks: int = 12,
        fraction: float = 0.25, seed: int = 0, verbose: bool = True) -> dict[str, float]:
    """Run the job on a new store at `url`, then check it; returns the figures it checked."""
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(INPUTS, UNITS, num_layers=LAYERS, batch_first=True).eval()
    fleet = store.create(url, st.signature(lstm), storage_options=storage_options)
    rng = np.random.default_rng(seed)
    names = np.array([f"sensor-{i:05d}" for i in range(streams)])
    chunks_seen = np.zeros(streams, np.int64)
    last_output = np.zeros((streams, UNITS), np.float32)
    started = time.perf_counter()
    for tick in range(ticks):
        active = np.sort(rng.choice(streams, size=max(1, int(streams * fraction)), replace=False))
        ids = names[active].tolist()
        x = torch.from_numpy(np.stack([readings(i, chunks_seen[i], seed) for i in active]))
        with torch.no_grad():
            state = st.initial_state(fleet.get(ids, missing="zeros"), lstm)
            output, state = lstm(x, state)
        version = fleet.put(st.export(lstm, state).with_stream_ids(ids))
        last_output[active] = output[:, -1].numpy()
        chunks_seen[active] += 1
        if verbose:
            print(f"tick {tick:2d}: {len(ids):5d} streams, {int((chunks_seen[active] == 1).sum()):5d} new, "
                  f"version {version}, {len(fleet)} in the store")
    elapsed = time.perf_counter() - started

    # the yardstick: each stream run once over all its chunks, from zeros, never stored
    seen = np.flatnonzero(chunks_seen)
    worst_output = worst_state = 0.0
    for count in np.unique(chunks_seen[seen]):
        group = seen[chunks_seen[seen] == count]
        x = torch.from_numpy(np.stack([np.concatenate([readings(i, k, seed) for k in range(count)]) for i in group]))
        with torch.no_grad():
            output, (h, c) = lstm(x)
        worst_output = max(worst_output, float(np.abs(output[:, -1].numpy() - last_output[group]).max()))
        stored_h, stored_c = st.initial_state(fleet.get(names[group].tolist()), lstm)
        worst_state = max(worst_state, float((stored_h - h).abs().max()), float((stored_c - c).abs().max()))
    resumed = seen[chunks_seen[seen] >= 2]  # forgetting the state must show on a stream with history
    x = torch.from_numpy(np.stack([readings(i, chunks_seen[i] - 1, seed) for i in resumed]))
    with torch.no_grad():
        forgetful = lstm(x)[0][:, -1].numpy()
    zero_gap = float(np.abs(forgetful - last_output[resumed]).max(axis=1).min())
    figures = {"streams": float(len(seen)), "resumed": float(len(resumed)), "max_output_error": worst_output,
               "max_state_error": worst_state, "min_zero_state_gap": zero_gap, "seconds": elapsed}
    if verbose:
        print(f"{len(seen)} streams, {len(resumed)} resumed at least once, {ticks} ticks in {elapsed:.2f} s")
        print(f"max |output - uninterrupted run| = {worst_output:.2e}, max |state - uninterrupted| = {worst_state:.2e}")
        print(f"a zero-state start differs by at least {zero_gap:.3f} on every resumed stream")
    if worst_output > 1e-5 or worst_state > 1e-5:
        raise SystemExit(f"FAILED: the stored states do not continue the streams ({worst_output:.2e})")
    if zero_gap <= 1e-3:
        raise SystemExit("FAILED: a zero-state run does not differ, so the check shows nothing")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="Where to create the store: a new directory or s3://bucket/path.")
    parser.add_argument("-s", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="An object-store option for Lance; repeatable.")
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--ticks", type=int, default=12)
    args = parser.parse_args()
    options = dict(pair.split("=", 1) for pair in args.storage_option) or None
    run(args.url, storage_options=options, streams=args.streams, ticks=args.ticks)


if __name__ == "__main__":
    main()
