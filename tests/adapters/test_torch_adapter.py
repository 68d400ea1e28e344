"""The PyTorch adapter's own cases: cells, time-major, bias=False, proj_size, relu, unbatched states, no copies,
devices, training on, and PyTorch's advice in refusals. What every adapter keeps is in test_contract.py."""

import functools

import numpy as np
import pytest
import reference
from builders import largest_difference, random_states, relabel, through_file

import statefmt
from statefmt import LayerState, StateError, StateMismatchError, StateSet, WeightSet

torch = pytest.importorskip("torch")
ta = pytest.importorskip("statefmt.adapters.torch")
nn = torch.nn

BATCH, INPUT, UNITS, UNITS2, PROJ, STEPS, SPLIT = 3, 5, 4, 6, 2, 8, 5
KINDS = ("lstm", "gru", "rnn")
MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
# case -> constructor options; "cell" builds nn.*Cell
CASES = {
    "cell": {},
    "one": {},
    "time_major": {"batch_first": False},
    "stack": {"num_layers": 2},
    "bidir": {"num_layers": 2, "bidirectional": True},
    "nobias": {"num_layers": 2, "bias": False},
    "proj": {"num_layers": 2, "proj_size": PROJ},
    "proj_bidir": {"num_layers": 2, "bidirectional": True, "proj_size": PROJ},
    "relu": {"nonlinearity": "relu"},
}
ONLY = {"proj": ("lstm",), "proj_bidir": ("lstm",), "relu": ("rnn",)}
KIND_CASES = [(kind, case) for case in CASES for kind in ONLY.get(case, KINDS)]
OWN_CASES = [(kind, case) for kind, case in KIND_CASES if case not in ("one", "stack")]  # those: test_contract.py
UNIDIRECTIONAL = [(kind, case) for kind, case in OWN_CASES if "bidir" not in case]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def build(kind, case, dtype="float32", seed=0):
    """A module of `kind` for `case`, seeded; biases are non-zero by PyTorch's default init."""
    torch.manual_seed(seed)
    options = {"dtype": DTYPES[dtype], **CASES[case]}
    if case == "cell":
        return CELLS[kind](INPUT, UNITS, **options)
    options.setdefault("batch_first", True)
    return MODULES[kind](INPUT, UNITS, **options)


@functools.cache
def model(kind, case, dtype="float32"):
    """Built once per test module; tests that load weights build their own."""
    return build(kind, case, dtype)


def run(module, x, state):
    """(output [batch, time, features], final state) of `module` over `x` [batch, time, features] from `state`."""
    x = torch.as_tensor(x, dtype=next(module.parameters()).dtype)
    if isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
        outputs = []
        for t in range(x.shape[1]):
            state = module(x[:, t], state)
            outputs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outputs, 1), state
    if not module.batch_first:
        y, final = module(x.transpose(0, 1), state)
        return y.transpose(0, 1), final
    return module(x, state)


def inputs(steps=STEPS, batch=BATCH, seed=2):
    return np.random.default_rng(seed).normal(size=(batch, steps, INPUT)).astype(np.float32)


def tensors(state):
    return state if isinstance(state, tuple) else (state,)


def assert_same_state(found, expected):
    assert len(tensors(found)) == len(tensors(expected))
    for a, b in zip(tensors(found), tensors(expected)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


def zeros_like(state):
    return tuple(map(torch.zeros_like, state)) if isinstance(state, tuple) else torch.zeros_like(state)


# 1. export -> save -> load -> initial_state gives back the state exactly

ROUNDTRIP = [(kind, case, "float32") for kind, case in OWN_CASES]
ROUNDTRIP += [(kind, "cell", dtype) for kind in KINDS for dtype in ("float16", "bfloat16", "float64")]
ROUNDTRIP += [(kind, "stack", "float64") for kind in KINDS]


@pytest.mark.parametrize("kind, case, dtype", ROUNDTRIP)
def test_roundtrip_through_a_file_is_exact(kind, case, dtype, tmp_path):
    m = model(kind, case, dtype)
    with torch.no_grad():
        _, state = run(m, inputs(), ta.initial_state(random_states(ta.signature(m), dtype=dtype), m))
    states = ta.export(m, state)
    assert {layer.dtype for layer in states} == {dtype}
    assert len(states) == CASES[case].get("num_layers", 1)
    assert_same_state(ta.initial_state(through_file(states, tmp_path), m, strict=True), state)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ("cell", "bidir"))
