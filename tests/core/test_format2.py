"""Format 2.0: block checksums, the stream-id index, one reader for paths and URLs, symmetric limits.

Chunks and blocks are made small where it matters, so every case crosses their boundaries.
Expected values come from the arrays saved, never from the reader under test.
"""

import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from builders import DTYPES, assert_same, fleet, flip, make_states, one_gru
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

import statefmt
from fuzz.mutations import Parts
from statefmt import (
    LayerState,
    StateError,
    StateFormatError,
    StateMismatchError,
    StateSet,
    _container,
    _document,
    api,
    limits,
)

VECTORS = Path(__file__).parents[2] / "spec" / "vectors"


@pytest.fixture
def small_blocks(monkeypatch):
    """4 KiB blocks, one block per chunk: every tensor below spans several of each."""
    monkeypatch.setattr(api, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(_container, "CHUNK_BLOCKS", 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [0, 1, 5, 37])
def test_round_trip_across_blocks_and_chunks(tmp_path, small_blocks, dtype, batch):
    states = fleet(batch, dtype=dtype)
    path = tmp_path / "s.statefmt"
    statefmt.save(states, path)
    loaded = statefmt.load(path)
    assert_same(states, loaded)
    assert loaded.stream_ids == states.stream_ids
    assert statefmt.validate(path) is None
    plain = load_file(str(path))  # safetensors' own reader sees the same tensors
    np.testing.assert_array_equal(plain["layers.1.h"], states[1]["h"])


def test_a_non_contiguous_array_is_saved_by_value(tmp_path, small_blocks):
    h = np.arange(2 * 40 * 50, dtype="float32").reshape(2, 40, 50)[:, ::-1, ::2]
    path = tmp_path / "s.statefmt"
    statefmt.save(StateSet([LayerState("g", "gru", h=h)]), path)
    np.testing.assert_array_equal(statefmt.load(path)[0]["h"], h)


@pytest.mark.parametrize("keys", [["pump-30"], ["pump-3", 0, "pump-36"], [-1], list(range(37))[::-3]])
def test_rows_by_id_or_index_equal_the_whole_load(tmp_path, small_blocks, keys):
    states = fleet(37)
    path = tmp_path / "s.statefmt"
    statefmt.save(states, path)
    part = statefmt.load(path, streams=keys)
    rows = [int(k.split("-")[1]) if isinstance(k, str) else k % 37 for k in keys]
    assert part.stream_ids == tuple(f"pump-{r}" for r in rows)
    for layer, whole in zip(part.layers, states.layers):
        for name in layer.state_names:
            np.testing.assert_array_equal(layer[name], whole[name][:, rows])


def test_every_id_of_a_thousand_is_found_in_its_bucket(tmp_path):
    states = fleet(1000, units=4)
    path = tmp_path / "s.statefmt"
    statefmt.save(states, path)
    for row in range(0, 1000, 7):
        assert statefmt.load(path, streams=[f"pump-{row}"])[0]["h"][0, 0, 0] == row


@pytest.mark.parametrize("keys, message", [(["pump-99"], "no stream with id 'pump-99'"),
                                           ([5], "stream row 5 out of range for batch size 5"),
                                           ([True], "stream row True out of range"),
                                           (["pump-1", 1], "streams asked for more than once")])
def test_bad_stream_keys_are_refused(tmp_path, keys, message):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(5, units=3), path)
    with pytest.raises(StateMismatchError, match=message) as error:
        statefmt.load(path, streams=keys)
    assert error.value.source == str(path)


def test_ids_asked_of_a_file_without_ids(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(3, units=3, ids=False), path)
    with pytest.raises(StateMismatchError, match="has no stream_ids"):
        statefmt.load(path, streams=["pump-1"])
    assert statefmt.load(path, streams=[2]).stream_ids is None


def test_a_flipped_byte_in_a_row_is_caught_when_that_row_alone_is_read(tmp_path, small_blocks):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(37), path)
    row_bytes = 300 * 4
    flip(path, "layers.0.c", 20 * row_bytes + 5)  # row 20 of direction 0; blocks of 4 KiB hold 3.4 rows
    with pytest.raises(StateFormatError, match=r"layers\.0\.c`: bytes .* do not match their checksum") as error:
        statefmt.load(path, streams=["pump-20"])
    assert error.value.code == "checksum" and error.value.step == 8
    assert statefmt.load(path, streams=["pump-30"])[0]["h"][0, 0, 0] == 30  # another block reads fine
    for reader in (statefmt.load, statefmt.validate):
        with pytest.raises(StateFormatError, match="do not match their checksum"):
            reader(path)


