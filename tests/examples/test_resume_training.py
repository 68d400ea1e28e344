"""Resuming training (issue 4): train on chunk 1, save the recurrent state with statefmt (and the
weights), continue on chunk 2 in a fresh process — PyTorch with the state detached, Keras with the
state loaded into stateful layers — and the loss path, final weights and final state equal an
uninterrupted run's.

Equal means bit for bit (float32, atol 0): the resumed process runs the same CPU kernels on the
same float32 inputs, weights and state (safetensors and statefmt store the bits), and SGD without
momentum carries nothing else. A resume from a zero state must differ by more than 1e-4, so the
test can fail. The training code is tests/examples/resume/bptt.py; the fresh process runs that file.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess
import sys

import numpy as np
import pytest
from resume import bptt


@pytest.fixture(scope="module", params=["torch", "keras"])
def runs(request, tmp_path_factory):
    """The uninterrupted run and the interrupted one (chunk 1 here, chunk 2 in a fresh process) of a framework."""
    framework = request.param
    pytest.importorskip(framework)
    Run = bptt.RUNS[framework]
    chunk1, chunk2 = bptt.chunks()

    whole = Run()  # one process, chunk 1 then chunk 2, the state carried in memory
    loss = whole.train(chunk1) + whole.train(chunk2)

    folder = tmp_path_factory.mktemp(framework)
    first = Run()
    first_loss = first.train(chunk1)
    first.save(folder)
    env = dict(os.environ)
    if framework == "keras":  # the fresh process runs on the backend this one runs on
        env["KERAS_BACKEND"] = sys.modules["keras"].backend.backend()
    result = subprocess.run([sys.executable, bptt.__file__, framework, str(folder)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / "resumed.npz") as resumed:
        resumed = dict(resumed)
    return {"loss": np.array(loss), "weights": whole.weights(),
            "state": {f"{layer.name}/{s}": np.array(layer[s]) for layer in whole.states() for s in layer.state_names},
            "first_loss": np.array(first_loss), "split": len(chunk1),
            "resumed": {key: value for key, value in resumed.items() if not key.startswith("cold_")},
            "cold": {key.removeprefix("cold_"): value for key, value in resumed.items() if key.startswith("cold_")}}


def _prefixed(arrays, prefix):
    return {key.removeprefix(prefix): value for key, value in arrays.items() if key.startswith(prefix)}


def test_chunk1_is_the_same_in_both_runs(runs):
    np.testing.assert_array_equal(runs["first_loss"], runs["loss"][:runs["split"]])


def test_resumed_loss_path_equals_the_uninterrupted_one(runs):
    np.testing.assert_array_equal(runs["resumed"]["loss"], runs["loss"][runs["split"]:])


def test_resumed_final_weights_equal_the_uninterrupted_ones(runs):
    resumed = _prefixed(runs["resumed"], "weights/")
    assert sorted(resumed) == sorted(runs["weights"])
    for name, expected in runs["weights"].items():
        np.testing.assert_array_equal(resumed[name], expected, err_msg=name)


def test_resumed_final_state_equals_the_uninterrupted_one(runs):
    resumed = _prefixed(runs["resumed"], "state/")
    assert sorted(resumed) == sorted(runs["state"])
    for name, expected in runs["state"].items():
        np.testing.assert_array_equal(resumed[name], expected, err_msg=name)


def test_a_zero_state_resume_differs(runs):
    """The same fresh process and weights (for Keras, what save_weights restores), chunk 2 from zeros."""
    chunk2_loss = runs["loss"][runs["split"]:]
    assert np.max(np.abs(runs["cold"]["loss"] - chunk2_loss)) > 1e-4
    cold_weights = _prefixed(runs["cold"], "weights/")
    assert max(np.max(np.abs(cold_weights[name] - w)) for name, w in runs["weights"].items()) > 1e-4
