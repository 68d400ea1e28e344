"""The README's runnable examples run as written (each in a fresh process, in a scratch folder)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parents[2] / "README.md").read_text()
BLOCKS = [block for block in re.findall(r"```python\n(.*?)```", README, re.S) if "import statefmt" in block
          or ", statefmt" in block]


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_quickstart_is_checked():
    """The README keeps one quickstart; the guides' code runs in tests/test_docs.py."""
    assert len(BLOCKS) >= 1 and "statefmt.save" in BLOCKS[0]


def test_the_demo_hands_keras_state_to_pytorch(tmp_path):
    """`make demo`, the README's main command: it exits 1 unless the hand-off continues the sequence."""
    demo = Path(__file__).parents[2] / "examples" / "demo.py"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "STATEFMT_DEMO_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(demo)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    handed, zero = map(float, re.findall(r"chunk 2, (?:state handed over|zero state):\s+(\S+)", result.stdout))
    assert handed < 1e-5 < zero
    assert (tmp_path / "keras_state.statefmt").exists() and "valid" in result.stdout
