"""One adapter API: every adapter module has the same verbs, with the same arguments in the same order.

Read from the functions' signatures, so no framework is imported; an adapter that is not
there yet (onnx, while it is being built) is skipped by name.
"""

import importlib
import inspect

import pytest

ADAPTERS = ("keras", "torch", "flax", "onnx")
P = inspect.Parameter

# verb -> its parameters (name, kind, default); every adapter has these, in this order
VERBS = {
    "signature": [("target", P.POSITIONAL_OR_KEYWORD, P.empty), ("name", P.KEYWORD_ONLY, None)],
    "export": [("source", P.POSITIONAL_OR_KEYWORD, P.empty), ("state", P.POSITIONAL_OR_KEYWORD, None),
               ("name", P.KEYWORD_ONLY, None)],
    "initial_state": [("states", P.POSITIONAL_OR_KEYWORD, P.empty), ("target", P.POSITIONAL_OR_KEYWORD, P.empty),
                      ("strict", P.KEYWORD_ONLY, False), ("broadcast", P.KEYWORD_ONLY, False),
                      ("batch_size", P.KEYWORD_ONLY, None), ("device", P.KEYWORD_ONLY, None)],
    "export_weights": [("source", P.POSITIONAL_OR_KEYWORD, P.empty), ("name", P.KEYWORD_ONLY, None)],
    "import_weights": [("weights", P.POSITIONAL_OR_KEYWORD, P.empty), ("target", P.POSITIONAL_OR_KEYWORD, P.empty)],
    "weight_signature": [("target", P.POSITIONAL_OR_KEYWORD, P.empty)],
}
# what a framework may add, keyword-only: Flax linen keeps its params outside the module
EXTRA = {("flax", "export_weights"): {"variables"}, ("flax", "import_weights"): {"variables"},
         ("flax", "weight_signature"): {"variables"}}
# kept one release, and not part of the API: positional variables (Flax), unbatched= (PyTorch)
LEGACY = {P.VAR_POSITIONAL, P.VAR_KEYWORD}


def adapter(name):
    try:
        return importlib.import_module(f"statefmt.adapters.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"statefmt.adapters.{name}":
            pytest.skip(f"statefmt.adapters.{name} is not there yet")
        raise


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_has_the_verb_with_the_same_arguments(name, verb):
    module = adapter(name)
    parameters = [p for p in inspect.signature(getattr(module, verb)).parameters.values() if p.kind not in LEGACY]
    extra = EXTRA.get((name, verb), set())
    assert all(p.kind is P.KEYWORD_ONLY for p in parameters if p.name in extra)
    found = [(p.name, p.kind, p.default) for p in parameters if p.name not in extra]
    assert found == VERBS[verb]


@pytest.mark.parametrize("name", ADAPTERS)
def test_load_weights_is_kept_one_release_as_an_alias(name):
    module = adapter(name)
    assert "Deprecated alias of `import_weights`" in module.load_weights.__doc__


def test_the_adapters_say_the_same_verbs_in_their_docs():
    from statefmt.adapters import _common

    for verb in VERBS:
        assert f"    {verb}(" in _common.__doc__
