"""The Flax adapter's own cases, linen and NNX: cells as targets, OptimizedLSTMCell, the (c, h) carry, residual and
other cell options, weights between linen and NNX, Flax's advice in refusals, Keras' hard_sigmoid. What every
adapter keeps is in test_contract.py."""

import functools

import numpy as np
import pytest
import reference
from builders import largest_difference, random_states, relabel, through_file

import statefmt
from statefmt import LayerWeights, StateError, StateMismatchError, WeightSet

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
flax = pytest.importorskip("flax")
jnp = jax.numpy
fa = pytest.importorskip("statefmt.adapters.flax")

BATCH, INPUT, UNITS, UNITS2, STEPS, SPLIT = 3, 5, 4, 6, 8, 5
APIS = ("linen", "nnx")
CELLS = ("lstm", "lstm_opt", "gru", "rnn")
LAYOUTS = ("cell", "rnn", "stack", "bidir")
CELL_CLASSES = {"lstm": "LSTMCell", "lstm_opt": "OptimizedLSTMCell", "gru": "GRUCell", "rnn": "SimpleCell",
                "rnn_res": "SimpleCell", "lstm_relu": "LSTMCell", "gru_tanh_gates": "GRUCell"}
CELL_OPTIONS = {"rnn_res": {"residual": True}, "lstm_relu": {"activation_fn": jax.nn.relu},
                "gru_tanh_gates": {"gate_fn": jax.numpy.tanh}}


def make_cell(api, cell, in_features, units, dtype, seed, **options):
    options = {"param_dtype": dtype, "dtype": dtype, "bias_init": nn.initializers.normal(0.5),
               "recurrent_kernel_init": nn.initializers.lecun_normal(),  # orthogonal has no float16 on CPU
               **CELL_OPTIONS.get(cell, {}), **options}
    if api == "linen":
        return getattr(nn, CELL_CLASSES[cell])(units, **options)
    return getattr(nnx, CELL_CLASSES[cell])(in_features, units, rngs=nnx.Rngs(seed), **options)


class Model:
    """A Flax target (a cell, an RNN, a stack of two RNNs or a Bidirectional), its linen variables, a run."""

    def __init__(self, api, cell, layout, dtype="float32", seed=0, **options):
        self.api, self.layout = api, layout
        lib = nn if api == "linen" else nnx

        def rnn(in_features, units, offset=0):
            return lib.RNN(make_cell(api, cell, in_features, units, dtype, seed + offset, **options))

        if layout == "cell":
            self.target = make_cell(api, cell, INPUT, UNITS, dtype, seed, **options)
        elif layout == "rnn":
            self.target = rnn(INPUT, UNITS)
        elif layout == "stack":
            self.target = [rnn(INPUT, UNITS), rnn(UNITS, UNITS2, 1)]
        else:
            self.target = lib.Bidirectional(rnn(INPUT, UNITS), rnn(INPUT, UNITS, 1))
        self.variables = None
        if api == "linen":
            key, x = jax.random.key(seed), jnp.zeros((BATCH, STEPS, INPUT), dtype)
            if layout == "cell":
                carry = self.target.initialize_carry(key, x[:, 0].shape)
                self.variables = self.target.init(key, carry, x[:, 0])
            elif layout == "stack":
                second = jnp.zeros((BATCH, STEPS, UNITS), dtype)
                self.variables = [self.target[0].init(key, x), self.target[1].init(jax.random.key(seed + 1), second)]
            else:
                self.variables = self.target.init(key, x)

    def run(self, x, carry):
        """(final carry, output sequence) from `carry`."""
        x = jnp.asarray(x)
        if self.layout != "stack":
            return self._apply(self.target, self.variables, x, carry)
        carries = []
        for index, module in enumerate(self.target):
            variables = None if self.variables is None else self.variables[index]
            final, x = self._apply(module, variables, x, carry[index])
            carries.append(final)
        return carries, x

    def _apply(self, module, variables, x, carry):
        if self.layout == "cell":
            outputs = []
            for t in range(x.shape[1]):
                step = module.apply(variables, carry, x[:, t]) if self.api == "linen" else module(carry, x[:, t])
                carry, y = step
                outputs.append(y)
            return carry, jnp.stack(outputs, axis=1)
        if self.api == "linen":
            return module.apply(variables, x, initial_carry=carry, return_carry=True)
        return module(x, initial_carry=carry, return_carry=True)


