"""The contract every adapter keeps, run on every framework through its harness (tests/frameworks.py).

In the spirit of zarr's StoreTests: one suite states what the adapters promise alike (states and
weights round trips, proved numerically; signature; name=; broadcast and batch_size; strict
dtype; the refusals and what they say), and a test id names the framework that broke it. A new
adapter gets all of it by adding a harness. Each framework's own quirks stay in its test file.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import reference
from builders import largest_difference, random_states, through_file
from cli_check import assert_cli_reports
from frameworks import FRAMEWORKS, INPUT, LAYER_COUNT, UNITS

from statefmt import LayerState, LayerWeights, StateError, StateMismatchError, StateSet, WeightSet

BATCH, STEPS, SPLIT = 3, 8, 5
KINDS = ("lstm", "gru", "rnn")
LAYOUTS = ("single", "stacked", "bidirectional")
ONE_WAY = ("single", "stacked")  # a bidirectional layer's backward half reads the future: no split run equals it


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def framework(request):
    """The harness of one framework (skipped where it is not installed), its built targets shared by the tests."""
    return FRAMEWORKS[request.param]()


def inputs(batch=BATCH, seed=2):
    """float32 inputs; each harness casts them to its target's dtype."""
    return np.random.default_rng(seed).normal(size=(batch, STEPS, INPUT)).astype(np.float32)


def zeros_like(states):
    return StateSet([layer.with_arrays(**{n: np.zeros_like(layer[n]) for n in layer.state_names})
                     for layer in states])


def problems(call):
    with pytest.raises(StateMismatchError) as error:
        call()
    return error.value.problems


# 1. a state: export -> file -> initial_state gives it back exactly, and a split run continues the whole one

EXACT = [(kind, layout, "float32") for kind in KINDS for layout in LAYOUTS]
EXACT += [(kind, layout, dtype) for kind in KINDS for layout in ONE_WAY for dtype in ("float16", "bfloat16")]


@pytest.mark.parametrize("kind, layout, dtype", EXACT)
def test_a_state_round_trips_through_a_file_exactly(framework, kind, layout, dtype, tmp_path):
    if dtype not in framework.dtypes:
        pytest.skip(f"the {framework.name} harness builds {', '.join(framework.dtypes)} targets")
    target = framework.target(kind, layout, dtype)
    start = framework.initial_state(random_states(framework.signature(target), dtype=dtype), target)
    _, final = framework.run(target, inputs(), start)
    states = through_file(framework.export(target, final), tmp_path)
    assert len(states) == LAYER_COUNT[layout] and {layer.dtype for layer in states} == {dtype}
    source = states.metadata["source"]
    assert source["framework"] == framework.source
    assert source["version"] == importlib.import_module(framework.source).__version__ and source["model"]
    back = framework.initial_state(states, target, strict=True)
    found, expected = framework.arrays(back), framework.arrays(final)
    assert len(found) == len(expected) > 0
    for a, b in zip(found, expected):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ONE_WAY)
@pytest.mark.parametrize("kind", KINDS)
def test_a_split_run_continues_from_the_handed_off_state(framework, kind, layout, tmp_path):
    target, x = framework.target(kind, layout), inputs()
    states = random_states(framework.signature(target))
    start = framework.initial_state(states, target)
    whole, whole_final = framework.run(target, x, start)
    _, middle = framework.run(target, x[:, :SPLIT], start)
    resumed = framework.initial_state(through_file(framework.export(target, middle), tmp_path), target)
    second, final = framework.run(target, x[:, SPLIT:], resumed)
    np.testing.assert_allclose(second, whole[:, SPLIT:], atol=1e-5, rtol=0)
    assert largest_difference(framework.arrays(final), framework.arrays(whole_final)) < 1e-5
    cold, _ = framework.run(target, x[:, SPLIT:], framework.initial_state(zeros_like(states), target))
    assert largest_difference(cold, whole[:, SPLIT:]) > 1e-3  # the handed-off state mattered


