"""What a model expects, layer by layer, and the check of a state or of weights against it.

An adapter only describes its target (a `StateSignature` for its states, a `WeightSignature`
for its weights); whether something fits, and the refusal when it does not, is decided here,
once for every framework.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn

import numpy as np

from ._dtypes import DTYPE_NAMES, numpy_dtype
from .cells import ACTIVATIONS, CELLS, DIRECTIONS, KINDS, MODERN, STATE_KINDS
from .errors import StateFormatError
from .states import LayerState, StateSet
from .weights import LayerWeights, WeightSet

SIGNATURE_VERSION = "1.0"


def _refuse(where: str, name: str, expected: str, value: object) -> NoReturn:
    raise StateFormatError(f"{where}{name}: expected {expected}, found {value!r} ({type(value).__name__})")


def _is_int(value: object) -> bool:
    """An int, not a bool, a float or a string that reads like one."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_sizes(where: str, entries: Sequence[tuple[str, object, int, bool]]) -> None:
    for name, value, minimum, optional in entries:
        if value is None and optional:
            continue
        if not _is_int(value) or int(value) < minimum:  # type: ignore[call-overload]
            _refuse(where, name, f"a whole number >= {minimum}" + (" or None" if optional else ""), value)


def _check_layer(where: str, kind: object, units: object, directions: object, proj_units: object,
                 name: object, *, kinds: tuple[str, ...] = KINDS) -> None:
    if not isinstance(kind, str) or kind not in kinds:
        _refuse(where, "kind", f"one of {', '.join(kinds)}", kind)
    _check_sizes(where, [("units", units, 1, False), ("proj_units", proj_units, 1, True)])
    if not _is_int(directions) or directions not in DIRECTIONS:
        _refuse(where, "directions", "1 or 2", directions)
    if proj_units is not None and (kind != "lstm" or proj_units >= units):  # type: ignore[operator]
        raise StateFormatError(f"{where}proj_units: only an LSTM may project, to fewer than its {units} units; "
                               f"found {proj_units} on a {kind}")
    if name is not None and not isinstance(name, str):
        _refuse(where, "name", "a string or None", name)


def _check_dims(where: str, kind: str, dims: object) -> None:
    """A modern layer's dims in a signature: some of the kind's sizes (those absent are not checked)."""
    if not isinstance(dims, Mapping):
        _refuse(where, "dims", f"a mapping of some of {', '.join(MODERN[kind].dims + MODERN[kind].settings)}", dims)
    entry = MODERN[kind]
    unknown = sorted(set(dims) - set(entry.dims + entry.settings))
    if unknown:
        raise StateFormatError(f"{where}dims: a {kind} layer has sizes {', '.join(entry.dims + entry.settings)}; "
                               f"found {', '.join(map(repr, unknown))}")
    _check_sizes(where, [(f"dims.{key}", value, 0 if key in entry.zero else 1, key in entry.settings)
                         for key, value in dims.items()])


