"""The conformance vectors in spec/vectors (format 2.0) and spec/vectors/1.0 (frozen, still readable):
each file's verdict, from the library and from the CLI, by the spec's step and code, and each
valid file's values."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import generate
import numpy as np
import pytest

import statefmt

VECTORS = Path(__file__).parents[2] / "spec" / "vectors"
CASES = [(folder, case) for folder in (VECTORS, VECTORS / "1.0")
         for case in json.loads((folder / "index.json").read_text())]
IDS = [f"{folder.name}/{case['file']}" for folder, case in CASES]


@pytest.mark.parametrize(("folder", "case"), CASES, ids=IDS)
def test_library_verdict(folder, case):
    path = folder / case["file"]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    if case["valid"]:
        statefmt.validate(path)
        if "expected" in case:
            _assert_values(statefmt.read(path), case["expected"])
    else:
        with pytest.raises(statefmt.StateFormatError) as error:
            statefmt.validate(path)
        assert (error.value.step, error.value.code) == (case["step"], case["code"]), str(error.value)
        message = str(error.value)
        assert message.startswith(str(path)) and "\n" not in message
        with pytest.raises(statefmt.StateFormatError):
            statefmt.read(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # reading never writes


def _assert_values(data, expected):
    assert [layer.name for layer in data.layers] == [layer["name"] for layer in expected["layers"]]
    for layer, values in zip(data.layers, expected["layers"]):
        for name, value in values.items():
            if name != "name":
                expected_array = np.array(value["values"], np.float64).reshape(value["shape"])
                np.testing.assert_array_equal(np.asarray(layer[name], np.float64), expected_array)
    if isinstance(data, statefmt.StateSet):
        assert data.stream_ids == (None if expected["stream_ids"] is None else tuple(expected["stream_ids"]))


@pytest.mark.parametrize(("folder", "case"), CASES, ids=IDS)
def test_cli_verdict(folder, case):
    path = folder / case["file"]
    result = subprocess.run([sys.executable, "-m", "statefmt", "validate", "--json", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == (0 if case["valid"] else 1), result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["valid"] == case["valid"]
    if not case["valid"]:
        assert (verdict["step"], verdict["code"]) == (case["step"], case["code"])
    assert "Traceback" not in result.stderr


def test_vectors_are_deterministic(tmp_path):
    """Regenerating the vectors gives the committed content: same state, same file, no version inside."""
    generate.generate(tmp_path)
    for folder, case in CASES:
        if folder == VECTORS:
            assert (tmp_path / case["file"]).read_bytes() == (VECTORS / case["file"]).read_bytes(), case["file"]
    assert b"statefmt 0." not in b"".join(p.read_bytes() for p in VECTORS.glob("*.statefmt"))


@pytest.mark.parametrize("name", ["lstm.statefmt", "mixed.statefmt", "many_ids.statefmt", "gru_weights.statefmt",
                                  "kind_mamba2.statefmt", "kind_attention_window.statefmt"])
def test_statefmt_writes_what_the_safetensors_library_writes(tmp_path, monkeypatch, name):
    """The same data saved by statefmt equals, byte for byte, the vector that safetensors' own writer
    produced (with the vectors' block size and created_by, `__metadata__` keys sorted)."""
    data = statefmt.read(VECTORS / name)
    monkeypatch.setattr(statefmt.api, "BLOCK_BYTES", generate.BLOCK)
    statefmt.save(data, tmp_path / name, metadata={"created_by": generate.CREATED_BY}, durable=False)
    assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes()


def test_upgrade_turns_every_valid_1_0_vector_into_an_equal_2_0_file(tmp_path):
    for folder, case in CASES:
        if folder.name == "1.0" and case["valid"]:
            out = tmp_path / case["file"]
            result = subprocess.run([sys.executable, "-m", "statefmt", "upgrade", str(folder / case["file"]), "-o",
                                     str(out)], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert json.loads(statefmt._container.Container(statefmt._source.open_source(out)).metadata[
                "statefmt"])["format_version"] == "2.0"
            diff = subprocess.run([sys.executable, "-m", "statefmt", "diff", str(folder / case["file"]), str(out)],
                                  capture_output=True, text=True, timeout=60)
            assert diff.returncode == 0, diff.stdout + diff.stderr
