"""Benchmarks of statefmt's file I/O against its peers: `python -m benchmarks` (or `make bench`).

Payload: a 4-layer LSTM state, 65,536 streams x 256 units, h and c, float32 (512 MiB).
Every figure is the best of several runs, printed with its ratio to the peer or to the
target. Ratios, not absolute times, are the targets: the machine is shared and noisy.
Payload files live in a temporary folder on the repository's disk (not tmpfs) and are removed.
"""