def test_unbatched_state_roundtrip(kind, case, tmp_path):
    m = model(kind, case)
    with torch.no_grad():
        x = torch.from_numpy(inputs(batch=1)[0])  # (time, features), no batch axis
        if case == "cell":
            state = None
            for t in range(x.shape[0]):
                state = m(x[t], state)
        else:
            _, state = m(x)
    assert tensors(state)[0].dim() == (1 if case == "cell" else 2)
    states = ta.export(m, state)
    assert states.batch_size == 1
    batched = ta.initial_state(through_file(states, tmp_path), m)
    unbatched = tuple(t[0] if case == "cell" else t[:, 0] for t in tensors(batched))  # the batch-1 row
    assert_same_state(unbatched if kind == "lstm" else unbatched[0], state)


def test_layers_follow_pytorchs_layer_times_direction_index():
    m = model("gru", "bidir")
    h = torch.arange(4 * BATCH * UNITS, dtype=torch.float32).reshape(4, BATCH, UNITS)
    states = ta.export(m, h, name="encoder")
    assert [layer.name for layer in states] == ["encoder/l0", "encoder/l1"]
    np.testing.assert_array_equal(states["encoder/l1"]["h"][1], h[1 * 2 + 1].numpy())  # layer 1, backward
    assert states.metadata["source"]["model"] == repr(m)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ("cell", "one"))
@pytest.mark.parametrize("dtype", ("float32", "bfloat16"))
def test_no_copies_on_the_cpu(kind, case, dtype, tmp_path):
    m = model(kind, case, dtype)
    with torch.no_grad():
        _, state = run(m, inputs(), None)
    states = ta.export(m, state)
    for name, tensor in zip(states[0].state_names, tensors(state)):
        assert states[0][name].ctypes.data == tensor.data_ptr()  # export shares the run's memory
    loaded = through_file(states, tmp_path)
    injected = ta.initial_state(loaded, m, strict=True)
    for name, tensor in zip(loaded[0].state_names, tensors(injected)):
        assert tensor.data_ptr() == loaded[0][name].ctypes.data  # torch.from_numpy, no copy
    broadcast = ta.initial_state(loaded.rows([1]), m, broadcast=True, batch_size=5)
    for tensor in tensors(broadcast):
        assert tensor.shape[-2] == 5 and tensor.stride()[-2] == 0  # an expanded view, not 5 copies
        assert torch.equal(tensor[..., 4, :], tensor[..., 0, :])