@dataclass(frozen=True)
class LayerSignature:
    """One recurrent layer as a model holds it. `name` is informative: layers match by position.

    >>> LayerSignature("lstm", 64, directions=2, proj_units=32)
    LayerSignature(kind='lstm', units=64, directions=2, proj_units=32, name=None, dims=None, dtypes=None)

    A modern kind (`statefmt.kinds`) has `dims` instead of units: the sizes the model fixes (an
    attention layer's `length` grows with the tokens seen: a signature leaves it out); and, where
    the target holds its tensors in different dtypes (Hugging Face: a bfloat16 conv window beside
    a float32 ssm state), `dtypes` per tensor. A state fits a tensor's dtype when it has it, is
    narrower (an exact upcast), or holds only values that the narrower dtype holds exactly:
    nothing is ever rounded behind the caller's back.

    >>> LayerSignature("mamba2", dims={"heads": 4, "head_dim": 8}).dims["heads"]
    4
    """

    kind: str
    units: int | None = None
    directions: int = 1
    proj_units: int | None = None
    name: str | None = None
    dims: Mapping[str, int | None] | None = None
    dtypes: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.kind in MODERN:
            _check_dims("signature ", self.kind, self.dims)
            object.__setattr__(self, "dims", dict(self.dims or {}))
            if self.dtypes is not None:
                if not isinstance(self.dtypes, Mapping) or not set(self.dtypes) <= set(MODERN[self.kind].names) \
                        or not set(self.dtypes.values()) <= set(DTYPE_NAMES):
                    _refuse("signature ", "dtypes", f"a mapping of some of {', '.join(MODERN[self.kind].names)} to "
                            f"dtype names", self.dtypes)
                object.__setattr__(self, "dtypes", dict(self.dtypes))
            if (self.units, self.directions, self.proj_units) != (None, 1, None):
                raise StateFormatError(f"signature {self.kind}: a modern kind has dims, not units, directions or "
                                       "proj_units")
        elif self.dims is not None or self.dtypes is not None:
            raise StateFormatError(f"signature {self.kind}: dims and dtypes apply to modern kinds "
                                   f"({', '.join(MODERN)}) only")
        _check_layer("signature ", self.kind, 1 if self.kind in MODERN else self.units, self.directions,
                     self.proj_units, self.name, kinds=STATE_KINDS)

    def problems(self, where: str, layer: Any) -> list[str]:
        """Every way one layer (a LayerState, or a file's layer entry) does not fit, one line each."""
        problems = [f"{where}: kind: expected {self.kind}, found {layer.kind}"] if layer.kind != self.kind else []
        if self.dims is None and layer.kind not in MODERN:  # two classic cells: every field that differs
            names = ("units", "directions", "proj_units")
            return problems + [f"{where}: {name}: expected {getattr(self, name)}, found {getattr(layer, name)}"
                               for name in names if getattr(self, name) != getattr(layer, name)]
        if problems or self.dims is None:  # a modern kind's sizes mean nothing for another kind
            return problems
        found = layer.dims
        problems = [f"{where}: {key}: expected {want}, found {found.get(key)}"
                    for key, want in self.dims.items() if found.get(key) != want]
        for tensor, want in (self.dtypes or {}).items():
            if layer.dtype != want and (layer.dtype, want) not in _EXACT_UPCASTS and not _held_exactly(layer, tensor,
                                                                                                      want):
                problems.append(f"{where}: {tensor}: dtype: expected {want} (or values {want} holds exactly), found "
                                f"{layer.dtype}; cast it yourself (states.astype) to accept the rounding")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The signature's JSON object: a classic kind's units, directions and proj_units, or a modern kind's dims."""
        entry = asdict(self)
        drop = ("units", "directions", "proj_units") if self.kind in MODERN else ("dims", "dtypes")
        return {key: value for key, value in entry.items() if key not in drop and (key != "dtypes" or value)}


def _held_exactly(layer: Any, tensor: str, dtype: str) -> bool:
    """Whether a state's tensor survives a cast to `dtype` unchanged (values read from a narrower model do).
    A file's layer read without its data cannot tell: it does not fit."""
    if not isinstance(layer, LayerState):
        return False
    array = layer[tensor]
    narrow = array.astype(numpy_dtype(dtype))
    return bool(np.array_equal(narrow.astype(array.dtype), array))


# Casts that lose nothing: a state stored narrower goes into a wider model exactly.
_EXACT_UPCASTS = {("float16", "float32"), ("float16", "float64"), ("bfloat16", "float32"),
                  ("bfloat16", "float64"), ("float32", "float64")}


_KEEP: Any = object()  # StateSignature.of: take the value from the states


