"""Placeholder demo: a numpy state saved, validated and loaded back (the Keras->PyTorch hand-off replaces it)."""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import statefmt

rng = np.random.default_rng(0)
states = statefmt.StateSet(
    [statefmt.LayerState("encoder", "lstm", h=rng.standard_normal((1, 4, 8), "float32"),
                         c=rng.standard_normal((1, 4, 8), "float32"))],
    stream_ids=["a", "b", "c", "d"],
)
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "state.statefmt"
    statefmt.save(states, path)
    subprocess.run([sys.executable, "-m", "statefmt", "inspect", str(path)], check=True)
    back = statefmt.load(path, streams=["c"])
    print("stream c round trip exact:", np.array_equal(back["encoder"]["h"], states["encoder"]["h"][:, [2]]))
