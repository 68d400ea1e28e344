"""One API: every adapter module has the same verbs, with the same arguments in the same order; and in
the core every error a user can trigger is a StateError that says what would work.

The adapters are read from their functions' signatures, so no framework is imported; an
adapter that is not there yet (onnx, while it is being built) is skipped by name.
"""

import importlib
import inspect
import re

import numpy as np
import pytest

import statefmt
from statefmt import (
    LayerSignature,
    LayerState,
    LayerWeights,
    LayerWeightSignature,
    StateFormatError,
    StateMismatchError,
    StateSet,
    StateSignature,
    WeightSet,
    WeightSignature,
)

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
    parameters = list(inspect.signature(getattr(module, verb)).parameters.values())
    extra = EXTRA.get((name, verb), set())
    assert all(p.kind is P.KEYWORD_ONLY for p in parameters if p.name in extra)
    found = [(p.name, p.kind, p.default) for p in parameters if p.name not in extra]
    assert found == VERBS[verb]


def test_the_adapters_say_the_same_verbs_in_their_docs():
    import statefmt.adapters

    for verb in VERBS:
        assert f"    {verb}(" in statefmt.adapters.__doc__


# --- the core: every error a user can trigger is a StateError, and says what would work


def gru_weights(name="gru", units=3, input_size=2, directions=1, seed=0, **options):
    rng = np.random.default_rng(seed)
    rows = 3 * units
    return LayerWeights(name, "gru", rng.normal(size=(directions, rows, input_size)),
                        rng.normal(size=(directions, rows, units)), rng.normal(size=(directions, rows)),
                        rng.normal(size=(directions, rows)), **options)


def gru_state(batch, units=3):
    """Zeros for one GRU layer named "gru", as gru_weights() describes."""
    return StateSet([LayerState("gru", "gru", h=np.zeros((1, batch, units), "float32"))])


def test_a_weight_set_refuses_a_position_it_does_not_have():
    weights = WeightSet([gru_weights()])
    with pytest.raises(StateMismatchError, match="no layer at position 5; there are 1 layers"):
        weights[5]
    with pytest.raises(StateMismatchError, match="no layer named 'x'; the layers are 'gru'"):
        weights["x"]
    assert weights[-1] is weights["gru"]


@pytest.mark.parametrize("P, shape", [(np.zeros(3), "[3]"), (np.zeros((1, 3, 3)), "[1, 3, 3]")])
def test_layer_weights_refuse_a_projection_of_the_wrong_shape(P, shape):
    rows = 4 * 3
    with pytest.raises(StateFormatError, match=rf"layer 'l': P: expected \[directions, proj_units \(fewer than the "
                                               rf"3 units\), units\], found {re.escape(shape)}"):
        LayerWeights("l", "lstm", np.zeros((1, rows, 2)), np.zeros((1, rows, 3)), np.zeros((1, rows)),
                     np.zeros((1, rows)), P)


def test_missing_tensors_and_gates_are_state_errors():
    layer = gru_weights()
    with pytest.raises(StateMismatchError, match="layer 'gru' has weights W, R, Wb, Rb, not 'P'"):
        layer["P"]
    with pytest.raises(StateMismatchError, match=r"gate\('R', 'g', 0\): expected one of W, R, Wb, Rb, a gru gate "
                                                  r"\(r, z, n\) and a direction below 1"):
        layer.gate("R", "g")
    with pytest.raises(StateMismatchError, match="layer 'gru' \\(gru\\) has states h, not 'c'"):
        gru_state(2)["gru"]["c"]


def test_state_signature_of_takes_a_batch_size_value():
    states = gru_state(4)
    assert StateSignature.of(states).batch_size == 4
    assert StateSignature.of(states, batch_size=8).batch_size == 8
    assert StateSignature.of(states, batch_size=None).batch_size is None
    assert StateSignature.of(states, dtype="float32").dtype == "float32"
    with pytest.raises(StateFormatError, match="batch_size and dtype are values, not flags"):
        StateSignature.of(states, batch_size=True)


def test_a_signature_takes_a_list_of_layers():
    signature = StateSignature([LayerSignature("gru", 3)], batch_size=2)
    assert signature.layers == (LayerSignature("gru", 3),) and signature.check(gru_state(2)) == []


@pytest.mark.parametrize("units, found", [('"8"', "'8' (str)"), ("true", "True (bool)"),
                                          ("8.0", "8.0 (float)"), ("0", "0 (int)")])
def test_from_json_refuses_a_size_that_is_not_a_whole_number(units, found):
    text = '{"statefmt_signature": "1.0", "layers": [{"kind": "lstm", "units": UNITS}]}'.replace("UNITS", units)
    with pytest.raises(StateFormatError) as error:
        StateSignature.from_json(text)
    assert str(error.value) == f"signature layer 0: units: expected a whole number >= 1, found {found}"


