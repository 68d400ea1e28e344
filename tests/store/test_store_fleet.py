"""The store at fleet scale (issue 18): puts of any size, refusals before writing, an index that keeps up,
verified rows, per-layer dtypes, errors that say what happened, the CLI's ids from a file.

Expected values are the arrays the test put in; memory is measured in a child process (its peak RSS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import statefmt
from statefmt import (
    LayerSignature,
    LayerState,
    StateFormatError,
    StateMismatchError,
    StateSet,
    StateSignature,
    StoreMemoryError,
)

lance = pytest.importorskip("lance")
pa = pytest.importorskip("pyarrow")
from fleet_rows import SIGNATURE, assert_stream, states_for  # noqa: E402
from test_store import cli  # noqa: E402

from statefmt import store  # noqa: E402
from statefmt.store import _store  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LSTM = StateSignature([LayerSignature("lstm", 64, name=f"l{i}") for i in range(2)], dtype="float32")  # 1 KiB a row


def lstm_rows(first: int, count: int, seed: int) -> StateSet:
    rng = np.random.default_rng(seed)
    layers = [LayerState(f"l{i}", "lstm", h=rng.random((1, count, 64), np.float32),
                         c=rng.random((1, count, 64), np.float32)) for i in range(2)]
    return StateSet(layers, stream_ids=[f"s{i:07d}" for i in range(first, first + count)])


def run(code: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"
                                                 f"{os.pathsep}{REPO / 'tests' / 'store'}", **(env or {})})


# ---- puts of any size ---------------------------------------------------------------------------------------------

def test_a_put_of_150000_into_300000_streams_is_one_version_in_bounded_memory(tmp_path):
    """Lance's upsert of 50,000 into 200,000 ran out of its memory pool; now any put works, one version."""
    url, original = str(tmp_path / "fleet"), lstm_rows(0, 300_000, seed=1)
    store.create(url, LSTM, states=original)
    done = run("""
        import resource, sys
        from test_store_fleet import lstm_rows
        from statefmt import store
        fleet = store.open(sys.argv[1])
        states = lstm_rows(225_000, 150_000, seed=2)           # 75,000 updates, 75,000 new
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        version = fleet.put(states)
        print(version, before // 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """, url)
    assert done.returncode == 0, done.stderr
    version, before_mib, peak_mib = map(int, done.stdout.split())
    assert peak_mib - before_mib < 700, f"the put took {peak_mib - before_mib} MiB over its own 300 MiB of states"
    assert len(store.open(url, version=version)) == 375_000 and len(store.open(url, version=version - 1)) == 300_000
    expected = lstm_rows(225_000, 150_000, seed=2)
    got = store.open(url).get(["s0300000", "s0000007", "s0374999"])
    assert_stream(got, expected, "s0300000")
    assert_stream(got, expected, "s0374999")
    assert_stream(got, original, "s0000007")


def test_a_large_put_deletes_and_appends_in_one_transaction(tmp_path, monkeypatch):
    """Above MERGE_ROWS a put is a delete of its ids and an append of its rows, one Update: the same result."""
    monkeypatch.setattr(_store, "MERGE_ROWS", 10)
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    first = states_for([f"s{i}" for i in range(30)], seed=1)
    fleet.put(first)
    fleet.put(states_for([f"s{i}" for i in range(30, 60)], seed=2))
    second = states_for([f"s{i}" for i in range(20, 45)] + ["new"], seed=3)  # across both fragments
    version = fleet.put(second)
    assert len(store.open(fleet.url, version=version)) == 61
    got = fleet.snapshot()
    assert len(got.stream_ids) == 61
    for stream in ("s20", "s44", "new"):
        assert_stream(got, second, stream)
    assert_stream(got, first, "s19")
    fleet.put(states_for([f"s{i}" for i in range(0, 20)], seed=4))  # every row of the first fragment
    assert len(fleet) == 61