@dataclass(frozen=True)
class StateSignature:
    """What a model expects of a state: its recurrent layers in order, and optionally a batch size and a dtype.

    >>> sig = StateSignature([LayerSignature("lstm", 64), LayerSignature("gru", 32, directions=2)], batch_size=8)
    >>> StateSignature.from_json(sig.to_json()) == sig
    True
    """

    layers: Sequence[LayerSignature] = ()
    batch_size: int | None = None
    dtype: str | None = None
    model: Mapping[str, str] | None = None  # 2.1: the model's fingerprints ({"implementation", "config", "weights"})

    def __post_init__(self) -> None:
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence):
            _refuse("signature ", "layers", "a sequence of LayerSignature", self.layers)
        object.__setattr__(self, "layers", tuple(self.layers))
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, LayerSignature):
                _refuse(f"signature layer {index}: ", "entry", "a LayerSignature", layer)
        _check_sizes("signature ", [("batch_size", self.batch_size, 0, True)])
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise StateFormatError(f"signature dtype: expected one of {', '.join(DTYPE_NAMES)}, found {self.dtype!r}")
        if self.model is not None:
            if not isinstance(self.model, Mapping) or not all(isinstance(v, str) for v in self.model.values()) \
                    or not isinstance(self.model.get("implementation"), str):
                _refuse("signature ", "model", "a mapping of strings with an 'implementation'", self.model)
            object.__setattr__(self, "model", dict(self.model))

    @classmethod
    def of(cls, states: StateSet, *, batch_size: int | None = _KEEP, dtype: str | None = None) -> StateSignature:
        """The signature `states` fits: its layers, its batch size (or `batch_size`: None for any), and `dtype`.

        >>> StateSignature.of(states, batch_size=None, dtype="float32")
        StateSignature(layers=(LayerSignature(kind='lstm', units=8, ...), ...), batch_size=None, dtype='float32')
        """
        if not isinstance(states, StateSet):
            raise StateFormatError(f"StateSignature.of takes a StateSet, found {type(states).__name__}")
        if isinstance(batch_size, bool) or isinstance(dtype, bool):
            raise StateFormatError("StateSignature.of: batch_size and dtype are values, not flags: the batch size "
                                   "the model takes (or None for any; by default the states' own), and a dtype name "
                                   "(or None for any)")
        layers = [LayerSignature(x.kind, dims=x.dims, name=x.name) if x.modern else
                  LayerSignature(x.kind, x.units, x.directions, x.proj_units, x.name) for x in states.layers]
        return cls(layers, states.batch_size if batch_size is _KEEP else batch_size, dtype,
                   states.metadata.get("model"))

    def check(self, states: StateSet, *, broadcast: bool = False, upcast: bool = False) -> list[str]:
        """Every way `states` does not fit, one line each; an empty list when it fits.

        `broadcast=True` accepts a batch-1 state for any batch size (one warm start for N streams);
        `upcast=True` a state narrower than `dtype` that casts to it exactly (bfloat16 into float32).
        A state whose `model` fingerprints were taken by the same implementation must carry this
        signature's: another model's state is refused by name.

        >>> StateSignature([LayerSignature("gru", 8)], batch_size=4).check(states)
        ['layer count: expected 1, found 2 (StateSet.select picks the layers a target holds)',
         "layer 0 'encoder': kind: expected gru, found lstm", 'batch size: expected 4, found 3']
        """
        if isinstance(states, WeightSet) or not all(hasattr(states, key) for key in ("layers", "batch_size")):
            # (a state's shape read from a file's document, without its data, passes as a StateSet)
            return [f"expected a StateSet (a state, as statefmt.load(path) returns), found {_what(states)}"
                    + ("; weights go to an adapter's import_weights(weights, target)"
                       if isinstance(states, WeightSet) else "")]
        problems = []
        if len(states.layers) != len(self.layers):
            problems.append(
                f"layer count: expected {len(self.layers)}, found {len(states.layers)} "
                "(StateSet.select picks the layers a target holds)"
            )
        problems += _model_problems(self.model, getattr(states, "metadata", {}).get("model"))
        for index, (expected, layer) in enumerate(zip(self.layers, states.layers)):
            where = f"layer {index} {layer.name!r}"
            problems += expected.problems(where, layer)
            exact = upcast and (layer.dtype, self.dtype) in _EXACT_UPCASTS
            if self.dtype is not None and layer.dtype != self.dtype and not exact:
                narrower = " or narrower" if upcast else ""
                problems.append(f"{where}: dtype: expected {self.dtype}{narrower}, found {layer.dtype}")
        batch = states.batch_size
        if self.batch_size is not None and batch != self.batch_size and not (broadcast and batch == 1):
            hint = ""
            if batch == 1:
                hint = " (broadcast=True starts every stream from it)"
            elif batch > self.batch_size:
                hint = (f"; pick the model's {self.batch_size} streams with statefmt.load(path, streams=[...]) "
                        "or states.rows([...])")
            problems.append(f"batch size: expected {self.batch_size}, found {batch}{hint}")
        return problems

    def to_json(self) -> str:
        """The signature as the JSON text `statefmt validate --against` reads.

        >>> print(StateSignature([LayerSignature("gru", 4)], batch_size=8).to_json())
        {
          "statefmt_signature": "1.0",
          "layers": [
            {
              "kind": "gru",
              "units": 4,
              "directions": 1,
              "proj_units": null,
              "name": null
            }
          ],
          "batch_size": 8,
          "dtype": null
        }
        """
        document = {"statefmt_signature": SIGNATURE_VERSION, **asdict(self),
                    "layers": [layer.to_dict() for layer in self.layers]}
        if self.model is None:
            del document["model"]
        return json.dumps(document, indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> StateSignature:
        """A signature from `to_json`'s text; `StateFormatError` naming the field for anything else.

        >>> StateSignature.from_json(open("model.sig.json").read())
        StateSignature(layers=(LayerSignature(kind='lstm', units=8, directions=1, proj_units=None, name='encoder'),
                               LayerSignature(kind='gru', units=4, ...)), batch_size=None, dtype=None)
        """
        document = _parse(text)
        version = document.get("statefmt_signature")
        if not isinstance(version, str) or version.split(".")[0] != "1":
            raise StateFormatError(f"statefmt_signature: expected a 1.x version, found {version!r}")
        unknown = sorted(set(document) - {"statefmt_signature", "layers", "batch_size", "dtype", "model"})
        if unknown:
            raise StateFormatError(f"signature: unknown fields {', '.join(map(repr, unknown))}")
        entries = document.get("layers")
        if not isinstance(entries, list):
            _refuse("signature ", "layers", "a list", entries)
        known = {f.name for f in fields(LayerSignature)}
        layers = []
        for index, entry in enumerate(entries):
            where = f"signature layer {index}: "
            if not isinstance(entry, dict):
                _refuse(where, "entry", "an object", entry)
            extra = sorted(set(entry) - known)
            missing = sorted({"kind", "dims" if entry.get("kind") in MODERN else "units"} - set(entry))
            if extra or missing:
                raise StateFormatError(f"{where}" + "; ".join(
                    ([f"unknown fields {', '.join(map(repr, extra))}"] if extra else [])
                    + ([f"missing fields {', '.join(map(repr, missing))}"] if missing else [])))
            if entry["kind"] not in MODERN:
                _check_layer(where, entry["kind"], entry["units"], entry.get("directions", 1),
                             entry.get("proj_units"), entry.get("name"), kinds=STATE_KINDS)
            layers.append(LayerSignature(**entry))
        dtype = document.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            _refuse("signature ", "dtype", f"one of {', '.join(DTYPE_NAMES)} or null", dtype)
        return cls(layers, document.get("batch_size"), dtype, document.get("model"))


def _model_problems(expected: Mapping[str, str] | None, found: Any) -> list[str]:
    """Fingerprints are compared only when one implementation took both: each hashes its own config and
    weights, so a hand-off between implementations is judged by the layers' kinds and sizes alone."""
    if not expected or not isinstance(found, Mapping) or found.get("implementation") != expected["implementation"]:
        return []
    reasons = {"config": "a state of a model with another configuration", "weights": "a state of other weights"}
    return [f"model: {key}: expected {expected[key]}, found {found[key]} ({reasons.get(key, 'another model')})"
            for key in sorted(expected) if key in found and found[key] != expected[key]]


def _parse(text: str | bytes) -> dict[str, Any]:
    def refuse_constant(name: str) -> None:
        raise StateFormatError(f"not a statefmt signature: {name} is not a JSON number")

    try:
        document = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError, TypeError) as error:  # UnicodeDecodeError is a ValueError
        if isinstance(error, StateFormatError):
            raise
        raise StateFormatError(f"not a statefmt signature: {type(error).__name__}: {str(error)[:200]}") from None
    if not isinstance(document, dict):
        raise StateFormatError(f"not a statefmt signature: expected a JSON object, found {type(document).__name__}")
    return document