# 2. weights: the neutral layout runs like the numpy yardstick, and through a file makes a fresh target compute alike

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_exported_weights_run_like_the_reference(framework, kind, layout):
    target, x = framework.target(kind, layout), inputs()
    start = random_states(framework.signature(target))
    y, final = framework.run(target, x, framework.initial_state(start, target))
    weights = framework.export_weights(target)
    assert framework.weight_signature(target).check(weights) == []
    expected_y, expected = reference.run(weights, x, start)
    np.testing.assert_allclose(y, expected_y, atol=1e-5, rtol=0)
    for found_layer, expected_layer in zip(framework.export(target, final), expected, strict=True):
        for name in found_layer.state_names:
            np.testing.assert_allclose(found_layer[name], expected_layer[name], atol=1e-5, rtol=0)
    zero_y, _ = reference.run(weights, x)
    assert np.max(np.abs(zero_y - expected_y)) > 1e-3  # the initial state mattered


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_weights_through_a_file_make_a_fresh_target_compute_the_same(framework, kind, layout, tmp_path):
    source, fresh, x = framework.target(kind, layout), framework.build(kind, layout, seed=7), inputs()
    start = random_states(framework.signature(source))
    expected, _ = framework.run(source, x, framework.initial_state(start, source))
    before, _ = framework.run(fresh, x, framework.initial_state(start, fresh))
    assert largest_difference(before, expected) > 1e-3
    parameters = framework.parameters(fresh)
    returned = framework.import_weights(through_file(framework.export_weights(source), tmp_path), fresh)
    if framework.in_place:
        assert returned is framework.subject(fresh)
        loaded = fresh
    else:  # a new target comes back, and the one given is left as it was
        assert all(np.array_equal(a, b) for a, b in zip(parameters, framework.parameters(fresh), strict=True))
        loaded = framework.holding(fresh, returned)
    after, _ = framework.run(loaded, x, framework.initial_state(start, loaded))
    np.testing.assert_array_equal(after, expected)


# 3. what a target says it takes, and names under name=

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", KINDS)
def test_the_signature_describes_the_target(framework, kind, layout):
    signature = framework.signature(framework.target(kind, layout))
    directions = 2 if layout == "bidirectional" else 1
    assert [(layer.kind, layer.units, layer.directions, layer.proj_units) for layer in signature.layers] == [
        (kind, UNITS, directions, None)] * LAYER_COUNT[layout]
    assert len({layer.name for layer in signature.layers}) == LAYER_COUNT[layout]
    assert (signature.batch_size, signature.dtype) == (None, "float32")


def test_name_prefixes_every_layer_name(framework):
    target = framework.target("lstm", "stacked")
    names = [f"enc/{layer.name}" for layer in framework.signature(target).layers]
    _, final = framework.run(target, inputs(), framework.initial_state(
        random_states(framework.signature(target)), target))
    assert [layer.name for layer in framework.signature(target, name="enc").layers] == names
    assert [layer.name for layer in framework.export(target, final, name="enc")] == names
    assert [layer.name for layer in framework.export_weights(target, name="enc")] == names


# 4. a state that does not fit: every mismatch named by layer and field, at once, in the library and the CLI

def replace_layer(states, index, layer):
    layers = list(states.layers)
    layers[index] = layer
    return StateSet(layers)


def as_dtype(states, dtype):
    return StateSet([layer.with_arrays(**{n: layer[n].astype(dtype) for n in layer.state_names}) for layer in states])


def narrow_h(states, index=0):  # an h narrower than c: an LSTM with a projection of h
    layer = states[index]
    return replace_layer(states, index, LayerState(layer.name, "lstm", h=layer["c"][:, :, :2].copy(), c=layer["c"]))


def fewer_units(states, index=1):
    layer = states[index]
    return replace_layer(states, index, LayerState(layer.name, "lstm", h=layer["h"][:, :, :3], c=layer["c"][:, :, :3]))


def two_directions(states, index=1):
    layer = states[index]
    return replace_layer(states, index, layer.with_arrays(**{n: np.concatenate([layer[n]] * 2)
                                                             for n in layer.state_names}))


