"""The examples in the core's docstrings run, on files written into a temporary folder.

The store's and the adapters' docstrings are run by their parts' tests (they need Lance, a framework).
"""

import pkgutil
import shutil
from pathlib import Path

import numpy as np
import pytest
from docstrings import docstrings, run

import statefmt
from statefmt import LayerSignature, LayerState, LayerWeights, StateSet, StateSignature, WeightSet

VECTORS = Path(__file__).parents[2] / "spec" / "vectors"
CORE = sorted(f"statefmt.{module.name}" for module in pkgutil.iter_modules(statefmt.__path__)
              if not module.ispkg and module.name != "__main__")


@pytest.fixture
def namespace(tmp_path, monkeypatch):
    """What the examples name: `states`, `layer`, `weights`, and the files they open, in the current folder."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(7)
    values = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    c = values(1, 3, 8) * np.array([1, 1, 100], "float32")[:, None]  # sensor-7 diverges
    states = StateSet([LayerState("encoder", "lstm", h=values(1, 3, 8), c=c),
                       LayerState("decoder", "gru", h=values(1, 3, 4))], stream_ids=["pump-1", "pump-2", "sensor-7"])
    gru = lambda: WeightSet([LayerWeights("l0", "gru", W=values(1, 12, 5), R=values(1, 12, 4), Wb=values(1, 12),  # noqa: E731
                                          Rb=values(1, 12))])
    weights, other = gru(), gru()
    statefmt.save(states, "today.statefmt", durable=False)
    statefmt.save(states, "state.statefmt", durable=False)
    statefmt.save(weights, "weights.statefmt", durable=False)
    shutil.copyfile(VECTORS / "1.0" / "lstm.statefmt", "old.statefmt")
    shutil.copyfile(VECTORS / "checksum.statefmt", "damaged.statefmt")  # one bit of h flipped
    Path("model.sig.json").write_text(StateSignature.of(states, batch_size=None).to_json())
    Path("signature.json").write_text(StateSignature([LayerSignature("gru", 4)]).to_json())
    return {"np": np, "statefmt": statefmt, "states": states, "layer": states[0], "weights": weights,
            "other_weights": other}


@pytest.mark.parametrize("module, name", docstrings(*CORE))
def test_the_example_runs(namespace, module, name):
    run(module, name, namespace)


def test_every_core_module_is_looked_at():
    assert {"statefmt.api", "statefmt.states", "statefmt.signature", "statefmt._files", "statefmt.limits"} <= set(CORE)