def _what(value: object) -> str:
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class LayerWeightSignature:
    """What one recurrent layer of a target computes, so the core can tell which weights fit it exactly.

    The sizes and settings are the target's own; `activations` and `recurrent_activations` are
    the neutral names a layer of its type *could* be built with (empty: only the one it has).
    `advice` says what to do when weights do not fit, in the target framework's words: a key
    `"field=value"` tells how to get a target computing that value (`"activation=relu"`:
    `"build nn.RNN(..., nonlinearity='relu')"`), a key `"field"` what to do otherwise; `{value}`
    in the text stands for the weights' value.
    """

    kind: str
    units: int
    input_size: int
    directions: int = 1
    proj_units: int | None = None
    name: str | None = None
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    activations: tuple[str, ...] = ()
    recurrent_activations: tuple[str, ...] = ()
    linear_before_reset: bool = True  # the GRU candidate it computes: n = tanh(W_n x + Wb_n + r * (R_n h + Rb_n))
    bias: bool = True  # False: only zero biases fit
    candidate_bias: bool = True  # False: a GRU without the recurrent candidate bias b_hn; only a zero Rb_n fits
    advice: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_layer("weight signature ", self.kind, self.units, self.directions, self.proj_units, self.name)
        _check_sizes("weight signature ", [("input_size", self.input_size, 1, False)])
        object.__setattr__(self, "activations", tuple(self.activations))
        object.__setattr__(self, "recurrent_activations", tuple(self.recurrent_activations))
        object.__setattr__(self, "advice", dict(self.advice))

    def computes(self, setting: str) -> tuple[str, ...]:
        """The neutral names a layer of the target's type can compute for `setting`."""
        current = getattr(self, setting)
        built = getattr(self, setting.replace("activation", "activations"))
        return tuple(dict.fromkeys(([current] if current in ACTIVATIONS else []) + list(built)))

    def check(self, index: int, weights: LayerWeights) -> list[str]:
        """Every way one layer's weights do not fit this layer, one line each."""
        where = f"layer {index} {weights.name!r}"
        problems = [f"{where}: {name}: expected {getattr(self, name)}, found {getattr(weights, name)}"
                    for name in ("kind", "units", "input_size", "directions")
                    if getattr(self, name) != getattr(weights, name)]
        if weights.proj_units != self.proj_units:
            problems.append(self._advise(f"{where}: proj_units: expected {self.proj_units}, found "
                                         f"{weights.proj_units}", "proj_units", weights.proj_units))
        if weights.kind != self.kind:
            return problems
        for setting in CELLS[self.kind].settings:
            found, current = getattr(weights, setting), getattr(self, setting)
            if found == current:
                continue
            computes = self.computes(setting)
            if found in computes:
                message = f"{where}: {setting}: the weights use {found}, the target uses {current}"
            else:
                message = (f"{where}: {setting}: the weights use {found}, which the target cannot compute "
                           f"(it takes {' or '.join(computes) or current} only), so they do not map exactly")
            problems.append(self._advise(message, setting, found))
        if self.kind == "gru" and weights.linear_before_reset != self.linear_before_reset:
            problems += self._check_candidate(where, weights)
        if not self.bias and any(np.any(np.asarray(weights[key]) != 0) for key in ("Wb", "Rb")):
            problems.append(self._advise(f"{where}: Wb and Rb: the weights have non-zero biases and the target "
                                         "has none", "bias", True))
        if self.kind == "gru" and not self.candidate_bias:
            for direction in range(weights.directions):
                if np.any(np.asarray(weights.gate("Rb", "n", direction)) != 0):
                    problems.append(self._advise(
                        f"{where}: Rb_n (direction {direction}) is non-zero, and the target has no recurrent "
                        "candidate bias (n = tanh(W_n x + Wb_n + r * (R_n h))), so it cannot be mapped exactly",
                        "candidate_bias", True))
        return problems

    def _check_candidate(self, where: str, weights: LayerWeights) -> list[str]:
        """r * (R_n h + Rb_n) equals R_n (r * h) + Rb_n only for a diagonal R_n and a zero Rb_n."""
        inexact = []
        for direction in range(weights.directions):
            R_n = np.asarray(weights.gate("R", "n", direction))
            if np.any(R_n - np.diag(np.diag(R_n)) != 0) or np.any(np.asarray(weights.gate("Rb", "n", direction))):
                inexact.append(str(direction))
        if not inexact:
            return []
        found = weights.linear_before_reset
        order = ("after", "before") if found else ("before", "after")
        return [self._advise(
            f"{where}: linear_before_reset: the weights apply r {order[0]} the recurrent matmul "
            f"(linear_before_reset={found}), the target {order[1]} it; that is exact only when R_n is diagonal and "
            f"Rb_n zero, not so in direction {', '.join(inexact)}", "linear_before_reset", found)]

    def _advise(self, message: str, key: str, value: object) -> str:
        text = self.advice.get(f"{key}={value}", self.advice.get(key))
        return f"{message}; {text.replace('{value}', str(value))}" if text else message


