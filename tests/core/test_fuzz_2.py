"""The fuzzers on format 2.0: their mutations reach the checks behind the checksums, their verdict
can fail, and regression tests for the bugs they found."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import statefmt
from fuzz.mutations import MUTATIONS, Mutant, Parts, _check_rows, seeds, verdict
from statefmt import StateFormatError


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return seeds(tmp_path_factory.mktemp("seeds"))


def _step(path: Path) -> int | None:
    try:
        statefmt.read(path)
    except StateFormatError as error:
        return error.step
    return None


@pytest.mark.parametrize("kind, needed", [
    ("flip_data", {8}),  # a tensor byte changed, checksums not: the block checksum
    ("checksum_table", {8}),  # the checksums tensor or checksum_blocks changed
    ("table_resealed", {7}),  # a tensor dropped, added, reshaped or retyped, every checksum re-sealed
    ("reseal_values", {None, 9}),  # new values re-sealed: read as the new data, NaN/Inf refused
    ("reblock", {None, 5}),  # another block size re-sealed: valid, or not a size the schema lists
    ("stream_index", {8, 10}),  # the index corrupted: not re-sealed (checksum), re-sealed (index check)
    ("rename_ids", {None, 10}),  # new ids, index rebuilt: valid, or refused for a duplicate
    ("relayout", {None}),  # the tensors in another order
    ("duplicate_keys", {1, 2}),
    ("json_constants", {1, 2}),
    ("deep_nesting", {None, 2}),
    ("edit_document", {5}),  # re-sealed document edits get past the metadata checksum to the schema
])
def test_mutations_reach_the_checks_behind_the_checksums(pool, tmp_path, kind, needed):
    path = tmp_path / "mutant.statefmt"
    seen = set()
    for i in range(30):
        rnd = random.Random(i)
        mutant = MUTATIONS[kind](pool[i % len(pool)], rnd)
        path.unlink(missing_ok=True)  # a new file each time: ext4 flushes a truncated-and-rewritten one
        path.write_bytes(mutant.data)
        verdict(path, mutant, rnd)
        seen.add(_step(path))
    assert needed <= seen, f"{kind} reached steps {sorted(seen, key=str)}, not all of {sorted(needed, key=str)}"


def _swap_two_ids(seed) -> bytes:
    """The seed with the ids of rows 1 and 2 swapped and the index rebuilt and re-sealed: valid, but row 1 is
    now the stream the seed calls row 2's."""
    from fuzz.mutations import vectors_writer

    parts = Parts.of(seed.data)
    ids = list(seed.expected.stream_ids)
    ids[1], ids[2] = ids[2], ids[1]
    for key, array in vectors_writer().stream_tensors(ids).items():
        parts.put(key, array, "U8" if key == "stream_ids.bytes" else "U64")
    parts.reseal()
    parts.seal_document()
    return parts.bytes()


def test_the_verdict_catches_silent_changes_and_wrong_rows(pool, tmp_path):
    seed = next(s for s in pool if s.name == "v2.0/many_ids.statefmt")
    path = tmp_path / "swapped.statefmt"
    path.write_bytes(_swap_two_ids(seed))
    ids = seed.expected.stream_ids
    honest = Mutant("swap", path.read_bytes(), [replace(seed.expected, stream_ids=(ids[0], ids[2], ids[1], *ids[3:]))],
                    "valid")
    assert verdict(path, honest) == "valid"
    claims_the_seed = Mutant("swap", path.read_bytes(), [seed.expected])
    with pytest.raises(AssertionError, match="read returned other data: stream ids"):
        verdict(path, claims_the_seed)
    rows = statefmt.load(path, streams=[ids[1]])  # by the file, the seed's row 2
    assert rows.stream_ids == (ids[1],)
    assert "not that stream's row" in _check_rows(rows, [ids[1]], claims_the_seed)
    assert _check_rows(rows, [ids[1]], honest) is None


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


def test_the_command_line_shows_control_characters_escaped(tmp_path):
    """A layer name and a stream id holding a newline, an OSC escape and BEL: validate and inspect stay one
    verdict, exit 0, and print none of them raw (the fuzzer runs this check on 5% of its inputs)."""
    from fuzz.mutations import _check_cli

    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    parts.document["layers"][0]["name"] = "enc\n\x1b]0;owned\x07\r"
    parts.reseal()
    parts.seal_document()
    path = tmp_path / "control.statefmt"
    path.write_bytes(parts.bytes())
    assert statefmt.read(path).layers[0].name == "enc\n\x1b]0;owned\x07\r"
    _check_cli(path, valid=True)


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


def test_surrogate_bytes_in_the_header_are_refused(tmp_path):
    path = tmp_path / "surrogate-bytes.statefmt"
    path.write_bytes(_document_with(lambda text: text[:-1] + ',"user":{"x":"\ud800"}}', ascii_header=False))
    assert b"\xed\xa0\x80" in path.read_bytes()
    with pytest.raises(StateFormatError) as refused:
        statefmt.read(path)
    assert refused.value.step in (1, 2)


def test_inspect_of_large_finite_values_shows_no_warning(tmp_path):
    """Found by the seeded run: inspect's std squared a large finite float64 (1e200) and warned of overflow."""
    import warnings

    from fuzz.mutations import _check_cli

    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "mixed.statefmt"
    parts = Parts.of(vector.read_bytes())
    h = parts.array("layers.3.h").copy()  # float64
    h[0, 0, 0] = 1e200
    parts.put("layers.3.h", h, "F64")
    parts.reseal()
    parts.seal_document()
    path = tmp_path / "large.statefmt"
    path.write_bytes(parts.bytes())
    assert statefmt.read(path).layers[3]["h"][0, 0, 0] == np.float64(1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_cli(path, valid=True)


def test_inspect_of_a_signaling_nan_shows_no_warning(tmp_path):
    import warnings

    from fuzz.mutations import _check_cli

    vector = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "lstm.statefmt"
    parts = Parts.of(vector.read_bytes())
    h = parts.array("layers.0.h").copy()
    h.view(np.uint32)[0, 0, 0] = 0x7FA00000  # a signaling NaN: any arithmetic or cast raises FE_INVALID
    parts.put("layers.0.h", h, "F32")
    parts.reseal()
    parts.seal_document()
    path = tmp_path / "snan.statefmt"
    path.write_bytes(parts.bytes())
    with pytest.raises(StateFormatError) as refused:
        statefmt.read(path)
    assert refused.value.step == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_cli(path, valid=False)
