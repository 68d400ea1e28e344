"""Benchmarks of statefmt's file I/O against its peers: `python -m benchmarks` (or `make bench`).

Payload: a 4-layer LSTM state, 65,536 streams x 256 units, h and c, float32 (512 MiB).
Every figure is the best of several runs, printed with its ratio to the peer or to the
target. Ratios, not absolute times, are the targets: the machine is shared and noisy.
Payload files live in a temporary folder on the repository's disk (not tmpfs) and are removed.

The "floor" rows are the raw system calls with no checks: what bounds each step. Found
with `perf record` on ext4, 2 cores: save is the kernel's copy into the page cache (the
floor), with xxh3 and the NaN/Inf check (~60 ms per 512 MiB, which safetensors does not do)
on the other core, and blocks reserved up front (fallocate) so that ext4 need not reserve them
page by page; a writer that truncates an existing file, or renames over one with delayed
allocation, also pays ext4 freeing the old file's pages and flushing the new one (auto_da_alloc);
load is half the kernel zeroing the fresh pages of the new arrays, then the page-cache copy;
validate is the page-cache copy into one cached buffer plus the same checks.
"""
