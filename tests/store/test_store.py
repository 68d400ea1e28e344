"""The fleet store on a local directory: get/put by id, validation, versions, hostile stores, real processes.

Expected values are the arrays the test put in (numpy, independent of the store's code paths).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fleet_rows import BIG, SIGNATURE, assert_stream, constant, row_values, states_for

from statefmt import (
    LayerSignature,
    StateError,
    StateFormatError,
    StateMismatchError,
    StateSignature,
    StoreNotFoundError,
)

lance = pytest.importorskip("lance")
pa = pytest.importorskip("pyarrow")
from statefmt import store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

@pytest.fixture
def fleet(tmp_path):
    return store.create(str(tmp_path / "fleet"), SIGNATURE)


def test_put_then_get_rows_in_the_order_asked(fleet):
    first = states_for([f"s{i}" for i in range(50)], seed=1)
    version = fleet.put(first)
    assert version == fleet.version and len(fleet) == 50
    got = fleet.get(["s7", "s0", "s49"])
    assert got.stream_ids == ("s7", "s0", "s49") and got.batch_size == 3
    assert [(x.name, x.kind, x.units, x.directions, x.proj_units) for x in got.layers] == [
        ("enc", "lstm", 6, 1, 4), ("mid", "gru", 5, 2, None), ("out", "rnn", 3, 1, None)]
    for stream_id in got.stream_ids:
        assert_stream(got, first, stream_id)
    assert "s7" in fleet and "s50" not in fleet and 7 not in fleet


def test_put_upserts_and_keeps_the_others(fleet):
    first = states_for([f"s{i}" for i in range(20)], seed=1)
    fleet.put(first)
    second = states_for(["s3", "s19", "new"], seed=2)
    fleet.put(second)
    assert len(fleet) == 21
    got = fleet.get(["s3", "s4", "new", "s19"])
    for stream_id in ("s3", "new", "s19"):
        assert_stream(got, second, stream_id)
    assert_stream(got, first, "s4")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_every_dtype_round_trips_exactly(tmp_path, dtype):
    import ml_dtypes

    numpy_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    signature = StateSignature(SIGNATURE.layers, dtype=dtype)
    fleet = store.create(str(tmp_path / dtype), signature)
    states = states_for(["a", "b", "c"], seed=3, dtype=numpy_dtype, signature=signature)
    fleet.put(states)
    reopened = store.open(str(tmp_path / dtype))
    assert reopened.signature.dtype == dtype
    got = reopened.get(["c", "a", "b"])
    assert got[0]["h"].dtype == np.dtype(numpy_dtype)
    for stream_id in "abc":
        assert_stream(got, states, stream_id)
    poisoned = states_for(["d"], seed=4, dtype=numpy_dtype, signature=signature)
    poisoned[1]["h"][1, 0, 2] = np.inf
    with pytest.raises(StateFormatError, match="layer 1 'mid': h: NaN or Inf in streams 'd'"):
        reopened.put(poisoned)
    if dtype == "bfloat16":  # Lance's own extension type, not raw bytes
        assert "bfloat16" in str(lance.dataset(str(tmp_path / dtype)).schema.field("layer0_h").type)


def test_missing_streams_error_zeros_or_a_learned_start(fleet):
    fleet.put(states_for(["a", "b"], seed=1))
    with pytest.raises(StateMismatchError, match=r"'ghost'.*'phantom'.*missing='zeros'"):
        fleet.get(["a", "ghost", "phantom"])
    nobody = fleet.get(["nobody"], missing="zeros")  # no stored row at all: Lance returns no chunk
    assert nobody.stream_ids == ("nobody",) and not nobody[0]["c"].any()
    zeros = fleet.get(["ghost", "a"], missing="zeros")
    assert zeros.stream_ids == ("ghost", "a")
    for layer in zeros.layers:
        for state in layer.state_names:
            assert not layer[state][:, 0].any()
    assert_stream(zeros, states_for(["a", "b"], seed=1), "a")
    start = states_for(["start"], seed=9)
    learned = fleet.get(["ghost", "b", "phantom"], missing=start)
    for row in (0, 2):
        for index, layer in enumerate(learned.layers):
            for state in layer.state_names:
                np.testing.assert_array_equal(layer[state][:, row], start[index][state][:, 0])
    with pytest.raises(StateMismatchError, match="batch size 1, found 2"):
        fleet.get(["ghost"], missing=states_for(["x", "y"], seed=1))
    with pytest.raises(StateMismatchError, match="'error', 'zeros'"):
        fleet.get(["ghost"], missing="random")


def test_create_with_states_writes_them_in_the_first_commit(tmp_path):
    states = states_for([f"s{i}" for i in range(40)], seed=8)
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE, states=states)
    assert len(fleet) == 40 and fleet.versions()[0].streams == 40
    assert_stream(fleet.get(["s39", "s1"]), states, "s39")
    assert "ScalarIndexQuery" in lance.dataset(fleet.url).scanner(filter="stream_id = 's5'").explain_plan()
    fleet.put(states_for(["s1", "s40"], seed=9))
    assert len(fleet) == 41
    poisoned = states_for(["a", "b"], seed=1)
    poisoned[1]["h"][1, 0, 0] = np.inf
    with pytest.raises(StateFormatError, match="NaN or Inf in streams 'a'"):
        store.create(str(tmp_path / "other"), SIGNATURE, states=poisoned)
    assert not (tmp_path / "other").exists()


def test_get_refuses_repeated_and_non_string_ids(fleet):
    fleet.put(states_for(["a"], seed=1))
    with pytest.raises(StateMismatchError, match="more than once: 'a'"):
        fleet.get(["a", "a"])
    with pytest.raises(StateMismatchError, match="non-empty string"):
        fleet.get(["a", 3])
    assert fleet.get([]).batch_size == 0
    with pytest.raises(StateMismatchError, match="at most 1024 bytes"):
        fleet.get(["x" * 5000])
    with pytest.raises(StateMismatchError, match="at most 1024 bytes"):
        fleet.put(states_for(["ok", "é" * 600], seed=2))  # 1,200 bytes in UTF-8


def test_a_handle_sees_its_own_writes_and_others_after_refresh(fleet):
    other = store.open(fleet.url)
    version = fleet.put(states_for(["a"], seed=1))
    assert "a" in fleet and "a" not in other and other.version < version
    assert other.refresh() >= version and "a" in other
    newest = fleet.put(states_for(["c"], seed=3))  # `other` is stale again
    assert other.put(states_for(["b"], seed=2)) > newest  # it commits on the latest version, losing nothing
    assert store.open(fleet.url).snapshot().stream_ids == ("a", "b", "c")


def test_a_bad_put_names_every_problem_and_writes_nothing(fleet):
    fleet.put(states_for(["a", "b"], seed=1))
    before, count = fleet.version, len(fleet)
    wrong = StateSignature([LayerSignature("lstm", 6, proj_units=4, name="enc"),
                            LayerSignature("gru", 7, directions=1, name="mid"),
                            LayerSignature("lstm", 3, name="out")])
    bad = states_for(["b", "c", "d"], seed=2, dtype="float64", signature=wrong)
    bad[0]["c"][0, 1, 2] = np.nan
    bad[0]["h"][0, 2, 0] = np.inf
    with pytest.raises(StateMismatchError) as caught:
        fleet.put(bad)
    text = str(caught.value)
    for expected in ("layer 1 'mid': units: expected 5, found 7", "layer 1 'mid': directions: expected 2, found 1",
                     "layer 2 'out': kind: expected rnn, found lstm", "dtype: expected float32, found float64",
                     "c: NaN or Inf in streams 'c'", "h: NaN or Inf in streams 'd'", "'b', 'c', 'd'"):
        assert expected in text
    nan_only = states_for(["b", "x"], seed=3)
    nan_only[2]["h"][0, 1, 0] = np.nan
    with pytest.raises(StateFormatError, match="layer 2 'out': h: NaN or Inf in streams 'x'"):
        fleet.put(nan_only)
    with pytest.raises(StateMismatchError, match="stream_ids"):
        fleet.put(states_for(["q"], seed=1).with_stream_ids(None))
    assert (fleet.version, len(fleet)) == (before, count)
    assert lance.dataset(fleet.url).version == before
    assert_stream(fleet.get(["b"]), states_for(["a", "b"], seed=1), "b")


def test_versions_time_travel_delete_snapshot_compact_cleanup(tmp_path):
    url = str(tmp_path / "fleet")
    fleet = store.create(url, SIGNATURE)
    first, second = states_for(["a", "b", "c"], seed=1), states_for(["b", "d"], seed=2)
    v1, v2 = fleet.put(first), fleet.put(second)
    v3 = fleet.delete(["a", "never-there"])
    assert v1 < v2 < v3 == fleet.version
    counts = {v.version: v.streams for v in fleet.versions()}
    assert (counts[v1], counts[v2], counts[v3]) == (3, 4, 3)
    what = [v.what for v in fleet.versions()]  # a new store is two versions: its rows, then its id index
    assert what == ["created, 0 stream(s)", "the id index built or updated (no row changed)", "put", "put",
                    "delete"]
    old = store.open(url, version=v1)
    assert old.version == v1 and len(old) == 3
    assert_stream(old.snapshot(), first, "b")
    with pytest.raises(StateError, match="read-only"):
        old.put(second)
    snapshot = fleet.snapshot()
    assert snapshot.stream_ids == ("b", "c", "d")
    assert_stream(snapshot, second, "b")
    assert_stream(snapshot, first, "c")
    assert fleet.snapshot(["d"]).stream_ids == ("d",)
    compacted = fleet.compact()
    assert compacted > v3
    assert_stream(fleet.snapshot(), second, "d")
    removed = fleet.cleanup(older_than=timedelta(0))
    assert removed["old_versions"] >= 3
    with pytest.raises(StoreNotFoundError, match=f"no version {v1} here"):
        store.open(url, version=v1)
    assert_stream(store.open(url).snapshot(), first, "c")


def test_a_put_returns_only_once_its_files_are_fsynced(fleet, monkeypatch):
    """Lance renames its files into place but never fsyncs them; the store does, before put returns."""
    synced, real_fsync = set(), os.fsync

    def observed_fsync(descriptor):  # the real fsync, with a note of which file it was
        synced.add(os.readlink(f"/proc/self/fd/{descriptor}"))
        return real_fsync(descriptor)

    root = Path(fleet.url)
    before = {path for path in root.rglob("*")}
    monkeypatch.setattr(os, "fsync", observed_fsync)
    fleet.put(states_for([f"s{i}" for i in range(30)], seed=1))
    written = {str(path) for path in root.rglob("*") if path not in before}
    assert any("/data/" in path for path in written) and any(path.endswith(".manifest") for path in written)
    assert written <= synced
    assert {str(root), str(root / "data"), str(root / "_versions")} <= synced


def test_compact_brings_the_id_index_up_to_date_after_many_puts(tmp_path):
    """A put is one version and leaves its rows outside the id index (a get scans them); compact folds them in."""
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    for start in range(0, 60, 12):
        before = fleet.version
        assert fleet.put(states_for([f"s{i}" for i in range(start, start + 12)], seed=start)) == before + 1
    fleet.compact()
    dataset = lance.dataset(fleet.url)
    indexed = {f for segment in dataset.describe_indices()[0].segments for f in segment.fragment_ids}
    assert {f.fragment_id for f in dataset.get_fragments()} <= indexed
    plan = dataset.scanner(filter="stream_id = 's5'").explain_plan()
    assert "ScalarIndexQuery" in plan
    assert fleet.get(["s59", "s0"]).stream_ids == ("s59", "s0")


def test_get_hands_over_to_the_torch_adapter(tmp_path):
    torch = pytest.importorskip("torch")
    from statefmt.adapters import torch as st

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True)
    fleet = store.create(str(tmp_path / "fleet"), st.signature(lstm))
    x = torch.randn(4, 5, 3)
    with torch.no_grad():
        _, state = lstm(x)
    fleet.put(st.export(lstm, state).with_stream_ids(["w", "x", "y", "z"]))
    h0, c0 = st.initial_state(fleet.get(["y", "w"]), lstm)
    np.testing.assert_array_equal(h0.numpy(), state[0][:, [2, 0]].numpy())
    np.testing.assert_array_equal(c0.numpy(), state[1][:, [2, 0]].numpy())


# ---- what is not a store -----------------------------------------------------------------------------------------


def _raw_dataset(path, metadata=None, columns=None):
    table = pa.table(columns or {"stream_id": pa.array(["a"]), "x": pa.array([1.0])})
    if metadata is not None:
        table = table.replace_schema_metadata({"statefmt": metadata})
    lance.write_dataset(table, str(path))


def _document(**changes):
    document = {"format_version": "2.0", "content": "store", "created_by": "test",
                "layers": [{"name": "g", "kind": "gru", "units": 2, "directions": 1, "proj_units": None,
                            "dtype": "float32"}]}
    document.update(changes)
    return json.dumps(document)


GRU_COLUMNS = {"stream_id": pa.array(["a"]),
               "layer0_h": pa.FixedSizeListArray.from_arrays(pa.array([0.5, 0.25], pa.float32()), 2)}


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "no store here"),
    (lambda p: p.write_bytes(b"not a dataset"), "a file, not a store directory"),
    (lambda p: ((p / "_versions").mkdir(parents=True), (p / "_versions" / "1.manifest").write_bytes(b"\0" * 64)),
     "not a statefmt store"),
    (lambda p: _raw_dataset(p), "not a statefmt store"),
    (lambda p: _raw_dataset(p, _document(format_version="3.0"), GRU_COLUMNS), "format_version 3.0 is not supported"),
    (lambda p: _raw_dataset(p, "{not json", GRU_COLUMNS), "not valid JSON"),
    (lambda p: _raw_dataset(p, _document(content="state"), GRU_COLUMNS), "content: expected 'store'"),
    (lambda p: _raw_dataset(p, _document(layers=[{"name": "g", "kind": "tcn", "units": -1}]), GRU_COLUMNS),
     "layer 0 'g': kind 'tcn' is not one this reader knows"),
    (lambda p: _raw_dataset(p, _document(), {"stream_id": pa.array(["a"]), "layer0_h": pa.array([1.0])}),
     "column 'layer0_h' should be fixed_size_list<item: float>[2], found double"),
    (lambda p: _raw_dataset(p, json.dumps([1] * 10)), "must be a JSON object"),
], ids=["empty-dir", "a-file", "junk-manifest", "plain-lance", "major-3", "bad-json", "content", "bad-layer",
        "column-type", "array"])
def test_opening_what_is_not_a_store_names_the_url_and_the_reason(tmp_path, make, reason):
    path = tmp_path / "thing"
    make(path)
    with pytest.raises(StoreNotFoundError if reason == "no store here" else StateFormatError) as caught:
        store.open(str(path))
    assert reason in str(caught.value) and str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value) and ".rs:" not in str(caught.value)


def test_nan_written_behind_the_stores_back_is_refused_on_read(tmp_path):
    path = tmp_path / "poisoned"
    columns = dict(GRU_COLUMNS, layer0_h=pa.FixedSizeListArray.from_arrays(pa.array([np.nan, 1.0], pa.float32()), 2))
    _raw_dataset(path, _document(), columns)
    with pytest.raises(StateFormatError, match="NaN or Inf in streams 'a'"):
        store.open(str(path)).get(["a"])


def test_corrupted_data_files_raise_a_format_error(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    fleet.put(states_for([f"s{i}" for i in range(200)], seed=1))
    for data in (tmp_path / "fleet" / "data").glob("*.lance"):
        size = data.stat().st_size
        with open(data, "r+b") as handle:  # a torn write: the file's tail (its footer) is gone
            handle.truncate(size // 2)
    with pytest.raises(StateFormatError) as caught:
        store.open(fleet.url).snapshot()
    assert str(caught.value).startswith(fleet.url) and "cannot read the streams" in str(caught.value)


def test_a_corrupted_manifest_raises_a_format_error(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    fleet.put(states_for(["a"], seed=1))
    for manifest in (tmp_path / "fleet" / "_versions").glob("*.manifest"):
        manifest.write_bytes(np.random.default_rng(0).bytes(manifest.stat().st_size))
    started = time.perf_counter()
    with pytest.raises(StateFormatError) as caught:
        store.open(fleet.url)
    assert str(caught.value).startswith(f"{fleet.url}: not a readable statefmt store")
    assert time.perf_counter() - started < 10


def test_create_refuses_an_existing_store_and_a_bad_signature(tmp_path):
    url = str(tmp_path / "fleet")
    store.create(url, SIGNATURE)
    with pytest.raises(StateFormatError, match="already exists"):
        store.create(url, SIGNATURE)
    with pytest.raises(StateFormatError, match="duplicate layer names: 'x'"):
        store.create(str(tmp_path / "other"), StateSignature([LayerSignature("gru", 2, name="x")] * 2))


def test_import_statefmt_the_store_and_validate_load_no_lance_or_arrow(tmp_path):
    import statefmt

    statefmt.save(states_for(["a"], seed=1), tmp_path / "a.statefmt")
    code = ("import sys, statefmt; from statefmt import store; from statefmt.cli import main\n"
            f"for args in (['validate', {str(tmp_path / 'a.statefmt')!r}], ['store', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit as done:\n        assert done.code == 0, args\n"
            "print(sorted(m for m in ('lance', 'pyarrow', 'pandas', 'torch', 'ray', 'tqdm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"


# ---- real processes: concurrent puts, SIGKILL ----------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[6])
    from fleet_rows import constant
    from statefmt import store
    url, marker = sys.argv[1], float(sys.argv[2])
    first, count, rounds = map(int, sys.argv[3:6])
    fleet = store.open(url)
    ids = [f"s{i}" for i in range(first, first + count)]
    for round in range(rounds):
        print(fleet.put(constant(ids, marker + round, fleet.signature)), flush=True)
""")