# case: (the change to a state that fits a stacked LSTM, the options, the problems with {0} and {1} the layer names)
MISMATCHES = {
    "layer count": (lambda s: s.select([0]), {},
                    ["layer count: expected 2, found 1 (StateSet.select picks the layers a target holds)"]),
    "kind": (lambda s: replace_layer(s, 1, LayerState(s[1].name, "gru", h=s[1]["h"])), {},
             ["layer 1 {1!r}: kind: expected lstm, found gru"]),
    "units": (fewer_units, {}, ["layer 1 {1!r}: units: expected 4, found 3"]),
    "directions": (two_directions, {}, ["layer 1 {1!r}: directions: expected 1, found 2"]),
    "proj_units": (narrow_h, {}, ["layer 0 {0!r}: proj_units: expected None, found 2"]),
    "batch size": (lambda s: s, {"batch_size": 5}, ["batch size: expected 5, found 3"]),
    "too many streams": (lambda s: s, {"batch_size": 2},
                         ["batch size: expected 2, found 3; pick the model's 2 streams with "
                          "statefmt.load(path, streams=[...]) or states.rows([...])"]),
    "dtype": (lambda s: as_dtype(s, "float16"), {"strict": True},
              ["layer 0 {0!r}: dtype: expected float32, found float16",
               "layer 1 {1!r}: dtype: expected float32, found float16"]),
    "all at once": (lambda s: two_directions(fewer_units(narrow_h(s))), {"strict": True},
                    ["layer 0 {0!r}: proj_units: expected None, found 2",
                     "layer 1 {1!r}: units: expected 4, found 3",
                     "layer 1 {1!r}: directions: expected 1, found 2"]),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_a_mismatch_names_layer_and_field_in_the_library_and_the_cli(framework, case, tmp_path):
    target = framework.target("lstm", "stacked")
    signature = framework.signature(target)
    change, options, expected = MISMATCHES[case]
    expected = [problem.format(*(layer.name for layer in signature.layers)) for problem in expected]
    states = change(random_states(signature))
    assert problems(lambda: framework.initial_state(states, target, **options)) == expected
    # `statefmt validate --against` prints the same; like initial_state without strict, it takes any dtype
    against = dataclasses.replace(signature, batch_size=options.get("batch_size"))
    assert_cli_reports(states, against, [p for p in expected if ": dtype: " not in p], tmp_path)


def test_a_mismatch_names_the_file_the_state_or_weights_came_from(framework, tmp_path):
    target = framework.target("gru", "stacked")
    loaded = through_file(random_states(framework.signature(target)).select([0]), tmp_path, "today.statefmt")
    with pytest.raises(StateMismatchError) as error:
        framework.initial_state(loaded, target)
    assert loaded.file and str(error.value).startswith(f"{loaded.file}: layer count: expected 2, found 1")
    with pytest.raises(StateMismatchError) as error:
        framework.initial_state(StateSet(loaded.layers, file="kept.statefmt"), target)
    assert str(error.value).startswith("kept.statefmt: layer count: expected 2, found 1")
    weights = through_file(framework.export_weights(framework.target("gru", "single")), tmp_path, "w.statefmt")
    with pytest.raises(StateMismatchError) as error:
        framework.import_weights(weights, framework.build("gru", "stacked", seed=7))
    assert weights.file and str(error.value).startswith(f"{weights.file}: layer count: expected 2, found 1")


# 5. a state's dtype and batch: cast unless strict, any byte order; broadcast=True starts N streams from one

def test_initial_state_casts_to_the_targets_dtype_unless_strict(framework):
    target = framework.target("gru", "single")
    states = random_states(framework.signature(target), dtype="float64")
    (h,) = framework.arrays(framework.initial_state(states, target))
    assert h.dtype == np.float32
    np.testing.assert_array_equal(h.ravel(), states[0]["h"].astype(np.float32).ravel())
    name = states[0].name
    assert problems(lambda: framework.initial_state(states, target, strict=True)) == [
        f"layer 0 {name!r}: dtype: expected float32, found float64"]


def test_a_big_endian_state_starts_the_target_from_its_values(framework):
    target = framework.target("gru", "single")
    states = random_states(framework.signature(target))
    swapped = StateSet([layer.with_arrays(h=layer["h"].astype(">f4")) for layer in states])
    (h,) = framework.arrays(framework.initial_state(swapped, target, strict=True))
    np.testing.assert_array_equal(h.ravel(), states[0]["h"].ravel())


def test_broadcast_starts_every_stream_from_a_batch_1_state(framework):
    target = framework.target("gru", "single")
    one, x = random_states(framework.signature(target), batch=1), inputs()
    alone, _ = framework.run(target, x[:1], framework.initial_state(one, target))
    four, _ = framework.run(target, np.repeat(x[:1], 4, axis=0),
                            framework.initial_state(one, target, broadcast=True, batch_size=4))
    for row in range(4):
        np.testing.assert_allclose(four[row], alone[0], atol=1e-6, rtol=0)
    (h,) = framework.arrays(framework.initial_state(random_states(framework.signature(target), batch=4), target,
                                                    batch_size=4))
    assert 4 in h.shape


BROADCAST_REFUSALS = {
    "broadcast is a flag": ({"broadcast": 4}, [
        "broadcast: expected True or False, found 4; to start N streams from a batch-1 state pass broadcast=True "
        "and batch_size=N (here broadcast=True, batch_size=4)"]),
    "broadcast needs a size": ({"broadcast": True}, [
        "broadcast=True needs a batch size, and the target fixes none: pass batch_size=N to start N streams"]),
    "one stream for four": ({"batch_size": 4}, [
        "batch size: expected 4, found 1 (broadcast=True starts every stream from it)"]),
    "batch_size zero": ({"batch_size": 0}, ["batch_size: expected a whole number >= 1, found 0"]),
    "batch_size a flag": ({"broadcast": True, "batch_size": True}, [
        "batch_size: expected a whole number >= 1, found True"]),
}


@pytest.mark.parametrize("case", BROADCAST_REFUSALS)
def test_broadcast_and_batch_size_refuse_what_they_cannot_mean(framework, case):
    target = framework.target("gru", "single")
    options, expected = BROADCAST_REFUSALS[case]
    one = random_states(framework.signature(target), batch=1)
    assert problems(lambda: framework.initial_state(one, target, **options)) == expected


# 6. what is not a state, or not a finite one, is refused with the reason

@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_state_holding_nan_or_inf_is_refused(framework, value):
    target = framework.target("gru", "single")
    states = random_states(framework.signature(target))
    states[0]["h"][0, 1, 2] = value
    with pytest.raises(StateError) as error:
        framework.initial_state(states, target)
    assert "\n" not in str(error.value)


def test_weights_are_not_a_state_and_a_state_is_not_weights(framework):
    target = framework.target("gru", "single")
    with pytest.raises(StateMismatchError, match="expected a StateSet .*, found a WeightSet; weights go to an "
                                                 r"adapter's import_weights\(weights, target\)"):
        framework.initial_state(framework.export_weights(target), target)
    with pytest.raises(StateMismatchError, match="expected a WeightSet .*, found a StateSet; a state goes to an "
                                                 r"adapter's initial_state\(states, target\)"):
        framework.import_weights(random_states(framework.signature(target)), framework.build("gru", "single", seed=7))
    with pytest.raises(StateMismatchError, match="expected a StateSet"):
        framework.initial_state(np.zeros((1, BATCH, UNITS), "float32"), target)


def test_export_without_a_state_says_to_pass_the_one_a_run_returned(framework):
    with pytest.raises(StateError, match="pass"):
        framework.export(framework.target("gru", "single"), None)


def weights_of_sizes(name, units, input_size):
    """GRU weights of other sizes, without biases (which every GRU target takes, NNX's too)."""
    rng = np.random.default_rng(4)
    W, R = (rng.standard_normal(shape).astype("float32") for shape in ((1, 3 * units, input_size),
                                                                       (1, 3 * units, units)))
    return WeightSet([LayerWeights(name, "gru", W, R, np.zeros((1, 3 * units), "float32"),
                                   np.zeros((1, 3 * units), "float32"))])


def with_values(weights, key, value):
    layer = weights[0]
    arrays = {k: np.full_like(layer[k], value) if k == key else layer[k] for k in layer.weight_names}
    return WeightSet([LayerWeights(layer.name, layer.kind, **arrays)])


# case: (the weights, the target, the problems with {0} the weights' first layer name)
WEIGHT_REFUSALS = {
    "layer count and kind": (lambda f: f.export_weights(f.target("rnn", "stacked")), ("lstm", "single"),
                             ["layer count: expected 1, found 2 (pick the layers with WeightSet(weights.layers[i:j]))",
                              "layer 0 {0!r}: kind: expected lstm, found rnn"]),
    "directions": (lambda f: f.export_weights(f.target("gru", "single")), ("gru", "bidirectional"),
                   ["layer 0 {0!r}: directions: expected 2, found 1"]),
    "units and input size": (lambda f: weights_of_sizes("gru", UNITS + 2, INPUT - 1), ("gru", "single"),
                             ["layer 0 {0!r}: units: expected 4, found 6",
                              "layer 0 {0!r}: input_size: expected 5, found 4"]),
    "nan": (lambda f: with_values(f.export_weights(f.target("gru", "single")), "R", np.nan), ("gru", "single"),
            ["layer 0 {0!r}: R: 48 non-finite values (NaN or Inf); weights holding them would poison every output"]),
    "inf": (lambda f: with_values(f.export_weights(f.target("gru", "single")), "Wb", -np.inf), ("gru", "single"),
            ["layer 0 {0!r}: Wb: 12 non-finite values (NaN or Inf); weights holding them would poison every output"]),
}


@pytest.mark.parametrize("case", WEIGHT_REFUSALS)
def test_import_weights_refuses_what_does_not_fit_and_changes_nothing(framework, case):
    make, (kind, layout), expected = WEIGHT_REFUSALS[case]
    weights, target = make(framework), framework.build(kind, layout, seed=7)
    expected = [problem.format(weights[0].name) for problem in expected]
    assert framework.weight_signature(target).check(weights) == [p for p in expected if "non-finite" not in p]
    before = framework.parameters(target)
    assert problems(lambda: framework.import_weights(weights, target)) == expected
    assert all(np.array_equal(a, b) for a, b in zip(before, framework.parameters(target), strict=True))