def test_initial_state_casts_and_places():
    m = model("lstm", "stack")
    half = random_states(ta.signature(m), dtype="float16", batch=1)
    h0, c0 = ta.initial_state(half, m, broadcast=True, batch_size=4, device="meta")
    assert h0.device.type == "meta" and h0.dtype == torch.float32 and tuple(h0.shape) == (2, 4, UNITS)
    h0, c0 = ta.initial_state(half, m, broadcast=True, batch_size=4)
    assert h0.device.type == "cpu" and c0.dtype == torch.float32
    expected = np.concatenate([layer["c"] for layer in half]).astype(np.float32)
    np.testing.assert_array_equal(c0.numpy(), np.repeat(expected, 4, axis=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_exports_and_returns_to_the_modules_device(tmp_path):
    m = build("lstm", "proj").cuda()
    with torch.no_grad():
        _, state = m(torch.from_numpy(inputs()).cuda())
    loaded = through_file(ta.export(m, state), tmp_path)
    assert_same_state(ta.initial_state(loaded, m), state)
    assert ta.initial_state(loaded, m, device="cpu")[0].device.type == "cpu"


# 2. a run in two chunks, the state handed over through a file, equals one run

@pytest.mark.parametrize("kind, case", UNIDIRECTIONAL)
def test_continuation_through_a_file(kind, case, tmp_path):
    m, x = model(kind, case), inputs()
    with torch.no_grad():
        start = ta.initial_state(random_states(ta.signature(m)), m)
        full_y, full_state = run(m, x, start)
        _, state = run(m, x[:, :SPLIT], start)
        resumed = ta.initial_state(through_file(ta.export(m, state), tmp_path), m)
        end_y, end_state = run(m, x[:, SPLIT:], resumed)
        zero_y, _ = run(m, x[:, SPLIT:], zeros_like(resumed))
    np.testing.assert_allclose(end_y.numpy(), full_y[:, SPLIT:].numpy(), atol=1e-5, rtol=0)
    assert largest_difference(end_state, full_state) < 1e-5
    assert largest_difference(zero_y, full_y[:, SPLIT:]) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_last_partial_batch_takes_its_streams_rows(kind, tmp_path):
    m, x = model(kind, "stack"), inputs(batch=8)
    ids = [f"stream-{i}" for i in range(8)]
    with torch.no_grad():
        _, state = run(m, x[:, :SPLIT], None)
        full_y, _ = run(m, x, None)
        statefmt.save(StateSet(ta.export(m, state).layers, stream_ids=ids), tmp_path / "s.statefmt")
        with pytest.raises(RuntimeError, match="Expected hidden"):  # the pain point: 8 rows for 3 streams
            run(m, x[[6, 1, 4], SPLIT:], state)
        rows = statefmt.load(tmp_path / "s.statefmt", streams=["stream-6", "stream-1", "stream-4"])
        y, _ = run(m, x[[6, 1, 4], SPLIT:], ta.initial_state(rows, m))
        zero_y, _ = run(m, x[[6, 1, 4], SPLIT:], None)
    np.testing.assert_allclose(y.numpy(), full_y[[6, 1, 4], SPLIT:].numpy(), atol=1e-5, rtol=0)
    assert largest_difference(zero_y, y) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_injected_state_trains_chunk_after_chunk(kind, tmp_path):
    m, x = build(kind, "stack"), torch.from_numpy(inputs(steps=9))
    _, state = m(x[:, :3])
    m(x[:, 3:6], state)[0].sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        m(x[:, 6:], state)[0].sum().backward()  # the undetached state drags chunk 1's freed graph along
    m.zero_grad()
    resumed = ta.initial_state(through_file(ta.export(m, state), tmp_path), m)
    y, state = m(x[:, 3:6], resumed)
    y.sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in m.parameters())
    detached = tuple(t.detach() for t in state) if kind == "lstm" else state.detach()
    m(x[:, 6:], detached)[0].sum().backward()  # the next chunk from a .detach()ed continued state


# 3. weights: the neutral layout run by the numpy reference agrees with PyTorch

@pytest.mark.parametrize("kind, case", OWN_CASES)
def test_weights_run_like_the_reference(kind, case):
    m, x = model(kind, case), inputs()
    start = random_states(ta.signature(m))
    with torch.no_grad():
        y, state = run(m, x, ta.initial_state(start, m))
    weights = ta.export_weights(m)
    expected_y, expected_states = reference.run(weights, x, start)
    np.testing.assert_allclose(y.numpy(), expected_y, atol=1e-5, rtol=0)
    for found, expected in zip(ta.export(m, state), expected_states):
        for name in found.state_names:
            np.testing.assert_allclose(found[name], expected[name], atol=1e-5, rtol=0)
    zero_y, _ = reference.run(weights, x)
    assert np.max(np.abs(zero_y - expected_y)) > 1e-3


@pytest.mark.parametrize("kind, case", OWN_CASES)
def test_weights_through_a_file_into_a_fresh_model(kind, case, tmp_path):
    m, fresh = model(kind, case), build(kind, case, seed=7)
    start = random_states(ta.signature(m))
    with torch.no_grad():
        y, _ = run(m, inputs(), ta.initial_state(start, m))
        before, _ = run(fresh, inputs(), ta.initial_state(start, fresh))
        assert largest_difference(before, y) > 1e-3
        assert ta.import_weights(through_file(ta.export_weights(m), tmp_path), fresh) is fresh
        after, _ = run(fresh, inputs(), ta.initial_state(start, fresh))
    assert torch.equal(after, y)


def test_exported_weights_layout():
    m = model("lstm", "proj_bidir")
    weights = ta.export_weights(m)
    layer = weights[1]
    assert (layer.units, layer.input_size, layer.proj_units, layer.directions) == (UNITS, 2 * PROJ, PROJ, 2)
    np.testing.assert_array_equal(layer["R"][1], m.weight_hh_l1_reverse.detach().numpy())
    np.testing.assert_array_equal(layer["P"][1], m.weight_hr_l1_reverse.detach().numpy())
    np.testing.assert_array_equal(layer.gate("Wb", "g", 0), m.bias_ih_l1.detach().numpy()[2 * UNITS:3 * UNITS])
    no_bias = ta.export_weights(model("gru", "nobias"))
    assert not np.any(no_bias[0]["Wb"]) and not np.any(no_bias[0]["Rb"])
    assert ta.export_weights(model("rnn", "relu"))[0].activation == "relu"


# 4. a projection's mismatches name its layer and field

MISMATCH_TARGET = nn.LSTM(INPUT, UNITS2, num_layers=2, bidirectional=True, proj_size=PROJ)


def replace_layer(states, index, layer):
    layers = list(states.layers)
    layers[index] = layer
    return StateSet(layers)


MISMATCHES = {  # of a projection; the others: test_contract.py
    "kind": (lambda s: replace_layer(s, 1, LayerState("l1", "gru", h=s[1]["c"])),
             ["layer 1 'l1': kind: expected lstm, found gru", "layer 1 'l1': proj_units: expected 2, found None"]),
    "proj_units": (lambda s: replace_layer(s, 0, LayerState("l0", "lstm", h=s[0]["c"], c=s[0]["c"])),
                   ["layer 0 'l0': proj_units: expected 2, found None"]),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_a_projection_mismatch_names_layer_and_field(case):
    change, expected = MISMATCHES[case]
    with pytest.raises(StateMismatchError) as error:
        ta.initial_state(change(random_states(ta.signature(MISMATCH_TARGET))), MISMATCH_TARGET)
    assert error.value.problems == expected


EXPORT_MISTAKES = {
    "no state": ("lstm", "one", lambda s: None, StateError,
                 "PyTorch modules keep no state: pass the state a run returned"),
    "h only": ("lstm", "one", lambda s: s[0], StateMismatchError,
               "state: an LSTM's state is (h_n, c_n), found Tensor of shape (1, 3, 4)"),
    "wrong layers": ("gru", "stack", lambda s: s[:1], StateMismatchError,
                     "h_n: expected shape (2, batch, 4) or unbatched (2, 4), found (1, 3, 4)"),
    "wrong units": ("lstm", "cell", lambda s: (s[0], s[1][:, :3]), StateMismatchError,
                    "c: expected shape (batch, 4) or unbatched (4,), found (3, 3)"),
    "batch disagrees": ("lstm", "one", lambda s: (s[0], s[1][:, :2]), StateMismatchError,
                        "h and c disagree on batch: (1, 3, 4) and (1, 2, 4)"),
}


@pytest.mark.parametrize("case", EXPORT_MISTAKES)
def test_export_refuses_a_state_that_is_not_the_sources(case):
    kind, layout, wrong, error_type, message = EXPORT_MISTAKES[case]
    m = model(kind, layout)
    with torch.no_grad():
        _, state = run(m, inputs(), None)
    with pytest.raises(error_type) as error:
        ta.export(m, wrong(state))
    assert type(error.value) is error_type
    assert str(error.value).startswith(message)


# 5. weights that cannot be mapped exactly are refused, with the reason and what would work

LOAD_REFUSALS = {
    "rnn activation": (
        lambda: ta.export_weights(model("rnn", "relu")), ("rnn", "one"),
        ["layer 0 'l0': activation: the weights use relu, the target uses tanh; "
         "build nn.RNN(..., nonlinearity='relu')"]),
    "rnn unknown activation": (
        lambda: relabel(ta.export_weights(model("rnn", "cell")), activation="sigmoid"), ("rnn", "cell"),
        ["layer 0 'l0': activation: the weights use sigmoid, which the target cannot compute (it takes tanh or "
         "relu only), so they do not map exactly; PyTorch's RNNCell cannot: load them into Keras or Flax, whose RNN "
         "takes activation=sigmoid"]),
    "lstm activation": (
        lambda: relabel(ta.export_weights(model("lstm", "one")), activation="relu"), ("lstm", "one"),
        ["layer 0 'l0': activation: the weights use relu, which the target cannot compute (it takes tanh only), "
         "so they do not map exactly; PyTorch's LSTM cannot: load them into Keras or Flax, whose LSTM takes "
         "activation=relu"]),
    "gru hard sigmoid": (
        lambda: relabel(ta.export_weights(model("gru", "cell")), recurrent_activation="hard_sigmoid"),
        ("gru", "cell"),
        ["layer 0 'l0': recurrent_activation: the weights use hard_sigmoid, which the target cannot compute (it "
         "takes sigmoid only), so they do not map exactly; PyTorch's GRUCell cannot: load them into Keras or Flax, "
         "whose GRU takes recurrent_activation=hard_sigmoid"]),
    "linear": (
        lambda: relabel(ta.export_weights(model("rnn", "one")), activation="linear"), ("rnn", "one"),
        ["layer 0 'l0': activation: the weights use linear, which the target cannot compute (it takes tanh or relu "
         "only), so they do not map exactly; PyTorch's RNN cannot: load them into Keras, whose RNN takes "
         "activation=linear"]),
    "reset before the matmul": (
        lambda: relabel(ta.export_weights(model("gru", "one")), linear_before_reset=False), ("gru", "one"),
        ["layer 0 'l0': linear_before_reset: the weights apply r before the recurrent matmul "
         "(linear_before_reset=False), the target after it; that is exact only when R_n is diagonal and Rb_n "
         "zero, not so in direction 0; load them into Keras GRU(reset_after=False)"]),
    "biases into bias=False": (
        lambda: ta.export_weights(model("gru", "stack")), ("gru", "nobias"),
        ["layer 0 'l0': Wb and Rb: the weights have non-zero biases and the target has none; "
         "build nn.GRU(..., bias=True)",
         "layer 1 'l1': Wb and Rb: the weights have non-zero biases and the target has none; "
         "build nn.GRU(..., bias=True)"]),
    "projection into no projection": (
        lambda: ta.export_weights(model("lstm", "proj")), ("lstm", "stack"),
        ["layer 0 'l0': proj_units: expected None, found 2; build nn.LSTM(..., proj_size=2)",
         "layer 1 'l1': input_size: expected 4, found 2",
         "layer 1 'l1': proj_units: expected None, found 2; build nn.LSTM(..., proj_size=2)"]),
    "no projection into a projection": (
        lambda: ta.export_weights(model("lstm", "stack")), ("lstm", "proj"),
        ["layer 0 'l0': proj_units: expected 2, found None; build the LSTM without proj_size",
         "layer 1 'l1': input_size: expected 2, found 4",
         "layer 1 'l1': proj_units: expected 2, found None; build the LSTM without proj_size"]),
    "projection into a cell": (
        lambda: WeightSet(ta.export_weights(model("lstm", "proj")).layers[:1]), ("lstm", "cell"),
        ["layer 0 'l0': proj_units: expected None, found 2; only nn.LSTM projects h: load them into "
         "nn.LSTM(..., proj_size=2)"]),
    "shapes": (
        lambda: ta.export_weights(model("gru", "stack")), ("gru", "bidir"),
        ["layer 0 'l0': directions: expected 2, found 1",
         "layer 1 'l1': input_size: expected 8, found 4", "layer 1 'l1': directions: expected 2, found 1"]),
}


@pytest.mark.parametrize("case", LOAD_REFUSALS)
def test_import_weights_refuses_with_pytorchs_advice(case):
    weights, (kind, layout), expected = LOAD_REFUSALS[case]
    target = build(kind, layout, seed=7)
    before = [p.detach().clone() for p in target.parameters()]
    assert ta.weight_signature(target).check(weights()) == [p for p in expected if "non-finite" not in p]
    with pytest.raises(StateMismatchError) as error:
        ta.import_weights(weights(), target)
    assert error.value.problems == expected
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))  # nothing half-loaded


def test_zero_biases_load_into_bias_false():
    source, target = model("lstm", "nobias"), build("lstm", "nobias", seed=7)
    ta.import_weights(ta.export_weights(source), target)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), target.parameters()))


def test_a_module_without_neutral_layout_is_refused():
    with pytest.raises(StateMismatchError) as error:
        ta.signature(nn.Sequential(nn.LSTM(INPUT, UNITS)))
    assert str(error.value) == ("Sequential has no neutral layout: statefmt.adapters.torch maps an nn.LSTM, nn.GRU, "
                                "nn.RNN, nn.LSTMCell, nn.GRUCell or nn.RNNCell; pass the recurrent submodule, "
                                "e.g. model.lstm")