def test_a_flipped_byte_in_the_checksums_tensor_is_caught(tmp_path, small_blocks):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(37), path)
    flip(path, "checksums", 3)
    with pytest.raises(StateFormatError, match="checksums: block 0 does not match"):
        statefmt.load(path, streams=[0])


def test_a_flipped_byte_in_the_index_never_returns_another_stream(tmp_path):
    """The index only finds rows; the id at the row found is compared with the one asked for."""
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(200, units=2), path)
    for offset in range(0, 200 * 16, 97):
        copy = tmp_path / f"c{offset}.statefmt"
        copy.write_bytes(path.read_bytes())
        flip(copy, "stream_ids.index", offset)
        with pytest.raises(StateFormatError):
            statefmt.load(copy, streams=["pump-7"])


def test_save_copies_each_chunk_once_so_a_changing_array_still_gives_a_valid_file(tmp_path, small_blocks):
    """Zero-copy exports make this easy: an array changed by another thread while it is saved. What is
    hashed must be what is written, so the file validates (its values mix old and new, as any such read)."""
    states = fleet(64, units=256)
    h = states[0]["h"]
    stop = threading.Event()

    def scribble():
        value = 0.0
        while not stop.is_set():
            value += 1.0
            h[...] = value

    thread = threading.Thread(target=scribble)
    thread.start()
    try:
        for attempt in range(10):
            path = tmp_path / f"s{attempt}.statefmt"
            statefmt.save(states, path, durable=False)
            statefmt.validate(path)
    finally:
        stop.set()
        thread.join()


def test_readers_never_fail_while_a_writer_replaces_the_file(tmp_path):
    """One descriptor for header and data: a reader sees the old file or the new one, whole."""
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(50, units=64), path, durable=False)
    code = ("import sys, time, statefmt\nsys.path[:0] = ['tests']\nfrom builders import fleet\n"
            "a, b = fleet(50, units=64), fleet(51, units=64)\nend = time.monotonic() + 3\n"
            f"while time.monotonic() < end:\n    statefmt.save(b, {str(path)!r}, durable=False)\n"
            f"    statefmt.save(a, {str(path)!r}, durable=False)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    reads = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            data = statefmt.load(path)
            assert data.batch_size in (50, 51)
            statefmt.validate(path)
            reads += 1
    finally:
        writer.wait(timeout=30)
    assert writer.returncode == 0 and reads > 10


def test_save_refuses_what_load_would_refuse_before_writing_a_byte(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(2, units=3), path)
    before = path.read_bytes()
    deep: dict = {}
    leaf = deep
    for _ in range(limits.MAX_JSON_DEPTH):
        leaf["x"] = {}
        leaf = leaf["x"]
    bad = [({"user": {"x": float("nan")}}, "cannot be stored as JSON"),
           ({"user": deep}, f"nested deeper than {limits.MAX_JSON_DEPTH} levels"),
           ({"user": {"big": "x" * limits.MAX_FILE_DOCUMENT_BYTES}}, "exceeds the 67108864-byte cap")]
    for metadata, message in bad:
        with pytest.raises(StateFormatError, match=message):
            statefmt.save(fleet(2, units=3), path, metadata=metadata)
        assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s.statefmt"]
    with pytest.raises(StateFormatError, match="not valid Unicode text"):
        statefmt.save(StateSet(fleet(1, units=3).layers, stream_ids=["\ud800"]), path)
    assert path.read_bytes() == before


def test_the_largest_document_the_limits_allow_saves_and_loads(tmp_path):
    path = tmp_path / "s.statefmt"
    states = fleet(2, units=3)
    statefmt.save(states, path, metadata={"user": {"big": ""}})
    room = limits.MAX_FILE_DOCUMENT_BYTES - len(_metadata(path)["statefmt"])
    statefmt.save(states, path, metadata={"user": {"big": "x" * room}})
    assert len(_metadata(path)["statefmt"]) == limits.MAX_FILE_DOCUMENT_BYTES
    assert len(statefmt.load(path).metadata["user"]["big"]) == room
    with pytest.raises(StateFormatError, match="exceeds"):
        statefmt.save(states, path, metadata={"user": {"big": "x" * (room + 1)}})


def _metadata(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length])["__metadata__"]


