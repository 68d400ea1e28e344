"""The examples in the language-model adapters' docstrings (RWKV-4, Griffin, keras-hub's Qwen3.5) run, each on the
hand-off matrix's tiny random model of its family (tests/handoff_models.py), skipped where its package is missing.

Each namespace holds the model, a prompt and the tokens that follow it; `session.statefmt` in the current
folder holds the model's state after the prompt.
"""

import pytest
from docstrings import docstrings, run

import statefmt


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def rwkv_namespace(folder):
    pytest.importorskip("rwkv")
    pytest.importorskip("transformers")
    import handoff_models as hm

    from statefmt.adapters import rwkv

    family = hm.FAMILIES["rwkv4"]
    family.write(folder)
    model = family.implementations["rwkv"].build(folder)
    tokens = family.tokens[0].tolist()
    _, state = model.forward(tokens[:hm.SPLIT], None)
    statefmt.save(rwkv.export(model, state), "session.statefmt", durable=False)
    return {"statefmt": statefmt, "model": model, "tokens": tokens[:hm.SPLIT], "next_tokens": tokens[hm.SPLIT:]}


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.rwkv"))
def test_the_rwkv_adapters_example_runs(rwkv_namespace, module, name):
    run(module, name, rwkv_namespace)


@pytest.fixture
def griffin_namespace(folder):
    torch = pytest.importorskip("torch")
    pytest.importorskip("recurrentgemma")
    import handoff_models as hm

    from statefmt.adapters import recurrentgemma

    family = hm.FAMILIES["griffin"]
    family.write(folder)
    griffin = family.implementations["deepmind"].build(folder)
    tokens = torch.tensor(family.tokens[:1])
    prompt, n = tokens[:, :hm.SPLIT], hm.SPLIT
    segment_pos = torch.arange(n)[None]
    with torch.no_grad():
        _, cache = griffin(prompt, segment_pos)
    statefmt.save(recurrentgemma.export(griffin, cache), "session.statefmt", durable=False)
    return {"statefmt": statefmt, "torch": torch, "griffin": griffin, "tokens": prompt, "segment_pos": segment_pos,
            "next_token": tokens[:, n:n + 1], "n": n}


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.recurrentgemma"))
def test_the_recurrentgemma_adapters_example_runs(griffin_namespace, module, name):
    run(module, name, griffin_namespace)


@pytest.fixture
def keras_hub_namespace(folder):
    pytest.importorskip("keras_hub")
    pytest.importorskip("transformers")
    import handoff_models as hm

    from statefmt.adapters import keras_hub

    family = hm.FAMILIES["qwen35"]
    family.write(folder)
    lm = family.implementations["keras_hub"].build(folder)
    tokens = family.tokens
    prompt = tokens[:, :hm.SPLIT]
    cache, _ = keras_hub.initial_state(hm._empty_qwen35(lm, len(tokens)), lm, max_length=tokens.shape[1])
    _, _, filled = lm.call_with_cache(prompt, cache, 0)
    statefmt.save(keras_hub.export(lm, (filled, hm.SPLIT)), "session.statefmt", durable=False)
    return {"statefmt": statefmt, "lm": lm, "prompt": prompt, "cache": cache,
            "next_tokens": tokens[:, hm.SPLIT:]}


@pytest.mark.parametrize("module, name", docstrings("statefmt.adapters.keras_hub"))
def test_the_keras_hub_adapters_example_runs(keras_hub_namespace, module, name):
    run(module, name, keras_hub_namespace)