@functools.cache
def model(api, cell, layout, dtype="float32", seed=0):
    """Built once per test module; tests that load weights into a model build their own."""
    return Model(api, cell, layout, dtype, seed)


def inputs(dtype="float32", seed=2):
    return np.random.default_rng(seed).normal(size=(BATCH, STEPS, INPUT)).astype(jnp.dtype(dtype))


def leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def assert_same_carry(found, expected):
    assert jax.tree_util.tree_structure(found) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(found), jax.tree_util.tree_leaves(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# 1. export -> save -> load -> initial_state gives back the carry exactly

OWN = "lstm_opt"  # a cell test_contract.py does not build; its harness builds the others in RNNs
ROUNDTRIP = [(api, cell, layout, "float32") for api in APIS for cell in CELLS for layout in LAYOUTS
             if cell == OWN or layout == "cell"]
ROUNDTRIP += [(api, OWN, "rnn", dtype) for api in APIS for dtype in ("float16", "bfloat16")]


@pytest.mark.parametrize("api, cell, layout, dtype", ROUNDTRIP)
def test_roundtrip_through_a_file_is_exact(api, cell, layout, dtype, tmp_path):
    m = model(api, cell, layout, dtype)
    carry, _ = m.run(inputs(dtype), fa.initial_state(random_states(fa.signature(m.target), dtype=dtype), m.target))
    states = through_file(fa.export(m.target, carry), tmp_path)
    assert {layer.dtype for layer in states} == {dtype}
    assert states.metadata["source"]["framework"] == "flax" and states.metadata["source"]["version"] == flax.__version__
    assert states.metadata["source"]["model"].startswith(f"{api}.")
    assert_same_carry(fa.initial_state(states, m.target, strict=True), carry)


# 2. a run in two chunks, the state handed over through a file, equals one run

@pytest.mark.parametrize("api, cell, layout", [(api, cell, layout) for api in APIS for cell in CELLS
                                               for layout in ("cell", "rnn", "stack")
                                               if cell == OWN or layout == "cell"])
def test_continuation_through_a_file(api, cell, layout, tmp_path):
    m = model(api, cell, layout)
    x, start = inputs(), fa.initial_state(random_states(fa.signature(m.target)), m.target)
    full_carry, full_y = m.run(x, start)
    carry, _ = m.run(x[:, :SPLIT], start)
    resumed = fa.initial_state(through_file(fa.export(m.target, carry), tmp_path), m.target)
    end_carry, end_y = m.run(x[:, SPLIT:], resumed)
    np.testing.assert_allclose(np.asarray(end_y), np.asarray(full_y)[:, SPLIT:], atol=1e-5, rtol=0)
    assert largest_difference(leaves(end_carry), leaves(full_carry)) < 1e-5
    zeros = jax.tree_util.tree_map(jnp.zeros_like, resumed)
    _, zero_y = m.run(x[:, SPLIT:], zeros)
    assert largest_difference(leaves(zero_y), leaves(full_y[:, SPLIT:])) > 1e-3


@pytest.mark.parametrize("cell", ("lstm", "lstm_opt"))
@pytest.mark.parametrize("api", APIS)
def test_lstm_carry_is_c_then_h(api, cell, tmp_path):
    m = model(api, cell, "rnn")
    x = inputs()
    carry, y = m.run(x[:, :SPLIT], fa.initial_state(random_states(fa.signature(m.target)), m.target))
    states = fa.export(m.target, carry)
    np.testing.assert_array_equal(states[0]["c"][0], np.asarray(carry[0]))
    np.testing.assert_array_equal(states[0]["h"][0], np.asarray(carry[1]))
    np.testing.assert_array_equal(states[0]["h"][0], np.asarray(y)[:, -1])  # h is what the LSTM outputs
    assert largest_difference(leaves(carry[0]), leaves(carry[1])) > 1e-3  # so that a swap would show
    back = fa.initial_state(through_file(states, tmp_path), m.target)
    np.testing.assert_array_equal(np.asarray(back[0]), states[0]["c"][0])
    _, right = m.run(x[:, SPLIT:], back)
    _, swapped = m.run(x[:, SPLIT:], (back[1], back[0]))
    assert largest_difference(leaves(right), leaves(swapped)) > 1e-3


def test_initial_state_casts_broadcasts_and_places():
    m = model("nnx", "lstm", "rnn")
    half = random_states(fa.signature(m.target), dtype="float16", batch=1)
    device = jax.devices("cpu")[0]
    c, h = fa.initial_state(half, m.target, broadcast=True, batch_size=4, device=device)
    assert c.dtype == jnp.float32 and c.shape == (4, UNITS) and c.devices() == {device}
    np.testing.assert_array_equal(np.asarray(h), np.repeat(half[0]["h"][0].astype("float32"), 4, axis=0))


# 3. weights: the neutral layout run by the numpy reference agrees with Flax

WEIGHT_CELLS = CELLS + ("rnn_res", "lstm_relu", "gru_tanh_gates")
CONTRACT_CELLS = ("lstm", "gru", "rnn")  # in an RNN, a stack and a Bidirectional: test_contract.py


@pytest.mark.parametrize("api, cell, layout", [(api, cell, layout) for api in APIS for cell in WEIGHT_CELLS
                                               for layout in LAYOUTS if cell not in CONTRACT_CELLS or layout == "cell"])
def test_weights_run_like_the_reference(api, cell, layout):
    m = model(api, cell, layout)
    start, x = random_states(fa.signature(m.target)), inputs()
    carry, y = m.run(x, fa.initial_state(start, m.target))
    weights = fa.export_weights(m.target, variables=m.variables)
    expected_y, expected_states = reference.run(weights, x, start)
    np.testing.assert_allclose(np.asarray(y), expected_y, atol=1e-5, rtol=0)
    for found, expected in zip(fa.export(m.target, carry), expected_states):
        for name in found.state_names:
            np.testing.assert_allclose(found[name], expected[name], atol=1e-5, rtol=0)
    zero_y, _ = reference.run(weights, x)
    assert np.max(np.abs(zero_y - expected_y)) > 1e-3


@pytest.mark.parametrize("layout", ("rnn", "stack", "bidir"))
@pytest.mark.parametrize("cell", (OWN, "rnn_res"))
@pytest.mark.parametrize("api", APIS)
def test_weights_through_a_file_into_a_fresh_model(api, cell, layout, tmp_path):
    m, fresh = model(api, cell, layout), Model(api, cell, layout, seed=7)
    start = fa.initial_state(random_states(fa.signature(m.target)), m.target)
    _, y = m.run(inputs(), start)
    _, before = fresh.run(inputs(), start)
    assert largest_difference(leaves(before), leaves(y)) > 1e-3
    statefmt.save(fa.export_weights(m.target, variables=m.variables), tmp_path / "w.statefmt")
    loaded = fa.import_weights(statefmt.load_weights(tmp_path / "w.statefmt"), fresh.target,
                               variables=fresh.variables)
    if api == "nnx":
        assert loaded is fresh.target  # NNX modules hold their params: the same module comes back
    else:
        fresh.variables = loaded
    _, after = fresh.run(inputs(), start)
    if cell == "rnn_res":  # R + I on export, R - I on load: equal up to one rounding
        np.testing.assert_allclose(np.asarray(after), np.asarray(y), atol=1e-6, rtol=0)
    else:
        np.testing.assert_array_equal(np.asarray(after), np.asarray(y))


CROSS = [("linen", "nnx", cell) for cell in ("lstm", "lstm_opt", "rnn", "rnn_res")]
CROSS += [("nnx", "linen", cell) for cell in CELLS]


@pytest.mark.parametrize("source_api, target_api, cell", CROSS)
def test_weights_between_linen_and_nnx(source_api, target_api, cell):
    source, target = model(source_api, cell, "bidir"), Model(target_api, cell, "bidir", seed=7)
    start = random_states(fa.signature(source.target))
    _, y = source.run(inputs(), fa.initial_state(start, source.target))
    loaded = fa.import_weights(fa.export_weights(source.target, variables=source.variables), target.target,
                               variables=target.variables)
    if target_api == "linen":
        target.variables = loaded
    _, found = target.run(inputs(), fa.initial_state(start, target.target))
    np.testing.assert_allclose(np.asarray(found), np.asarray(y), atol=1e-5, rtol=0)


# 4. a carry that is not the source's is refused

EXPORT_MISTAKES = {
    "no carry": (lambda m, c: None, StateError, "Flax modules keep no carry: pass the carry a run returned"),
    "wrong units": (lambda m, c: (c[0][:, :3], c[1][:, :3]), StateMismatchError,
                    "layer 0 'lstm_0': carry: expected arrays of shape (batch, 4), found (3, 3)"),
    "h only": (lambda m, c: c[1], StateMismatchError, "layer 0 'lstm_0': carry: an LSTM carry is (c, h)"),
    "stack of one": (lambda m, c: c, StateMismatchError, "carries: a stack of 1 layers takes a list of 1 carries"),
}


@pytest.mark.parametrize("case", EXPORT_MISTAKES)
@pytest.mark.parametrize("api", APIS)
def test_export_refuses_a_carry_that_is_not_the_sources(api, case):
    m = model(api, "lstm", "rnn")
    carry = fa.initial_state(random_states(fa.signature(m.target)), m.target)
    wrong, error_type, message = EXPORT_MISTAKES[case]
    source = [m.target] if case == "stack of one" else m.target
    with pytest.raises(error_type, match=None) as error:
        fa.export(source, wrong(m, carry))
    assert message in str(error.value)


# 5. weights that cannot be mapped exactly are refused, with the reason and what would work

def projected_lstm():
    rng = np.random.default_rng(3)
    rows, proj = 4 * UNITS, 2
    arrays = [rng.normal(size=shape).astype("float32") for shape in
              ((1, rows, INPUT), (1, rows, proj), (1, rows), (1, rows), (1, proj, UNITS))]
    return WeightSet([LayerWeights("lstm_0", "lstm", *arrays)])


def exported(api, cell, layout="rnn"):
    m = model(api, cell, layout)
    return fa.export_weights(m.target, variables=m.variables)


LOAD_REFUSALS = {
    "nnx gru recurrent candidate bias": (
        lambda: exported("linen", "gru"), ("nnx", "gru"),
        ["layer 0 'gru_0': Rb_n (direction 0) is non-zero, and the target has no recurrent candidate bias "
         "(n = tanh(W_n x + Wb_n + r * (R_n h))), so it cannot be mapped exactly; flax.nnx GRUCell has none: use a "
         "target with a recurrent candidate bias (flax.linen GRUCell, PyTorch GRU, Keras GRU(reset_after=True)), "
         "or weights whose Rb_n is zero"]),
    "projection": (
        projected_lstm, ("linen", "lstm"),
        ["layer 0 'lstm_0': proj_units: expected None, found 2; Flax cells have no projection of h: load them into "
         "a PyTorch LSTM with proj_size=2, or use weights without P"]),
    "reset before the matmul": (
        lambda: relabel(exported("nnx", "gru"), linear_before_reset=False), ("linen", "gru"),
        ["layer 0 'gru_0': linear_before_reset: the weights apply r before the recurrent matmul "
         "(linear_before_reset=False), the target after it; that is exact only when R_n is diagonal and Rb_n "
         "zero, not so in direction 0; Flax GRU cells apply r after the recurrent matmul: load them into Keras "
         "GRU(reset_after=False)"]),
    "activation": (
        lambda: exported("linen", "lstm_relu"), ("nnx", "lstm"),
        ["layer 0 'lstm_0': activation: the weights use relu, the target uses tanh; build the cell with "
         "activation_fn=jax.nn.relu"]),
}


@pytest.mark.parametrize("case", LOAD_REFUSALS)
def test_import_weights_refuses_with_flax_advice(case):
    weights, (api, cell, *layout), expected = LOAD_REFUSALS[case]
    target = Model(api, cell, layout[0] if layout else "rnn", seed=7)
    with pytest.raises(StateMismatchError) as error:
        fa.import_weights(weights(), target.target, variables=target.variables)
    assert error.value.problems == expected


EXPORT_REFUSALS = {
    "unknown activation": (
        lambda api: Model(api, "lstm", "rnn", activation_fn=jax.nn.gelu).target,
        "layer 0 'lstm_0': activation: gelu has no neutral name; the neutral layout knows tanh (jax.numpy.tanh), "
        "sigmoid (jax.nn.sigmoid), relu (jax.nn.relu), hard_sigmoid (jax.nn.hard_sigmoid)"),
    "backward-only rnn": (
        lambda api: (nn if api == "linen" else nnx).RNN(make_cell(api, "gru", INPUT, UNITS, "float32", 0),
                                                         reverse=True),
        "layer 0 'gru_0': reverse=True: a backward-only RNN has no neutral layout (direction 0 runs forward); "
        "wrap it with a forward RNN in a Bidirectional, or use reverse=False"),
}


@pytest.mark.parametrize("case", EXPORT_REFUSALS)
@pytest.mark.parametrize("api", APIS)
def test_export_weights_refuses(api, case):
    build, expected = EXPORT_REFUSALS[case]
    target = build(api)
    variables = None
    if api == "linen":
        variables = target.init(jax.random.key(0), jnp.zeros((BATCH, STEPS, INPUT)))
    with pytest.raises(StateMismatchError) as error:
        fa.export_weights(target, variables=variables)
    assert str(error.value).startswith(expected)


@pytest.mark.parametrize("api", APIS)
def test_a_cell_without_neutral_layout_is_refused(api):
    cell = nn.MGUCell(UNITS) if api == "linen" else nnx.RNN(nnx.LSTMCell(INPUT, UNITS, rngs=nnx.Rngs(0)))
    if api == "nnx":  # NNX has no MGUCell here: a Bidirectional of different cells has no layout either
        cell = nnx.Bidirectional(cell, nnx.RNN(nnx.GRUCell(INPUT, UNITS, rngs=nnx.Rngs(1))))
    with pytest.raises(StateMismatchError, match=r"layer 0: .* has no neutral layout; statefmt maps a LSTMCell"):
        fa.signature(cell)


@pytest.mark.parametrize("api", APIS)
def test_a_bidirectional_with_unequal_directions_is_refused(api):
    lib = nn if api == "linen" else nnx
    rnns = [lib.RNN(make_cell(api, "gru", INPUT, units, "float32", 0)) for units in (UNITS, UNITS2)]
    with pytest.raises(StateMismatchError) as error:
        fa.signature(lib.Bidirectional(*rnns))
    assert str(error.value) == ("layer 0: the forward and backward cells differ in units (4 vs 6); the neutral "
                                "layout stacks the directions of a layer, so build both with the same units")


def test_linen_needs_variables_and_nnx_refuses_them():
    linen, nnx_model = model("linen", "gru", "rnn"), model("nnx", "gru", "rnn")
    with pytest.raises(StateError, match="linen modules hold no params: pass the variables"):
        fa.export_weights(linen.target)
    with pytest.raises(StateError, match="NNX modules hold their params: call without `variables`"):
        fa.export_weights(nnx_model.target, variables=linen.variables)


# 6. importing the adapter, and a missing framework: test_adapter_imports.py


# 7. Keras 3's hard_sigmoid is jax.nn.hard_sigmoid: weights from a Keras LSTM continue exactly in Flax

@pytest.mark.parametrize("api", APIS)
def test_keras_hard_sigmoid_lstm_continues_in_a_flax_cell_with_jax_hard_sigmoid(api, tmp_path):
    keras = pytest.importorskip("keras")
    from statefmt.adapters import keras as ka

    keras.utils.set_random_seed(0)
    layer = keras.layers.LSTM(UNITS, recurrent_activation="hard_sigmoid", return_sequences=True, return_state=True,
                              bias_initializer=keras.initializers.RandomNormal(stddev=0.5))
    x = inputs()
    whole = keras.ops.convert_to_numpy(layer(x)[0])[:, SPLIT:]
    _, *state = layer(x[:, :SPLIT])
    statefmt.save(ka.export(layer, state), tmp_path / "s.statefmt")
    statefmt.save(ka.export_weights(layer), tmp_path / "w.statefmt")
    weights = statefmt.load_weights(tmp_path / "w.statefmt")
    assert weights[0].recurrent_activation == "hard_sigmoid"

    sigmoid = Model(api, "lstm", "rnn", seed=7)  # Flax's default gate_fn: refused, with advice that works
    with pytest.raises(StateMismatchError) as error:
        fa.import_weights(weights, sigmoid.target, variables=sigmoid.variables)
    assert error.value.problems == [f"layer 0 {weights[0].name!r}: recurrent_activation: the weights use "
                                    "hard_sigmoid, the target uses sigmoid; build the cell with "
                                    "gate_fn=jax.nn.hard_sigmoid"]
    target = Model(api, "lstm", "rnn", seed=7, gate_fn=jax.nn.hard_sigmoid)
    loaded = fa.import_weights(weights, target.target, variables=target.variables)
    target.variables = loaded if api == "linen" else None
    _, continued = target.run(x[:, SPLIT:], fa.initial_state(statefmt.load(tmp_path / "s.statefmt"), target.target))
    np.testing.assert_allclose(np.asarray(continued), whole, atol=1e-5, rtol=0)
    zero = jax.tree_util.tree_map(jnp.zeros_like, fa.initial_state(statefmt.load(tmp_path / "s.statefmt"),
                                                                    target.target))
    _, cold = target.run(x[:, SPLIT:], zero)
    assert np.max(np.abs(np.asarray(cold) - whole)) > 1e-3
