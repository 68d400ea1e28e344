"""The conformance vectors in spec/vectors: each file's verdict, from the library and from the CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import statefmt

VECTORS = Path(__file__).parents[1] / "spec" / "vectors"
INDEX = json.loads((VECTORS / "index.json").read_text())
sys.path.insert(0, str(VECTORS))
import generate  # noqa: E402


@pytest.mark.parametrize("case", INDEX, ids=[case["file"] for case in INDEX])
def test_library_verdict(case):
    path = VECTORS / case["file"]
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    if case["valid"]:
        statefmt.validate(path)
    else:
        with pytest.raises(statefmt.StateFormatError) as error:
            statefmt.validate(path)
        message = str(error.value)
        assert case["error"] in message
        assert message.startswith(str(path)) and "\n" not in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # validation never writes


@pytest.mark.parametrize("case", INDEX, ids=[case["file"] for case in INDEX])
def test_cli_verdict(case):
    path = VECTORS / case["file"]
    result = subprocess.run([sys.executable, "-m", "statefmt", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == (0 if case["valid"] else 1), result.stderr
    if not case["valid"]:
        assert case["error"] in result.stderr
        assert "Traceback" not in result.stderr
        assert all(line.startswith(str(path)) for line in result.stderr.splitlines())


def test_vectors_are_deterministic(tmp_path):
    """Regenerating the vectors gives the committed bytes: same state, same file."""
    generate.generate(tmp_path)
    for case in INDEX:
        assert (tmp_path / case["file"]).read_bytes() == (VECTORS / case["file"]).read_bytes(), case["file"]