def test_nesting_is_judged_the_same_at_any_call_depth(tmp_path):
    path = tmp_path / "s.statefmt"
    deep: dict = {}
    leaf = deep
    for _ in range(limits.MAX_JSON_DEPTH - 3):
        leaf["x"] = {}
        leaf = leaf["x"]
    statefmt.save(fleet(2, units=3), path, metadata={"user": deep})

    def nested(levels):
        return statefmt.load(path) if levels == 0 else nested(levels - 1)

    assert nested(0).metadata["user"] == deep
    assert nested(300).metadata["user"] == deep


def test_a_huge_list_of_bad_layers_is_refused_fast_with_a_bounded_message(tmp_path):
    document = {"format_version": "2.0", "content": "state", "batch_size": 1, "stream_ids": False,
                "block_bytes": 65536, "checksum_blocks": [], "layers": [{}] * 60_000}
    started = time.monotonic()
    with pytest.raises(StateFormatError) as error:
        _document.Document.from_dict(document)
    assert time.monotonic() - started < 10
    assert len(error.value.problems) <= limits.MAX_PROBLEMS + 1 and len(str(error.value)) < 50_000
    document["layers"] = [{}] * (limits.MAX_FILE_LAYERS + 1)
    with pytest.raises(StateFormatError, match="layers: expected at most 65536"):
        _document.Document.from_dict(document)


def test_a_file_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path):
    path = tmp_path / "sparse.statefmt"
    header = json.dumps({"layers.0.h": {"dtype": "F32", "shape": [1, 2**24, 1024],
                                        "data_offsets": [0, 4 * 2**34]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4096)
    with pytest.raises(StateFormatError, match="the file is cut short: its tensors need"):
        statefmt.load(path)


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_special_files_are_refused_without_blocking(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = Path("/dev/zero")
    for reader in (statefmt.load, statefmt.validate, statefmt.read):
        with pytest.raises(StateFormatError, match="not a regular file") as error:
            reader(path)
        assert error.value.source == str(path)


def test_bytes_paths_and_missing_files(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(2, units=3), os.fsencode(path))
    assert statefmt.load(os.fsencode(path)).batch_size == 2
    with pytest.raises(StateFormatError, match="no such file") as error:
        statefmt.load(tmp_path / "missing.statefmt")
    assert error.value.source == str(tmp_path / "missing.statefmt")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(fleet(2, units=3), path)
    path.chmod(0)
    with pytest.raises(StateFormatError, match="permission denied"):
        statefmt.load(path)


def test_upgrade_in_place_keeps_the_data(tmp_path):
    path = tmp_path / "old.statefmt"
    path.write_bytes((VECTORS / "1.0" / "lstm.statefmt").read_bytes())
    before = statefmt.load(path)
    statefmt.upgrade(path)
    after = statefmt.load(path, streams=["sensor-b"])
    np.testing.assert_array_equal(after[0]["c"], before[0]["c"][:, [1]])
    assert _document.strict_json(_metadata(path)["statefmt"])["format_version"] == "2.0"


def test_a_memory_url_round_trip_by_range_reads():
    states = fleet(20, units=5)
    statefmt.save(states, "memory://statefmt-test/s.statefmt")
    assert_same(statefmt.load("memory://statefmt-test/s.statefmt"), states)
    assert statefmt.load("memory://statefmt-test/s.statefmt", streams=["pump-11"])[0]["h"][0, 0, 0] == 11
    statefmt.validate("memory://statefmt-test/s.statefmt")
    with pytest.raises(StateFormatError, match="no such object"):
        statefmt.load("memory://statefmt-test/missing.statefmt")


# --- the quick schema check: where it decides, jsonschema agrees ---------------------------------------------

def _documents():
    for folder, major in ((VECTORS, "2"), (VECTORS / "1.0", "1")):
        for path in sorted(folder.glob("*.statefmt")):
            try:
                document = _document.strict_json(_metadata(path)["statefmt"])
            except (StateFormatError, KeyError, ValueError, UnicodeDecodeError):
                continue  # no readable document: nothing for the schema to judge
            if isinstance(document, dict) and str(document.get("format_version", "")).startswith(major):
                yield f"{folder.name}/{path.name}", major, document


@pytest.mark.parametrize("name, major, document", list(_documents()), ids=[name for name, _, _ in _documents()])
def test_quick_schema_check_agrees_on_every_vector(name, major, document):
    verdict = _quick_verdict(document, major)
    if name.endswith("batch_float.statefmt"):  # 2.0 is an integer to JSON Schema: jsonschema decides that one
        assert verdict is None
        return
    assert verdict is not None, "the quick check should decide every vector"
    assert verdict == jsonschema.Draft202012Validator(_document.schema(major)).is_valid(document)


def _quick_verdict(document, major="2"):
    try:
        return _document._conforms(document, _document.schema(major))
    except _document._Undecided:
        return None


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)
FIELDS = ["format_version", "content", "batch_size", "stream_ids", "block_bytes", "checksum_blocks", "layers",
          "source", "user", "extra"]
LAYER_FIELDS = ["name", "kind", "units", "directions", "proj_units", "dtype", "input_size", "activation",
                "recurrent_activation", "linear_before_reset"]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["lstm.statefmt", "gru_weights.statefmt"]), field=st.sampled_from(FIELDS),
       layer_field=st.sampled_from(LAYER_FIELDS), value=JSON, where=st.sampled_from(["top", "layer", "delete"]))
