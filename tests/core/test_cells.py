"""One table of cell facts: the schema's enumerations agree with it, and the core reads it rather than copies."""

import json
from pathlib import Path

import numpy as np
import pytest
import reference

import statefmt
from statefmt import _document, cells, signature, states, weights
from statefmt._dtypes import DTYPE_NAMES

FOLDER = Path(statefmt.__file__).parent
SCHEMAS = {path.name: json.loads(path.read_text()) for path in sorted(FOLDER.glob("statefmt.schema*.json"))}


def definition(schema, name):
    """A `$defs` entry of the schema, following `$ref`s."""
    entry = SCHEMAS[schema]["$defs"][name]
    while "$ref" in entry:
        entry = SCHEMAS[schema]["$defs"][entry["$ref"].rsplit("/", 1)[1]]
    return entry


def layer_property(schema, layer, name):
    entry = definition(schema, layer)["properties"][name]
    return SCHEMAS[schema]["$defs"][entry["$ref"].rsplit("/", 1)[1]] if "$ref" in entry else entry


def test_both_schemas_are_read():
    assert set(SCHEMAS) == {"statefmt.schema.json", "statefmt.schema.v1.json"}


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_kinds_dtypes_and_directions_are_the_tables(schema):
    assert tuple(definition(schema, "kind")["enum"]) == cells.KINDS
    assert tuple(definition(schema, "dtype")["enum"]) == DTYPE_NAMES
    assert tuple(definition(schema, "directions")["enum"]) == cells.DIRECTIONS


@pytest.mark.parametrize("schema", SCHEMAS)
def test_schema_activations_are_the_tables(schema):
    for setting in ("activation", "recurrent_activation"):
        entry = layer_property(schema, "weightLayer", setting)
        if "enum" not in entry:
            assert schema == "statefmt.schema.v1.json"  # 1.x files name activations freely: read, then refused
            continue
        assert tuple(entry["enum"]) == tuple(cells.ACTIVATIONS)


@pytest.mark.parametrize("kind", cells.KINDS)
def test_the_document_models_tensors_are_the_tables(kind):
    entry = _document.LayerEntry("l", kind, 4, 1, 2 if kind == "lstm" else None, "float32", input_size=3)
    assert tuple(entry.shapes(batch_size=5)) == cells.STATE_NAMES[kind]
    assert tuple(entry.shapes(batch_size=None)) == cells.WEIGHT_NAMES[:5 if kind == "lstm" else 4]
    assert entry.shapes(batch_size=None)["W"][1] == cells.GATES[kind] * 4


def test_the_core_reads_the_one_table():
    """No copy of a cell fact: every module's name for it is the table's own object."""
    assert states.STATE_NAMES is cells.STATE_NAMES and states.KINDS is cells.KINDS
    assert weights.GATES is cells.GATES and weights.GATE_ORDER is cells.GATE_ORDER
    assert _document.cells is cells  # the document model reads GATES from the table
    assert signature.KINDS is cells.KINDS


def test_gate_counts_and_state_names_per_kind():
    assert {kind: (cell.states, len(cell.gates)) for kind, cell in cells.CELLS.items()} == {
        "lstm": (("h", "c"), 4), "gru": (("h",), 3), "rnn": (("h",), 1)}
    assert cells.CELLS["gru"].apart == ("n",) and cells.CELLS["rnn"].settings == ("activation",)


@pytest.mark.parametrize("framework, kind", [(f, k) for f in cells.FRAMEWORK_GATE_ORDER for k in cells.KINDS])
def test_gate_rows_put_a_frameworks_blocks_in_neutral_order_and_back(framework, kind):
    units = 3
    order = cells.FRAMEWORK_GATE_ORDER[framework][kind]
    framework_rows = np.concatenate([np.full(units, cells.GATE_ORDER[kind].index(g)) for g in order])
    rows = cells.gate_rows(kind, units, order)
    np.testing.assert_array_equal(framework_rows[rows], np.repeat(np.arange(len(order)), units))
    np.testing.assert_array_equal(framework_rows[rows][np.argsort(rows)], framework_rows)


def test_gate_rows_refuse_another_kinds_gates():
    with pytest.raises(statefmt.StateMismatchError, match="gate order: the gru gates are r, z, n, found i, f, g, o"):
        cells.gate_rows("gru", 2, ("i", "f", "g", "o"))


@pytest.mark.parametrize("name", cells.ACTIVATIONS)
def test_every_activation_has_a_reference_implementation(name):
    x = np.linspace(-5, 5, 101)
    expected = {"tanh": np.tanh(x), "sigmoid": 1 / (1 + np.exp(-x)), "relu": np.maximum(x, 0),
                "hard_sigmoid": np.clip(x / 6 + 0.5, 0, 1), "linear": x}[name]
    np.testing.assert_allclose(reference.ACTIVATIONS[name](x), expected, rtol=0, atol=1e-15)


def test_weights_name_only_listed_activations():
    arrays = dict(W=np.zeros((1, 3, 2)), R=np.zeros((1, 3, 1)), Wb=np.zeros((1, 3)), Rb=np.zeros((1, 3)))
    with pytest.raises(statefmt.StateFormatError, match="activation: expected one of tanh, sigmoid, relu, "
                                                        "hard_sigmoid, linear, found 'elu'"):
        statefmt.LayerWeights("l", "rnn", **arrays, activation="elu")