# ---- refusals before writing --------------------------------------------------------------------------------------

def test_a_put_whose_ids_repeat_is_refused_and_nothing_is_written(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    states = states_for(["a", "b", "c"], seed=1)
    states.stream_ids = ("a", "b", "a")  # the attribute can be set after StateSet checked its ids
    before = fleet.version
    with pytest.raises(StateMismatchError, match="stream ids given more than once: 'a'"):
        fleet.put(states)
    assert fleet.version == before and len(store.open(fleet.url)) == 0


def test_a_store_holding_duplicates_serves_the_others_and_says_how_to_repair(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    states = states_for(["a", "b", "c"], seed=1)
    fleet.put(states)
    table = lance.dataset(fleet.url).to_table(filter="stream_id = 'b'")
    lance.write_dataset(table, fleet.url, mode="append")  # a foreign writer appends b again
    fleet.refresh()
    got = fleet.get(["c", "a"])
    assert_stream(got, states, "a")
    with pytest.raises(StateFormatError, match=r"stored more than once at version \d+: 'b'.*To repair") as caught:
        fleet.get(["a", "b"])
    assert "'a'" not in str(caught.value)
    fleet.delete(["b"])
    fleet.put(states.rows(["b"]))
    assert_stream(fleet.snapshot(), states, "b")


def test_get_refuses_a_start_state_holding_nan(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    start = states_for(["start"], seed=1)
    start[1]["h"][1, 0, 2] = np.nan
    with pytest.raises(StateMismatchError, match="missing=: layer 1 'mid': h: NaN or Inf"):
        fleet.get(["ghost"], missing=start)


def test_a_put_with_the_wrong_dtype_names_each_problem_once(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    with pytest.raises(StateMismatchError) as caught:
        fleet.put(states_for(["a"], seed=1, dtype="float64"))
    dtype_lines = [p for p in caught.value.problems if "dtype" in p]
    assert len(dtype_lines) == 3 and len(set(dtype_lines)) == 3, caught.value.problems


# ---- an index that keeps up ---------------------------------------------------------------------------------------

def test_puts_fold_their_rows_into_the_id_index_without_a_compact(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    for start in range(0, 30_000, 5_000):
        fleet.put(states_for([f"s{i}" for i in range(start, start + 5_000)], seed=start))
    dataset = lance.dataset(fleet.url)
    covered = {f for index in dataset.describe_indices() for s in index.segments for f in s.fragment_ids}
    outside = sum(f.physical_rows for f in dataset.get_fragments() if f.fragment_id not in covered)
    assert outside < _store.INDEX_FOLD_ROWS
    assert "index built or updated" in fleet.versions()[-1].what
    assert fleet.get(["s29999", "s0"]).stream_ids == ("s29999", "s0")


def test_puts_merge_their_small_fragments_without_a_compact(tmp_path):
    """A get opens every fragment: small ones from many puts are merged, each a version that changes no row."""
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    expected = states_for([f"s{i}" for i in range(120)], seed=1)
    for start in range(0, 120, 10):
        fleet.put(expected.rows([f"s{i}" for i in range(start, start + 10)]))
    assert len(lance.dataset(fleet.url).get_fragments()) < _store.SMALL_FRAGMENTS
    assert "compaction (no row changed)" in [v.what for v in fleet.versions()]
    assert_stream(fleet.snapshot(), expected, "s119")


def index_segments(url: str) -> int:
    return sum(len(index.segments) for index in lance.dataset(url).describe_indices())


def test_the_id_index_grows_by_segments_and_merges_them_at_the_limit(tmp_path, monkeypatch):
    """A fold indexes only the new rows (a segment of its own), so its cost follows the put; at
    INDEX_SEGMENTS segments the next fold merges them all, so a get never searches more than that many."""
    monkeypatch.setattr(_store, "INDEX_FOLD_ROWS", 10)
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    expected = states_for([f"s{i}" for i in range(200)], seed=1)
    seen = []
    for start in range(0, 200, 10):
        fleet.put(expected.rows([f"s{i}" for i in range(start, start + 10)]))
        seen.append(index_segments(fleet.url))
    assert max(seen) == _store.INDEX_SEGMENTS and 1 in seen[_store.INDEX_SEGMENTS:], seen
    assert seen[2:5] == [3, 4, 5], seen  # a fold adds a segment: the rows indexed before are left alone
    got = fleet.get(["s0", "s105", "s199"])
    for stream in got.stream_ids:
        assert_stream(got, expected, stream)
    fleet.put(expected.rows(["s3"]))
    fleet.compact()
    assert index_segments(fleet.url) == 1  # Lance's own default would merge only the newest segment
    assert_stream(fleet.get(["s3"]), expected, "s3")


def test_fragments_stay_small_and_upkeep_never_rewrites_a_full_one(tmp_path, monkeypatch):
    """A get pays for the deleted rows of the fragment it reads: no fragment holds more than FRAGMENT_ROWS
    rows, whether written by create, a large put or upkeep's merges, and a merge leaves full ones alone."""
    monkeypatch.setattr(_store, "FRAGMENT_ROWS", 40)
    monkeypatch.setattr(_store, "MERGE_ROWS", 50)
    expected = states_for([f"s{i}" for i in range(400)], seed=1)
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE, states=expected.rows([f"s{i}" for i in range(100)]))
    fleet.put(expected.rows([f"s{i}" for i in range(100, 300)]))  # a large put: delete and append
    full = {fragment.fragment_id for fragment in lance.dataset(fleet.url).get_fragments()}
    for start in range(300, 400, 5):  # small puts: merged once SMALL_FRAGMENTS pile up
        fleet.put(expected.rows([f"s{i}" for i in range(start, start + 5)]))
    fragments = lance.dataset(fleet.url).get_fragments()
    assert max(fragment.physical_rows for fragment in fragments) <= 2 * 40  # Lance's merge counts live rows
    assert full <= {fragment.fragment_id for fragment in fragments}  # not one rewritten
    assert "compaction (no row changed)" in [version.what for version in fleet.versions()]
    got = fleet.snapshot()
    assert len(got.stream_ids) == 400
    for stream in ("s0", "s150", "s399"):
        assert_stream(got, expected, stream)


# ---- verified rows ------------------------------------------------------------------------------------------------

def flip_a_byte(data: bytes, value: float) -> bytes:
    """`data` with the float32 `value`'s top byte's low bit flipped where it occurs (once)."""
    pattern = np.float32(value).tobytes()
    at = data.find(pattern)
    assert at >= 0 and data.find(pattern, at + 1) < 0, "the value is stored plainly, once"
    changed = bytearray(data)
    changed[at + 3] ^= 0x01  # 7.5 becomes 30.0
    return bytes(changed)


def gru_rows(ids, values) -> StateSet:
    return StateSet([LayerState("layer0", "gru", h=np.asarray(values, np.float32))], stream_ids=ids)


GRU = StateSignature([LayerSignature("gru", 4, name="layer0")], dtype="float32")
VALUES = [[[1.25, 2.5, 3.75, 5.0], [6.25, 7.5, 8.75, 10.0]]]  # 7.5 appears once


def test_a_flipped_byte_in_a_data_file_never_reaches_the_caller(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), GRU)
    fleet.put(gru_rows(["a", "b"], VALUES))
    newest = max((tmp_path / "fleet" / "data").glob("*.lance"), key=os.path.getmtime)
    newest.write_bytes(flip_a_byte(newest.read_bytes(), 7.5))
    opened = store.open(fleet.url)
    with pytest.raises(StateFormatError, match="streams 'b' do not match their row checksum"):
        opened.get(["a", "b"])
    with pytest.raises(StateFormatError, match="row checksum"):
        opened.snapshot()
    np.testing.assert_array_equal(opened.get(["a"])[0]["h"][0, 0], VALUES[0][0])  # a sound row still reads


def test_the_row_checksum_is_the_one_the_spec_defines(tmp_path):
    """Recomputed here from the spec's words alone, for a float16 layer (padding) and a float32 one."""
    signature = StateSignature([LayerSignature("gru", 3, name="a"), LayerSignature("rnn", 2, name="b")])
    rng = np.random.default_rng(0)
    states = StateSet([LayerState("a", "gru", h=rng.random((1, 2, 3)).astype("float16")),
                       LayerState("b", "rnn", h=rng.random((1, 2, 2)).astype("float32"))], stream_ids=["x", "y"])
    fleet = store.create(str(tmp_path / "fleet"), signature, states=states)
    stored = lance.dataset(fleet.url).to_table().sort_by("stream_id").column("row_checksum").to_pylist()
    golden = 0x9E3779B97F4A7C15
    for row in range(2):
        words = []
        for layer in states.layers:
            raw = layer["h"][0, row].tobytes()
            raw += b"\0" * (-len(raw) % 8)
            words += [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
        assert stored[row] == sum(w * (2 * i + 1) * golden for i, w in enumerate(words)) % 2**64


# ---- per-layer dtypes, import, special files ----------------------------------------------------------------------

def test_a_file_with_per_layer_dtypes_imports_and_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    states = StateSet([LayerState("enc", "lstm", h=rng.random((1, 5, 4)).astype("float16"),
                                  c=rng.random((1, 5, 4)).astype("float16")),
                       LayerState("dec", "gru", h=rng.random((1, 5, 3)).astype("float64"))],
                      stream_ids=[f"p{i}" for i in range(5)])
    statefmt.save(states, tmp_path / "mixed.statefmt")
    result = cli("store", "import", tmp_path / "fleet", tmp_path / "mixed.statefmt")
    assert result.exit_code == 0, result.output
    fleet = store.open(str(tmp_path / "fleet"))
    assert fleet.signature.dtype is None
    got = fleet.get(["p3", "p0"])
    assert (got[0].dtype, got[1].dtype) == ("float16", "float64")
    assert_stream(got, states, "p3")


def test_import_into_an_existing_store_with_default_options_streams_the_file(tmp_path):
    url = str(tmp_path / "fleet")
    store.create(url, LSTM, states=lstm_rows(0, 100_000, seed=1))
    statefmt.save(lstm_rows(50_000, 120_000, seed=2), tmp_path / "tick.statefmt")
    result = cli("store", "import", url, tmp_path / "tick.statefmt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["streams"] == 120_000
    fleet = store.open(url)
    assert len(fleet) == 170_000
    assert_stream(fleet.get(["s0169999", "s0050000"]), lstm_rows(50_000, 120_000, seed=2), "s0050000")


def test_a_fifo_in_the_data_folder_is_refused_not_waited_on(tmp_path):
    fleet = store.create(str(tmp_path / "fleet"), SIGNATURE)
    fleet.put(states_for(["a"], seed=1))
    newest = max((tmp_path / "fleet" / "data").glob("*.lance"), key=os.path.getmtime)
    newest.unlink()
    os.mkfifo(newest)
    done = run("""
        import sys
        from statefmt import store, StateFormatError
        try:
            store.open(sys.argv[1]).get(["a"])
        except StateFormatError as error:
            print(error)
    """, fleet.url, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"data/{newest.name} is not a regular file" in done.stdout


# ---- errors that say what happened --------------------------------------------------------------------------------

def test_running_out_of_lance_memory_is_its_own_error_with_the_fix(tmp_path):
    url = str(tmp_path / "fleet")
    store.create(url, SIGNATURE, states=states_for([f"s{i}" for i in range(2_000)], seed=1))
    done = run("""
        import sys
        from test_store import states_for
        from statefmt import store, StoreMemoryError
        try:
            store.open(sys.argv[1]).put(states_for([f"s{i}" for i in range(1_000, 3_000)], seed=2))
        except StoreMemoryError as error:
            print("StoreMemoryError", error)
    """, url, env={"LANCE_MEM_POOL_SIZE": "4096"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"StoreMemoryError {url}: cannot put: Lance ran out of memory"), done.stdout
    assert "LANCE_MEM_POOL_SIZE" in done.stdout and "(cut)" not in done.stdout
    assert issubclass(StoreMemoryError, statefmt.StoreError) and not issubclass(StoreMemoryError, StateFormatError)


CONTENDER = """
    import sys, time
    from fleet_rows import constant
    from statefmt import store, StoreConflictError
    from statefmt.store import _store
    _store.COMMIT_ATTEMPTS = 1  # no retry: the first commit another writer preempts fails
    fleet, ids = store.open(sys.argv[1]), [f"s{i}" for i in range(50)]
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
    for _ in range(100):
        try:
            fleet.put(constant(ids, float(sys.argv[3]), fleet.signature))
        except StoreConflictError as error:
            print("StoreConflictError", error)
            break
"""


def test_a_commit_that_other_writers_keep_preempting_is_a_conflict_error(tmp_path):
    """Real writers racing on the same rows, each allowed one attempt: the loser gets StoreConflictError
    naming the cause and the fix (not a format error), and the store keeps every stream, once."""
    from fleet_rows import constant

    url = str(tmp_path / "fleet")
    store.create(url, SIGNATURE, states=constant([f"s{i}" for i in range(50)], 1.0))
    start = str(time.time() + 6)  # after every writer has imported statefmt and Lance, even on a busy machine
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CONTENDER), url, start, str(k)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"})
               for k in range(4)]
    outputs = [writer.communicate(timeout=120) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), [err for _, err in outputs]
    conflicts = [out for out, _ in outputs if out.startswith("StoreConflictError")]
    assert conflicts, "no writer was preempted in 100 puts"
    assert f"{url}: cannot put: " in conflicts[0] and "write less often, or split the fleet" in conflicts[0]
    ids = lance.dataset(url).to_table(columns=["stream_id"]).column("stream_id").to_pylist()
    assert sorted(ids) == sorted(f"s{i}" for i in range(50))
    assert issubclass(statefmt.StoreConflictError, statefmt.StoreError)
    assert not issubclass(statefmt.StoreConflictError, StateFormatError)


# ---- the CLI ------------------------------------------------------------------------------------------------------

def test_cli_get_takes_ids_from_a_file_or_stdin(tmp_path):
    from click.testing import CliRunner

    from statefmt.cli import main

    url = str(tmp_path / "fleet")
    states = states_for(["a", "b", "c"], seed=1)
    store.create(url, SIGNATURE, states=states)
    (tmp_path / "ids.txt").write_text("c\na\n\n")
    result = cli("store", "get", url, "b", "--ids-from", tmp_path / "ids.txt", "-o", tmp_path / "out.statefmt")
    assert result.exit_code == 0, result.output
    assert statefmt.load(tmp_path / "out.statefmt").stream_ids == ("b", "c", "a")
    piped = CliRunner().invoke(main, ["store", "get", url, "--ids-from", "-", "-o", str(tmp_path / "in.statefmt")],
                               input="a\r\nc\n")
    assert piped.exit_code == 0, piped.output
    assert_stream(statefmt.load(tmp_path / "in.statefmt"), states, "c")
    none = cli("store", "get", url, "-o", tmp_path / "none.statefmt")
    assert none.exit_code == 2 and "no stream ids" in none.output


def test_cli_versions_say_what_made_each(tmp_path):
    url = tmp_path / "fleet"
    store.create(str(url), SIGNATURE, states=states_for(["a"], seed=1))
    listed = cli("store", "versions", url)
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert "created, 1 stream(s)" in lines[0] and "id index built or updated (no row changed)" in lines[1]