def test_quick_schema_check_never_passes_what_jsonschema_refuses(name, field, layer_field, value, where):
    document = _document.strict_json(_metadata(VECTORS / name)["statefmt"])
    assert _quick_verdict(document) is True
    if where == "top":
        document[field] = value
    elif where == "layer":
        document["layers"][0][layer_field] = value
    else:
        document["layers"][0].pop(layer_field, None)
    verdict = _quick_verdict(document)
    assert verdict is None or verdict == jsonschema.Draft202012Validator(_document.schema("2")).is_valid(document)


@pytest.mark.parametrize("value, schema", [("abc", {"maxLength": 2}), (1.0, {"type": "integer"}),
                                           (1.0, {"enum": [1]}), ([1, 1], {"uniqueItems": True})])
def test_quick_schema_check_defers_what_it_does_not_decide_exactly(value, schema):
    with pytest.raises(_document._Undecided):
        _document._conforms(value, schema)


def test_cli_validates_a_valid_file_without_importing_jsonschema(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    code = ("import sys\nfrom statefmt.cli import main\n"
            f"try:\n    main(['validate', {str(path)!r}])\nexcept SystemExit:\n    pass\n"
            "print('jsonschema' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [f"{path}: valid", "False"]


@pytest.mark.slow
def test_ten_million_stream_ids_save_and_load(tmp_path):
    ids = [f"sensor-{i:08d}" for i in range(10_000_000)]
    states = StateSet([LayerState("g", "gru", h=np.arange(10_000_000, dtype="float32").reshape(1, -1, 1))],
                      stream_ids=ids)
    path = tmp_path / "big.statefmt"
    statefmt.save(states, path, durable=False)
    assert statefmt.load(path, streams=["sensor-09876543"])[0]["h"][0, 0, 0] == 9876543
    loaded = statefmt.load(path)
    assert loaded.stream_ids[-1] == ids[-1] and loaded.batch_size == 10_000_000


# --- save takes the paths load takes and refuses what it refuses; stream keys -----------------------------------------

def test_bytes_stream_id_is_refused_not_read_as_row_numbers(tmp_path):
    ids = [f"s{i}" for i in range(200)]
    statefmt.save(one_gru(np.random.default_rng(0).random((1, 200, 3)).astype("f4"), ids), tmp_path / "m.statefmt")
    with pytest.raises(StateError):
        statefmt.load(tmp_path / "m.statefmt", streams=b"s1")  # "s1" is bytes 115, 49: rows 115 and 49 today


def test_a_non_iterable_streams_argument_is_a_state_error(tmp_path):
    statefmt.save(one_gru(np.zeros((1, 3, 2), "f4"), ["a", "b", "c"]), tmp_path / "s.statefmt")
    with pytest.raises(StateError):
        statefmt.load(tmp_path / "s.statefmt", streams=1.5)


def test_save_accepts_the_file_url_that_load_accepts(tmp_path):
    url = f"file://{tmp_path}/f.statefmt"
    states = one_gru(np.ones((1, 2, 3), "f4"), ["a", "b"])
    statefmt.save(states, url)
    assert statefmt.load(url).stream_ids == ("a", "b")
    assert (tmp_path / "f.statefmt").is_file()


def test_in_memory_validate_refuses_what_save_refuses(tmp_path):
    states = one_gru(np.zeros((1, 1, 3), "f4"), ["\ud800"])
    with pytest.raises(StateFormatError):
        statefmt.save(states, tmp_path / "x.statefmt")  # save refuses it ...
    with pytest.raises(StateFormatError):
        statefmt.validate(states)  # ... so validate, which promises save's checks, must too


def test_save_refuses_storage_options_on_a_local_path_as_load_does(tmp_path):
    path = tmp_path / "so.statefmt"
    with pytest.raises(StateFormatError):
        statefmt.save(one_gru(np.zeros((1, 1, 3), "f4")), path, storage_options={"anon": True})
    assert not path.exists()


def test_save_refuses_a_path_with_a_trailing_slash_as_load_does(tmp_path):
    path = f"{tmp_path}/x.statefmt/"
    states = one_gru(np.zeros((1, 1, 3), "f4"))
    with pytest.raises(StateFormatError):
        statefmt.load(path)  # a trailing slash names a folder: load refuses it ...
    with pytest.raises((StateError, OSError)):
        statefmt.save(states, path)  # ... and save must not write a file that load refuses
    assert not (tmp_path / "x.statefmt").exists()


def test_an_empty_path_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (lambda: statefmt.save(one_gru(np.zeros((1, 1, 3), "f4")), ""), lambda: statefmt.load("")):
        with pytest.raises(StateError) as raised:
            call()
        assert "empty" in str(raised.value), str(raised.value)


# --- documents at the edges of the spec: numbers, lone surrogates, 1.0 files, odd tensor names ------------------------

def test_an_overflowing_number_in_the_document_is_refused(tmp_path):
    import xxhash
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    base, hostile = tmp_path / "base.statefmt", tmp_path / "inf.statefmt"
    statefmt.save(one_gru(np.zeros((1, 2, 3), "f4"), ["a", "b"]), base, metadata={"user": {"x": 1}})
    with safe_open(str(base), "np") as file:
        document = file.metadata()["statefmt"]
    assert '"x":1}' in document
    document = document.replace('"x":1}', '"x":1e400}')  # any safetensors writer can produce this file
    checksum = "xxh3_64:" + xxhash.xxh3_64_hexdigest(document.encode())
    save_file(load_file(str(base)), str(hostile), metadata={"statefmt": document, "statefmt_checksum": checksum})
    with pytest.raises(StateFormatError):
        statefmt.validate(hostile)


def _document_with(text_edit, ascii_header: bool = True) -> bytes:
    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    parts.seal_document(text_edit(parts.metadata["statefmt"]))
    return parts.bytes(ascii_header=ascii_header)


def test_a_lone_surrogate_in_the_metadata_document_is_refused(tmp_path):
    path = tmp_path / "surrogate.statefmt"
    path.write_bytes(_document_with(lambda text: text[:-1] + ',"user":{"x":"\ud800"}}'))
    for action in (statefmt.read, statefmt.validate, lambda p: statefmt.load(p, streams=[0])):
        with pytest.raises(StateFormatError) as refused:
            action(path)
        assert refused.value.step in (1, 2)


def test_the_lone_surrogate_reproducer_is_otherwise_a_valid_file(tmp_path):
    """The test above is about the surrogate alone: the same edit with a plain string reads."""
    path = tmp_path / "plain.statefmt"
    path.write_bytes(_document_with(lambda text: text[:-1] + ',"user":{"x":"d800"}}'))
    assert statefmt.read(path).metadata["user"] == {"x": "d800"}
    length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert json.loads(path.read_bytes()[8:8 + length])["__metadata__"]["statefmt"].endswith('"d800"}}')


def test_surrogate_bytes_in_the_header_are_refused(tmp_path):
    path = tmp_path / "surrogate-bytes.statefmt"
    path.write_bytes(_document_with(lambda text: text[:-1] + ',"user":{"x":"\ud800"}}', ascii_header=False))
    assert b"\xed\xa0\x80" in path.read_bytes()
    with pytest.raises(StateFormatError) as refused:
        statefmt.read(path)
    assert refused.value.step in (1, 2)


def _v1_lstm_with(edit) -> bytes:
    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "1.0" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    edit(parts.document)
    parts.seal_document()
    return parts.bytes()


def test_a_1_0_document_with_a_2_0_key_of_another_type_is_read_or_refused(tmp_path):
    path = tmp_path / "v1.statefmt"
    path.write_bytes(_v1_lstm_with(lambda document: document.update(checksum_blocks=5)))
    try:
        states = statefmt.read(path)
    except StateFormatError as error:
        assert error.step is not None
    else:  # 1.0 readers ignore keys they do not know: then it holds the vector's data
        assert states.stream_ids == ("sensor-a", "sensor-b")


def test_the_1_0_reproducer_is_otherwise_a_valid_file(tmp_path):
    path = tmp_path / "v1.statefmt"
    path.write_bytes(_v1_lstm_with(lambda document: document.update(other_key=5)))
    assert statefmt.read(path).stream_ids == ("sensor-a", "sensor-b")


def _v1_weights_with_activation(activation: str) -> bytes:
    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "1.0" / "gru_weights.statefmt"
    parts = Parts.of(vector.read_bytes())
    parts.document["layers"][0]["recurrent_activation"] = activation
    parts.seal_document()
    return parts.bytes()


def test_what_read_returns_can_be_saved_again(tmp_path):
    """Whatever read accepts, save (and `statefmt upgrade`) writes; whatever it refuses, it refuses at a step."""
    path = tmp_path / "v1-weights.statefmt"
    path.write_bytes(_v1_weights_with_activation("h"))
    try:
        weights = statefmt.read(path)
    except StateFormatError as error:
        assert error.step is not None, f"refused at no spec step: {error!r}"
        return
    statefmt.validate(weights)
    statefmt.save(weights, tmp_path / "again.statefmt")  # the other: save (and upgrade) write what read accepts


def test_a_1_0_weights_file_with_a_listed_activation_upgrades(tmp_path):
    path = tmp_path / "v1-weights.statefmt"
    path.write_bytes(_v1_weights_with_activation("relu"))
    weights = statefmt.read(path)
    statefmt.upgrade(path, tmp_path / "upgraded.statefmt")
    assert statefmt.read(tmp_path / "upgraded.statefmt").layers[0].recurrent_activation == "relu"
    assert weights.layers[0].recurrent_activation == "relu"


def _with_tensor_named(name: str, case: str) -> bytes:
    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    if case == "extra tensor":  # step 7: a tensor no layer describes
        parts.table[name] = {"dtype": "F32", "shape": [0]}
        parts.data[name] = b""
        return parts.bytes()
    raw = parts.bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + length])
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    if case == "bad dtype":  # step 1, while parsing the table
        entry = {"dtype": "X", "shape": [0], "data_offsets": [0, 0]}
    elif case == "overlap":  # step 1, the coverage check
        entry["data_offsets"] = [4, 8]
    header[name] = entry
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + length:]


@pytest.mark.parametrize("case", ["bad dtype", "overlap", "extra tensor"])
def test_a_tensor_name_with_a_newline_gives_one_line_problems(tmp_path, case):
    """Found by atheris: a tensor name holding a newline (a `\\n` escape in the header) is quoted raw in the
    messages (`tensor `{key}`` in _container, "tensors not described" in api), so a problem spans two lines
    and carries terminal escapes: a log or a terminal would show a forged line."""
    path = tmp_path / "newline.statefmt"
    path.write_bytes(_with_tensor_named('x\n"forged": ok\x1b[2K', case))
    with pytest.raises(StateFormatError) as refused:
        statefmt.read(path)
    assert refused.value.step in (1, 7)
    assert all("\n" not in problem and "\x1b" not in problem for problem in refused.value.problems), \
        refused.value.problems