def _writer(url, marker, first, count, rounds=1):
    return subprocess.Popen([sys.executable, "-c", WRITER, url, str(marker), str(first), str(count), str(rounds),
                             str(Path(__file__).parents[1])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_puts_from_processes_lose_no_update(tmp_path):
    url = str(tmp_path / "fleet")
    store.create(url, SIGNATURE)
    # four writers at once: two disjoint ranges, and two that overlap both on the same new ids
    writers = [_writer(url, 100, 0, 40, 2), _writer(url, 200, 40, 40, 2),
               _writer(url, 300, 20, 40, 2), _writer(url, 400, 20, 40, 2)]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    fleet = store.open(url)
    snapshot = fleet.snapshot()
    assert snapshot.stream_ids == tuple(sorted(f"s{i}" for i in range(80))) and len(fleet) == 80
    values = dict(zip(snapshot.stream_ids, row_values(snapshot)))
    # every stream holds the last round of a writer that wrote it: last writer wins, nothing lost or duplicated
    for i in range(80):
        allowed = {101.0} if i < 20 else {201.0} if i >= 60 else {301.0, 401.0} | ({101.0} if i < 40 else {201.0})
        assert values[f"s{i}"] in allowed, (i, values[f"s{i}"])
    ids = lance.dataset(url).to_table(columns=["stream_id"]).column("stream_id").to_pylist()
    assert len(ids) == len(set(ids)) == 80


VICTIM = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[3])
    from fleet_rows import BIG, constant
    from statefmt import store
    fleet, count = store.open(sys.argv[1]), 6_000
    ids = [f"s{i}" for i in range(count)]
    if sys.argv[2] == "compact":
        print("compacting", flush=True)
        fleet.compact()
    for value in range(7, 1000):
        fleet.put(constant(ids, float(value), BIG))
        print(value, flush=True)
""")


@pytest.mark.parametrize("operation", ["put", "compact"])
def test_sigkill_during_put_or_compact_leaves_the_previous_version_intact(tmp_path, operation):
    url, count = str(tmp_path / "fleet"), 6_000
    fleet = store.create(url, BIG)
    ids = [f"s{i}" for i in range(count)]
    for part in range(6):  # six fragments, so compact has work to do
        fleet.put(constant(ids[part * 1000:(part + 1) * 1000], 1.0, BIG))
    before = fleet.version
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, url, operation, str(Path(__file__).parents[1])],
                              stdout=subprocess.PIPE, text=True)
    victim.stdout.readline()  # it is in its loop (or has begun to compact)
    time.sleep(np.random.default_rng().uniform(0.0, 0.15))
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL  # killed, not finished
    reopened = store.open(url)
    values = row_values(reopened.snapshot())
    assert len(values) == count
    assert len(set(values.tolist())) == 1, "a put was applied to only some streams"  # all or nothing
    assert values[0] == 1.0 or 7.0 <= values[0] < 1000.0
    np.testing.assert_array_equal(row_values(store.open(url, version=before).snapshot()), np.ones(count))
    reopened.put(constant(ids[:5], 99.0, BIG))  # and it takes writes again
    assert row_values(store.open(url).get(ids[:5])).tolist() == [99.0] * 5


# ---- the CLI -------------------------------------------------------------------------------------------------------


def cli(*args):
    from click.testing import CliRunner

    from statefmt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_create_put_info_versions_get_export(tmp_path):
    import statefmt

    url, signature = tmp_path / "fleet", tmp_path / "sig.json"
    signature.write_text(SIGNATURE.to_json())
    states = states_for(["v", "w", "x"], seed=4)
    statefmt.save(states, tmp_path / "three.statefmt")
    created = cli("store", "create", url, "--signature", signature)
    assert created.exit_code == 0 and created.output.startswith(f"{url}: created, 3 layer(s)")
    put = cli("store", "put", url, tmp_path / "three.statefmt", "--json")
    assert put.exit_code == 0 and json.loads(put.output)["streams"] == 3
    info = json.loads(cli("store", "info", url, "--json").output)
    assert (info["streams"], info["dtype"]) == (3, "float32")
    assert [x["kind"] for x in info["layers"]] == ["lstm", "gru", "rnn"]
    listed = json.loads(cli("store", "versions", url, "--json").output)["versions"]
    assert listed[-1] == {**listed[-1], "version": json.loads(put.output)["version"], "streams": 3}
    got = cli("store", "get", url, "x", "v", "-o", tmp_path / "two.statefmt")
    assert got.exit_code == 0
    two = statefmt.load(tmp_path / "two.statefmt")
    assert two.stream_ids == ("x", "v")
    assert_stream(two, states, "x")
    exported = cli("store", "export", url, tmp_path / "all.statefmt")
    assert exported.exit_code == 0
    everything = statefmt.load(tmp_path / "all.statefmt")
    assert everything.stream_ids == ("v", "w", "x")
    assert_stream(everything, states, "w")
    compacted = cli("store", "compact", url, "--cleanup-older-than", 0, "--json")
    assert compacted.exit_code == 0 and json.loads(compacted.output)["cleanup"]["old_versions"] >= 1


def test_cli_import_creates_a_store_or_upserts_in_chunks(tmp_path):
    import statefmt

    states = states_for([f"s{i}" for i in range(7)], seed=5)
    statefmt.save(states, tmp_path / "seven.statefmt")
    result = cli("store", "import", tmp_path / "fleet", tmp_path / "seven.statefmt", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["created"] is True
    fleet = store.open(str(tmp_path / "fleet"))
    assert len(fleet) == 7 and fleet.versions()[0].streams == 7  # one commit
    newer = states_for([f"s{i}" for i in range(3, 10)], seed=6)
    statefmt.save(newer, tmp_path / "newer.statefmt")
    before = fleet.version
    result = cli("store", "import", tmp_path / "fleet", tmp_path / "newer.statefmt", "--chunk", 3)
    assert result.exit_code == 0, result.output
    fleet = store.open(str(tmp_path / "fleet"))
    counts = [v.streams for v in fleet.versions() if v.version > before]
    assert len(fleet) == 10 and counts[:3] == [7, 9, 10]  # s3-s5 were there; then s6-s8; then s9
    assert_stream(fleet.get(["s2"]), states, "s2")
    assert_stream(fleet.get(["s9"]), newer, "s9")


def test_cli_errors_are_one_line_with_exit_codes(tmp_path):
    import statefmt

    url = tmp_path / "fleet"
    store.create(str(url), SIGNATURE)
    statefmt.save(states_for(["a"], seed=1).with_stream_ids(None), tmp_path / "anonymous.statefmt")
    cases = [(("store", "get", url, "ghost", "-o", tmp_path / "o.statefmt"), 1, "no stream with id 'ghost'"),
             (("store", "put", url, tmp_path / "anonymous.statefmt"), 1, "has no stream_ids"),
             (("store", "info", tmp_path / "nothing"), 3, "no store here"),  # the input cannot be read
             (("store", "export", url, tmp_path / "o.statefmt", "--version", 99), 3, "no version 99 here"),
             (("store", "info", url, "-s", "no-equals-sign"), 2, "expected KEY=VALUE")]
    for args, code, message in cases:
        result = cli(*args)
        assert result.exit_code == code and message in result.stderr, (args, result.output)
        if code != 2:
            assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.slow
def test_a_quarter_million_streams_round_trip_through_puts_compaction_and_snapshot(tmp_path):
    ids = [f"s{i:06d}" for i in range(250_000)]
    first = states_for(ids, seed=1)
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE, states=first)
    rng = np.random.default_rng(0)
    latest = dict.fromkeys(ids, first)
    for round_ in range(5):
        chosen = sorted({ids[i] for i in rng.integers(0, len(ids), 20_000)})
        update = states_for(chosen, seed=10 + round_)
        fleet.put(update)
        latest.update(dict.fromkeys(chosen, update))
    fleet.compact()
    snapshot = fleet.snapshot()
    assert snapshot.stream_ids == tuple(ids)
    for stream_id in [ids[i] for i in rng.integers(0, len(ids), 300)]:
        assert_stream(snapshot, latest[stream_id], stream_id)
