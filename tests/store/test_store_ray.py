"""Many workers, one store: Ray tasks on a local cluster (2 CPUs) each put a partition of a fleet.

Each task validates and upserts its rows through `store.open(url).put(...)`: a Lance `merge_insert`
commit, retried on conflicts, so concurrent tasks lose no row and an id written twice is kept once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("lance")
from fleet_rows import SIGNATURE, constant, row_values  # noqa: E402

from statefmt import StateSet, store  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    here = Path(__file__).resolve().parent  # the workers import this module's tasks by name, and its helpers
    path = os.pathsep.join(p for p in (str(here), str(here.parent), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield
    finally:
        ray.shutdown()


def _partition(first: int, count: int, value: float) -> StateSet:
    return constant([f"s{i:05d}" for i in range(first, first + count)], value)


@ray.remote
def put_partition(url: str, first: int, count: int, value: float, storage_options=None) -> int:
    return store.open(url, storage_options=storage_options).put(_partition(first, count, value))


def test_ray_tasks_put_partitions_and_every_row_lands(cluster, tmp_path):
    url = str(tmp_path / "fleet")
    store.create(url, SIGNATURE)
    # six tasks at once: four disjoint partitions of 2,000 streams, and two that overlap the first two
    tasks = [put_partition.remote(url, k * 2000, 2000, float(k)) for k in range(4)]
    tasks += [put_partition.remote(url, 1000, 2000, 10.0), put_partition.remote(url, 1500, 1000, 11.0)]
    versions = ray.get(tasks, timeout=180)
    assert len(set(versions)) == 6  # one commit each
    fleet = store.open(url)
    snapshot = fleet.snapshot()
    assert len(fleet) == 8000 and snapshot.stream_ids == tuple(f"s{i:05d}" for i in range(8000))
    values = row_values(snapshot)
    allowed = [{float(i // 2000)} | ({10.0} if 1000 <= i < 3000 else set()) | ({11.0} if 1500 <= i < 2500 else set())
               for i in range(8000)]
    assert all(v in ok for v, ok in zip(values.tolist(), allowed))


def test_ray_data_batches_put_into_a_store_on_s3(cluster, s3_bucket):
    server, bucket = s3_bucket
    url, options = f"s3://{bucket}/fleet", server.lance_options
    store.create(url, SIGNATURE, storage_options=options)

    def put_batch(batch: dict) -> dict:
        ids = [f"s{int(i):05d}" for i in batch["id"]]
        version = store.open(url, storage_options=options).put(constant(ids, 3.0))
        return {"version": np.array([version]), "streams": np.array([len(ids)])}

    import ray.data

    written = ray.data.range(3000).map_batches(put_batch, batch_size=1000).take_all()
    assert sum(int(row["streams"]) for row in written) == 3000
    assert len({int(row["version"]) for row in written}) == len(written)  # one commit per batch
    fleet = store.open(url, storage_options=options)
    assert len(fleet) == 3000 and set(row_values(fleet.snapshot()).tolist()) == {3.0}
