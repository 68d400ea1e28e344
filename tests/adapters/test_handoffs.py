"""The hand-off matrix: a state saved by one implementation continues in another, in another process.

Each case splits a token sequence, runs the first part in one implementation, saves the state,
then a fresh process loads it into the other implementation and continues. The continuation must
equal the first implementation's uninterrupted run within 1e-5 (float32), and the same
continuation from a zeroed state must visibly differ, so the test can fail.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from handoff_models import FAMILIES, SPLIT

import statefmt

MODELS = Path(__file__).parents[1] / "handoff_models.py"

PACKAGES = {"recurrentgemma": "recurrentgemma.torch", "rwkv": "rwkv.model", "keras_hub": "keras_hub",
            "transformers": "statefmt.adapters.transformers"}
CASES = [(family, first, second) for family, entry in FAMILIES.items()
         for first in entry.implementations for second in entry.implementations if first != second]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("handoffs")


@pytest.fixture(scope="module")
def folders(base):
    """Each family's weights, written once (`base/<family>`) and only when a case needs them."""

    def folder(family):
        if not (base / family).exists():
            (base / family).mkdir()
            FAMILIES[family].write(base / family)
        return base / family

    return folder


def _needs(*adapters):
    for adapter in adapters:
        pytest.importorskip(PACKAGES[adapter])


