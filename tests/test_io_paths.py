"""The fast paths of file I/O: chunked reads and writes, streaming validation, the quick schema check.

Each is checked against the plain way it replaces (one-shot xxh3, np.isfinite, safetensors'
own reader, jsonschema), with chunks made tiny so that every case crosses chunk boundaries.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file
from test_core import DTYPES, _dtype, assert_same, make_states

import statefmt
from statefmt import LayerState, StateSet, _container, io

VECTORS = Path(__file__).parents[1] / "spec" / "vectors"
SIZES = [0, 1, 7, 8, 9, 64]  # in items; with 32-byte chunks: empty, partial, exact and many chunks


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(_container, "CHUNK_BYTES", 32)


def _array(dtype: str, size: int, nonfinite: list[int] = ()) -> np.ndarray:
    array = np.random.default_rng(size).standard_normal((1, size, 1)).astype(_dtype(dtype))
    for position, value in zip(nonfinite, [np.nan, np.inf, -np.inf] * 3):
        array[0, position, 0] = value
    return array


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_matches_one_shot_checks(dtype, size):
    array = _array(dtype, size, nonfinite=[i for i in (0, 7, 8, 63) if i < size])
    found = _container.scan(array)
    expected_sum = "xxh3_64:" + xxhash.xxh3_64_hexdigest(array.tobytes())
    assert found == (expected_sum, int(np.count_nonzero(~np.isfinite(array.astype(np.float64)))))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_write_and_read_round_trip(tmp_path, dtype, size):
    reversed_view = _array(dtype, size)[:, ::-1]  # not contiguous: saved through a copy
    states = StateSet([LayerState("a", "gru", h=_array(dtype, size)), LayerState("b", "rnn", h=reversed_view)])
    path = tmp_path / "s.statefmt"
    statefmt.save(states, path)
    loaded = statefmt.load(path)
    assert_same(states, loaded)
    plain = load_file(str(path))  # safetensors' own reader sees the same bytes
    np.testing.assert_array_equal(plain["layers.1.h"], states[1]["h"])
    loaded[0]["h"][...] = 0  # the loaded arrays are the caller's own, not a map of the file
    assert_same(states, statefmt.load(path))


@pytest.mark.parametrize("dtype", DTYPES)
def test_validate_returns_read_only_views_equal_to_load(tmp_path, dtype):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(dtype, batch=9), path)
    checked = statefmt.validate(path)
    assert_same(checked, statefmt.load(path))
    assert not checked[0]["h"].flags.writeable


def _poison(path: Path, value: float, item: int = 3) -> None:
    """Write `value` as float32 over one item of layer 0's h, in place, keeping the stale checksum."""
    data = bytearray(path.read_bytes())
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    start = 8 + header_length + header["layers.0.h"]["data_offsets"][0] + 4 * item
    data[start:start + 4] = np.float32(value).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reader", ["load", "validate"])
@pytest.mark.parametrize("value, problems", [(1.5, ["checksum mismatch"]),
                                             (np.nan, ["checksum mismatch", "1 non-finite values"]),
                                             (np.inf, ["checksum mismatch", "1 non-finite values"])])
def test_damaged_data_is_found_by_both_paths(tmp_path, reader, value, problems):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states("float32", batch=9), path)
    _poison(path, value)
    with pytest.raises(statefmt.StateFormatError) as error:
        getattr(statefmt, reader)(path)
    assert all(f"layer 0 'enc': h: {problem}" in str(error.value) for problem in problems), str(error.value)


def test_nonfinite_save_abandons_the_temporary_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    before = path.read_bytes()
    poisoned = make_states()
    poisoned[1]["h"][0, 2, 1] = np.nan
    with pytest.raises(statefmt.StateFormatError, match=r"layer 1 'dec/gru 1': h: 1 non-finite values"):
        statefmt.save(poisoned, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.statefmt"]


def test_a_file_replaced_between_the_two_opens_is_refused(tmp_path):
    path, other = tmp_path / "s.statefmt", tmp_path / "other.statefmt"
    statefmt.save(make_states(batch=4), path)
    statefmt.save(make_states(batch=5), other)
    with _container.open_reader(path) as reader:
        os.replace(other, path)
        with pytest.raises(statefmt.StateFormatError, match="the file changed while it was being opened"):
            reader.scan("layers.0.h")


# The quick schema check: where it decides, jsonschema agrees.

SCHEMA = json.loads((Path(io.__file__).parent / "statefmt.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _quick_verdict(document):
    try:
        return io._conforms(document, SCHEMA)
    except io._Undecided:
        return None


def _documents():
    for path in sorted(VECTORS.glob("*.statefmt")):
        try:
            with safe_open(str(path), framework="numpy") as handle:
                document = json.loads((handle.metadata() or {})["statefmt"])
        except (SafetensorError, KeyError, ValueError):  # no readable document: nothing for the schema to judge
            continue
        if isinstance(document, dict):
            yield path.name, document


@pytest.mark.parametrize("name, document", list(_documents()), ids=[name for name, _ in _documents()])
def test_quick_schema_check_agrees_on_every_vector(name, document):
    verdict = _quick_verdict(document)
    assert verdict is not None, "the quick check should decide every vector"
    assert verdict == VALIDATOR.is_valid(document)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)
FIELDS = ["format_version", "content", "batch_size", "stream_ids", "layers", "source", "user", "extra"]
LAYER_FIELDS = ["name", "kind", "units", "directions", "proj_units", "dtype", "checksums", "input_size", "activation"]


@pytest.fixture(scope="module")
def valid_documents(tmp_path_factory):
    path = tmp_path_factory.mktemp("documents") / "s.statefmt"
    statefmt.save(make_states(batch=2), path)
    return {"state": _metadata(path), "weights": _metadata(VECTORS / "gru_weights.statefmt")}


def _metadata(path: Path) -> str:
    with safe_open(str(path), framework="numpy") as handle:
        return handle.metadata()["statefmt"]


@settings(max_examples=300, deadline=None)
@given(content=st.sampled_from(["state", "weights"]), field=st.sampled_from(FIELDS),
       layer_field=st.sampled_from(LAYER_FIELDS), value=JSON, where=st.sampled_from(["top", "layer", "delete"]))
def test_quick_schema_check_never_passes_what_jsonschema_refuses(valid_documents, content, field, layer_field,
                                                                 value, where):
    document = json.loads(valid_documents[content])
    assert _quick_verdict(document) is True
    if where == "top":
        document[field] = value
    elif where == "layer":
        document["layers"][0][layer_field] = value
    else:
        document["layers"][0].pop(layer_field, None)
    verdict = _quick_verdict(document)
    assert verdict is None or verdict == VALIDATOR.is_valid(document)


@pytest.mark.parametrize("value, schema", [("abc", {"maxLength": 2}), (1.0, {"type": "integer"}),
                                           (1.0, {"enum": [1]}), ([1, 1], {"uniqueItems": True})])
def test_quick_schema_check_defers_what_it_does_not_decide_exactly(value, schema):
    with pytest.raises(io._Undecided):
        io._conforms(value, schema)


def test_cli_validates_a_valid_file_without_importing_jsonschema(tmp_path):
    path = tmp_path / "s.statefmt"
    statefmt.save(make_states(), path)
    code = ("import sys\nfrom statefmt.cli import main\n"
            f"try:\n    main(['validate', {str(path)!r}])\nexcept SystemExit:\n    pass\n"
            "print('jsonschema' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [f"{path}: valid", "False"]