@pytest.mark.parametrize("text, message", [
    ('{"statefmt_signature": "1.0", "layers": [{"kind": "lstm", "units": NaN}]}', "NaN is not a JSON number"),
    ('{"statefmt_signature": "1.0", "layers": [], "batch_size": Infinity}', "Infinity is not a JSON number"),
    ('{"statefmt_signature": "1.0", "layers": [{"kind": "lstm", "units": 8, "dtype": "x"}]}',
     "signature layer 0: unknown fields 'dtype'"),
    ('{"statefmt_signature": "1.0", "layers": [{"units": 8}]}', "signature layer 0: missing fields 'kind'"),
    ('{"statefmt_signature": "1.0", "layers": [], "batch_size": 2.5}', "batch_size: expected a whole number >= 0"),
    ('{"statefmt_signature": "1.0", "layers": {}}', "layers: expected a list, found {}"),
    ('{"statefmt_signature": 1, "layers": []}', "statefmt_signature: expected a 1.x version, found 1"),
    ("[" * 100_000 + "]" * 100_000, "not a statefmt signature: RecursionError"),
])
def test_from_json_refuses_what_is_not_a_signature(text, message):
    with pytest.raises(StateFormatError, match=re.escape(message)):
        StateSignature.from_json(text)


def test_more_streams_than_the_model_takes_points_to_picking_them():
    assert StateSignature([LayerSignature("gru", 3)], batch_size=8).check(gru_state(32)) == [
        "batch size: expected 8, found 32; pick the model's 8 streams with statefmt.load(path, streams=[...]) "
        "or states.rows([...])"]


def test_a_signature_says_what_it_was_given_instead():
    weights = WeightSet([gru_weights()])
    assert StateSignature([LayerSignature("gru", 3)]).check(weights) == [
        "expected a StateSet (a state, as statefmt.load(path) returns), found a WeightSet; weights go to an "
        "adapter's import_weights(weights, target)"]
    assert WeightSignature.of(weights).check(gru_state(2)) == [
        "expected a WeightSet (weights, as statefmt.load_weights(path) returns), found a StateSet; a state goes to "
        "an adapter's initial_state(states, target)"]


def test_weights_fit_the_signature_of_themselves():
    weights = WeightSet([gru_weights(directions=2, linear_before_reset=False)])
    assert WeightSignature.of(weights).check(weights) == []


@pytest.mark.parametrize("found", [True, False])
def test_the_gru_candidate_conventions_agree_only_for_a_diagonal_R_n_and_no_Rb_n(found):
    """r * (R_n h + Rb_n) == R_n (r * h) + Rb_n for a diagonal R_n and a zero Rb_n, either way round."""
    layer = gru_weights(linear_before_reset=found)
    target = WeightSignature([LayerWeightSignature("gru", 3, 2, linear_before_reset=not found,
                                                   advice={f"linear_before_reset={found}": "do this"})])
    order = ("after", "before") if found else ("before", "after")
    assert target.check(WeightSet([layer])) == [
        f"layer 0 'gru': linear_before_reset: the weights apply r {order[0]} the recurrent matmul "
        f"(linear_before_reset={found}), the target {order[1]} it; that is exact only when R_n is diagonal and Rb_n "
        "zero, not so in direction 0; do this"]
    R, Rb = np.array(layer["R"]), np.array(layer["Rb"])
    R[0, 6:] = np.diag(np.diag(R[0, 6:]))
    Rb[0, 6:] = 0
    diagonal = LayerWeights("gru", "gru", layer["W"], R, layer["Wb"], Rb, linear_before_reset=found)
    assert target.check(WeightSet([diagonal])) == []


def test_a_weight_signature_reports_every_field_at_once_with_the_advice_given():
    weights = WeightSet([gru_weights(units=4, input_size=5, recurrent_activation="hard_sigmoid")])
    target = WeightSignature([LayerWeightSignature(
        "gru", 3, 2, directions=2, name="target", recurrent_activations=("sigmoid", "hard_sigmoid"), bias=False,
        candidate_bias=False, advice={"recurrent_activation=hard_sigmoid": "build it with gates={value}",
                                      "bias": "build it with biases"})])
    assert target.check(weights) == [
        "layer 0 'gru': units: expected 3, found 4",
        "layer 0 'gru': input_size: expected 2, found 5",
        "layer 0 'gru': directions: expected 2, found 1",
        "layer 0 'gru': recurrent_activation: the weights use hard_sigmoid, the target uses sigmoid; build it "
        "with gates=hard_sigmoid",
        "layer 0 'gru': Wb and Rb: the weights have non-zero biases and the target has none; build it with biases",
        "layer 0 'gru': Rb_n (direction 0) is non-zero, and the target has no recurrent candidate bias "
        "(n = tanh(W_n x + Wb_n + r * (R_n h))), so it cannot be mapped exactly"]
    assert statefmt.WeightSignature is WeightSignature