def _installed(family):
    try:
        for implementation in FAMILIES[family].implementations.values():
            importlib.import_module(PACKAGES[implementation.adapter])
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def handed(base, folders):
    """Each implementation's uninterrupted run, and every hand-off continued in one other process (one for all
    the families whose implementations are installed: each process pays the frameworks' imports once)."""
    whole = {}
    families = [family for family in FAMILIES if _installed(family)]
    for family in families:
        entry = FAMILIES[family]
        folder, work = folders(family), base / f"{family}-work"
        work.mkdir()
        np.save(work / "tokens.npy", entry.tokens)
        for first, source in entry.implementations.items():
            model = source.build(folder)
            whole[family, first], _ = source.prefill(model, entry.tokens)
            _, state = source.prefill(model, entry.tokens[:, :SPLIT])
            statefmt.save(source.module().export(model, state), work / f"{first}.statefmt")
    if families:
        result = subprocess.run([sys.executable, str(MODELS), str(base), *families], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    return whole


@pytest.mark.parametrize(("family", "first", "second"), CASES, ids=[f"{f}:{a}->{b}" for f, a, b in CASES])
def test_a_state_continues_in_the_other_implementation(base, handed, family, first, second):
    entry = FAMILIES[family]
    _needs(*(implementation.adapter for implementation in entry.implementations.values()))
    out = np.load(base / f"{family}-work" / f"{first}-{second}.npz")
    expected = handed[family, first][:, SPLIT:]  # the first implementation's uninterrupted run
    handed, zero = (float(np.abs(out[label] - expected).max()) for label in ("handed", "zero"))
    print(f"{family}: {first} -> {second}: {handed:.1e} (from a zero state {zero:.2f})")  # the docs' matrix: -s
    assert handed < 1e-5
    assert zero > 1e-2


def test_griffin_implementations_agree_only_inside_the_window(folders):
    """The documented limit: past the local-attention window DeepMind's and HF's Griffin differ."""
    _needs("recurrentgemma", "transformers")
    entry = FAMILIES["griffin"]
    window = entry.tokens.shape[1]
    tokens = np.random.default_rng(5).integers(0, 64, (2, 3 * window))
    deepmind, hf = (entry.implementations[name] for name in ("deepmind", "hf"))
    logits = [implementation.prefill(implementation.build(folders("griffin")), tokens)[0]
              for implementation in (deepmind, hf)]
    by_position = np.abs(logits[0] - logits[1]).max(axis=(0, 2))
    inside, past = float(by_position[:window].max()), float(by_position[window:].min())
    print(f"griffin: DeepMind vs HF, inside the window {inside:.1e}, past it {past:.2f} or more")
    assert inside < 1e-5
    assert past > 1e-2


def _griffin_state(folders, tokens):
    _needs("recurrentgemma")
    deepmind = FAMILIES["griffin"].implementations["deepmind"]
    model = deepmind.build(folders("griffin"))
    return model, deepmind.module().export(model, deepmind.prefill(model, tokens)[1])


def test_a_state_of_other_weights_is_refused_by_name(folders):
    import torch

    model, states = _griffin_state(folders, FAMILIES["griffin"].tokens[:, :SPLIT])
    with torch.no_grad():
        model.final_norm.scale.add_(1.0)
    fingerprint = states.metadata["model"]["weights"]
    with pytest.raises(statefmt.StateMismatchError) as error:
        FAMILIES["griffin"].implementations["deepmind"].module().initial_state(states, model)
    assert error.value.problems == [f"model: weights: expected {_weights(model)}, found {fingerprint} "
                                    "(a state of other weights)"]


def _weights(model):
    from statefmt.adapters import recurrentgemma

    return recurrentgemma.signature(model).model["weights"]


def test_a_state_of_another_window_is_refused_with_every_misfit(folders):
    import recurrentgemma.torch as rg

    model, states = _griffin_state(folders, FAMILIES["griffin"].tokens[:, :SPLIT])
    narrow = rg.Griffin(model.config._replace(attention_window_size=8, lru_width=16))
    with pytest.raises(statefmt.StateMismatchError) as error:
        FAMILIES["griffin"].implementations["deepmind"].module().initial_state(states, narrow)
    config, weights, *layers = error.value.problems
    assert config.startswith("model: config: ") and config.endswith("(a state of a model with another configuration)")
    assert weights.startswith("model: weights: ")
    assert layers == ["layer 0 'l0': channels: expected 16, found 32", "layer 1 'l1': window: expected 8, found 12",
                      "layer 2 'l2': channels: expected 16, found 32"]


def test_a_runtime_state_takes_one_stream(folders):
    _needs("rwkv")
    runtime = FAMILIES["rwkv4"].implementations["rwkv"]
    model = runtime.build(folders("rwkv4"))
    states = runtime.module().export(model, runtime.prefill(model, FAMILIES["rwkv4"].tokens)[1])
    two = statefmt.StateSet([layer.with_arrays(**{key: np.concatenate([layer[key]] * 2) for key in layer.state_names})
                             for layer in states.layers], metadata=states.metadata)
    with pytest.raises(statefmt.StateMismatchError) as error:
        runtime.module().initial_state(two, model)
    assert error.value.problems == ["batch size: expected 1, found 2; pick the model's 1 streams with "
                                    "statefmt.load(path, streams=[...]) or states.rows([...])"]
    assert len(runtime.module().initial_state(two.rows([1]), model)) == 5 * 2


def test_a_keras_cache_shorter_than_the_tokens_seen_is_refused(folders):
    _needs("keras_hub")
    keras_hub = FAMILIES["qwen35"].implementations["keras_hub"]
    model = keras_hub.build(folders("qwen35"))
    states = keras_hub.module().export(model, keras_hub.prefill(model, FAMILIES["qwen35"].tokens[:, :SPLIT])[1])
    with pytest.raises(statefmt.StateMismatchError) as error:
        keras_hub.module().initial_state(states, model, max_length=SPLIT - 1)
    assert error.value.problems == [f"max_length: expected at least the {SPLIT} tokens the state has seen, "
                                    f"found {SPLIT - 1}"]


def test_past_the_window_a_hf_griffin_state_is_refused_by_deepmind(folders):
    """HF keeps window - 1 positions, DeepMind reads window: the two agree only inside the window."""
    _needs("recurrentgemma", "transformers")
    entry = FAMILIES["griffin"]
    hf, deepmind = entry.implementations["hf"], entry.implementations["deepmind"]
    window = entry.tokens.shape[1]
    long = np.concatenate([entry.tokens, entry.tokens[:, :2]], axis=1)  # two tokens past the window
    model = hf.build(folders("griffin"))
    states = hf.module().export(model, hf.prefill(model, long)[1])
    with pytest.raises(statefmt.StateMismatchError) as error:
        deepmind.module().initial_state(states, deepmind.build(folders("griffin")))
    assert error.value.problems == [
        f"layer 1 'l1': dims.length: Griffin reads the last min(tokens, window) = {window} positions, found "
        f"{window - 1} (a state kept by an implementation with a shorter window continues Griffin exactly only "
        "inside its window)"]