@dataclass(frozen=True)
class WeightSignature:
    """What a target can take as weights: its recurrent layers in order, each described by the adapter.

    >>> sig = WeightSignature([LayerWeightSignature("gru", 4, input_size=5, linear_before_reset=False)])
    >>> sig.check(weights)
    ["layer 0 'l0': linear_before_reset: the weights apply r after the recurrent matmul ..."]
    """

    layers: Sequence[LayerWeightSignature] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, LayerWeightSignature):
                _refuse(f"weight signature layer {index}: ", "entry", "a LayerWeightSignature", layer)

    @classmethod
    def of(cls, weights: WeightSet) -> WeightSignature:
        """The signature `weights` fit exactly: their sizes and settings, with biases.

        >>> WeightSignature.of(weights).check(other_weights)
        []
        """
        if not isinstance(weights, WeightSet):
            raise StateFormatError(f"WeightSignature.of takes a WeightSet, found {type(weights).__name__}")
        return cls([LayerWeightSignature(
            x.kind, x.units, x.input_size, x.directions, x.proj_units, x.name, x.activation, x.recurrent_activation,
            linear_before_reset=x.linear_before_reset) for x in weights.layers])

    def check(self, weights: WeightSet) -> list[str]:
        """Every way `weights` do not fit, one line each (layer, field, expected, found, and what would work).

        >>> WeightSignature([LayerWeightSignature("gru", 8, input_size=5)]).check(weights)
        ["layer 0 'l0': units: expected 8, found 4"]
        """
        if not isinstance(weights, WeightSet):
            return [f"expected a WeightSet (weights, as statefmt.load_weights(path) returns), found {_what(weights)}"
                    + ("; a state goes to an adapter's initial_state(states, target)"
                       if isinstance(weights, StateSet) else "")]
        problems = []
        if len(weights.layers) != len(self.layers):
            problems.append(f"layer count: expected {len(self.layers)}, found {len(weights.layers)} "
                            "(pick the layers with WeightSet(weights.layers[i:j]))")
        for index, (expected, layer) in enumerate(zip(self.layers, weights.layers)):
            problems += expected.check(index, layer)
        return problems

