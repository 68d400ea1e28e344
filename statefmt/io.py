"""Saving, loading and validating statefmt files: the metadata document and its agreement with the tensors."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import _container
from ._dtypes import SAFETENSORS_CODES
from .errors import StateFormatError, StateMismatchError
from .signature import StateSignature
from .states import LayerState, StateSet, resolve_rows
from .weights import GATES, LayerWeights, WeightSet

FORMAT_VERSION = "1.0"
METADATA_KEY = "statefmt"
CHECKSUM_KEY = "statefmt_checksum"  # beside the document: a checksum cannot sit inside what it covers
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
DESCRIPTIVE_FIELDS = ("source", "created_by", "user")


def save(data: StateSet | WeightSet, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
         durable: bool = True) -> None:
    """Write a StateSet (or a WeightSet) to `path`, atomically.

    >>> save(states, "today.statefmt", metadata={"user": {"series": "sensor-7"}})  # doctest: +SKIP

    `metadata` sets descriptive fields (`source`, `created_by`, `user`) over `data.metadata`.
    The data goes to a temporary file beside `path`, is fsynced (unless `durable=False`,
    which leaves it to the page cache) and renamed over `path`: a crash at any point leaves
    either the previous file or the new one, never a mix. A state holding NaN or Inf is refused.
    """
    from . import __version__

    fields = {**data.metadata, "created_by": f"statefmt {__version__}", **(metadata or {})}
    unknown = sorted(set(fields) - set(DESCRIPTIVE_FIELDS))
    if unknown:
        raise StateFormatError(f"unknown metadata fields {unknown}; free-form data belongs under 'user'")
    if isinstance(data, StateSet):
        document = {"content": "state", "batch_size": data.batch_size}
        if data.stream_ids is not None:
            document["stream_ids"] = list(data.stream_ids)
    elif isinstance(data, WeightSet):
        document = {"content": "weights"}
    else:
        raise TypeError(f"save() takes a StateSet or a WeightSet, not {type(data).__name__}")
    document = {"format_version": FORMAT_VERSION, **document, **fields, "layers": []}
    tensors, places = [], []
    for index, layer in enumerate(data.layers):
        entry = {**_describe(layer), "checksums": {}}
        for name in _tensor_names(layer):
            entry["checksums"][name] = _container.CHECKSUM_PLACEHOLDER  # the real one is known once written
            tensors.append((f"layers.{index}.{name}", layer[name]))
            places.append((entry["checksums"], name, f"layer {index} {layer.name!r}: {name}"))
        document["layers"].append(entry)
    problems = _schema_problems(document)
    if problems:
        raise StateFormatError(problems, source=os.fspath(path))

    def finished(scans):
        """The metadata, with the checksums found while writing; NaN or Inf abandons the file."""
        problems = []
        for (checksums, name, where), (checksum, nonfinite) in zip(places, scans or []):
            checksums[name] = checksum
            problems += _nonfinite_problem(where, nonfinite)
        if problems:
            raise StateFormatError(problems, source=os.fspath(path))
        return metadata_entries(json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False))

    _container.write(path, tensors, finished, durable=durable)


def load(path: str | os.PathLike, *, streams=None, verify: bool = True) -> StateSet:
    """Read a state file, checking it fully; `StateFormatError` names whatever is wrong.

    >>> states = load("today.statefmt", streams=["sensor-7"])  # doctest: +SKIP

    `streams` picks batch rows by stream id or index, reading only their bytes from disk.
    `verify` checks each tensor's checksum (whole-tensor reads only: a row slice has none).
    """
    data = _read(path, streams=streams, verify=verify)
    if not isinstance(data, StateSet):
        raise StateFormatError("holds weights, not a state; read it with statefmt.load_weights", source=os.fspath(path))
    return data


def load_weights(path: str | os.PathLike, *, verify: bool = True) -> WeightSet:
    """Read a weights file written by `save(weight_set, path)`."""
    data = _read(path, streams=None, verify=verify)
    if not isinstance(data, WeightSet):
        raise StateFormatError("holds a state, not weights; read it with statefmt.load", source=os.fspath(path))
    return data


def validate(target: str | os.PathLike | StateSet | WeightSet, *, against: StateSignature | None = None):
    """Check a file (or an in-memory set) and, with `against`, that it fits a model.

    >>> validate("today.statefmt", against=StateSignature.from_json(text))  # doctest: +SKIP

    Raises `StateFormatError` for a malformed file or NaN/Inf values, `StateMismatchError`
    listing every layer and field that does not fit `against`. Returns the checked set;
    from a file, its arrays are read-only views of the file, mapped, not loaded: checking
    streams through the data in cache-sized chunks and holds none of it, so it takes about
    half the time of `load` (copy an array to keep it past a rewrite of the file).
    """
    if isinstance(target, (StateSet, WeightSet)):
        data, source = target, None
        problems = []
        for index, layer in enumerate(data.layers):
            for name in _tensor_names(layer):
                problems += _nonfinite(f"layer {index} {layer.name!r}: {name}", layer[name])
        if problems:
            raise StateFormatError(problems)
    else:
        source = os.fspath(target)
        data = _read(source, streams=None, verify=True, keep=False)
    if against is not None:
        if not isinstance(data, StateSet):
            raise StateMismatchError("a signature describes a state, but this holds weights", source=source)
        problems = against.check(data)
        if problems:
            raise StateMismatchError(problems, source=source)
    return data


def _tensor_names(layer: LayerState | LayerWeights) -> tuple[str, ...]:
    return layer.state_names if isinstance(layer, LayerState) else layer.weight_names


def _describe(layer: LayerState | LayerWeights) -> dict[str, Any]:
    entry = {"name": layer.name, "kind": layer.kind, "units": layer.units, "directions": layer.directions,
             "proj_units": layer.proj_units, "dtype": layer.dtype}
    if isinstance(layer, LayerWeights):
        entry.update(input_size=layer.input_size, activation=layer.activation,
                     recurrent_activation=layer.recurrent_activation, linear_before_reset=layer.linear_before_reset)
    return entry


def _read(path, *, streams, verify: bool, finite: bool = True, keep: bool = True) -> StateSet | WeightSet:
    """Read and check a file; `finite=False` lets `statefmt inspect` show a poisoned state.

    `keep=False` checks every tensor without loading it and returns read-only mapped views.
    """
    with _container.open_reader(path) as reader:
        source = reader.source
        document = _parse_document(reader.metadata, source)
        problems = _tensor_problems(document, reader.tensors)
        if problems:
            raise StateFormatError(problems, source=source)
        is_state = document["content"] == "state"
        rows = None
        if streams is not None:
            if not is_state:
                raise StateFormatError("streams= applies to state files; this one holds weights", source=source)
            try:
                rows = resolve_rows(streams, document["batch_size"], document.get("stream_ids"))
            except StateMismatchError as error:
                raise StateMismatchError(error.problems, source=source) from None
        layers = []
        for index, entry in enumerate(document["layers"]):
            where = f"layer {index} {entry['name']!r}"
            arrays = {}
            for name, expected_sum in entry["checksums"].items():
                key = f"layers.{index}.{name}"
                if rows is None:
                    array, found_sum, nonfinite = reader.scan(key, keep=keep)
                    array = array if keep else reader.view(key)
                else:
                    array = reader.read_rows(key, rows)
                    found_sum = expected_sum  # a row slice has no checksum of its own
                    nonfinite = _container.count_nonfinite(array)
                if verify and found_sum != expected_sum:
                    problems.append(f"{where}: {name}: checksum mismatch, the tensor data is corrupt")
                if finite:
                    problems += _nonfinite_problem(f"{where}: {name}", nonfinite)
                arrays[name] = array
            if not problems:
                layers.append(_build_layer(entry, arrays, is_state))
        if problems:
            raise StateFormatError(problems, source=source)
    fields = {key: document[key] for key in DESCRIPTIVE_FIELDS if key in document}
    if not is_state:
        return WeightSet(layers, metadata=fields)
    stream_ids = document.get("stream_ids")
    if stream_ids is not None and rows is not None:
        stream_ids = [stream_ids[row] for row in rows]
    return StateSet(layers, stream_ids=stream_ids, metadata=fields)


def _build_layer(entry: dict[str, Any], arrays: dict[str, np.ndarray], is_state: bool) -> LayerState | LayerWeights:
    if is_state:  # by `content`, not by the keys present: a state layer may carry unknown keys
        return LayerState(entry["name"], entry["kind"], **arrays)
    return LayerWeights(entry["name"], entry["kind"], **arrays,
                        activation=entry.get("activation", "tanh"),
                        recurrent_activation=entry.get("recurrent_activation", "sigmoid"),
                        linear_before_reset=entry.get("linear_before_reset", True))


def metadata_entries(text: str) -> dict[str, str]:
    """The safetensors `__metadata__` of a file whose metadata document is `text`: it and its checksum."""
    return {METADATA_KEY: text, CHECKSUM_KEY: _container.text_checksum(text)}


def _parse_document(metadata: dict[str, str], source: str) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise StateFormatError(
            f"no '{METADATA_KEY}' entry in the safetensors metadata: a plain safetensors file, not a statefmt file",
            source=source,
        )
    text = metadata[METADATA_KEY]
    if len(text) > MAX_DOCUMENT_BYTES:
        raise StateFormatError(f"statefmt metadata of {len(text)} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte cap",
                               source=source)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise StateFormatError(f"statefmt metadata is not valid JSON ({type(error).__name__}: {error})",
                               source=source) from None
    if not isinstance(document, dict):
        raise StateFormatError(f"statefmt metadata must be a JSON object, found {type(document).__name__}",
                               source=source)
    version = document.get("format_version")
    if isinstance(version, str) and re.fullmatch(r"\d+\.\d+", version) and version.split(".")[0] != "1":
        raise StateFormatError(
            f"format_version {version} is not supported: this statefmt reads 1.x files; upgrade statefmt",
            source=source,
        )
    if metadata.get(CHECKSUM_KEY) != _container.text_checksum(text):
        found = "is missing" if CHECKSUM_KEY not in metadata else "does not match"
        raise StateFormatError(f"the metadata checksum ('{CHECKSUM_KEY}') {found}: the metadata is corrupt "
                               "or was edited by hand", source=source)
    stream_ids = document.get("stream_ids")
    if isinstance(stream_ids, list) and not set(map(type, stream_ids)) <= {str}:  # at C speed: 65,536 ids
        # jsonschema's uniqueItems compares mixed-type items pairwise: a crafted list would take hours
        index = next(i for i, item in enumerate(stream_ids) if not isinstance(item, str))
        raise StateFormatError(f"stream_ids.{index}: every stream id must be a string, found "
                               f"{type(stream_ids[index]).__name__}", source=source)
    problems = _schema_problems(document)
    if not problems:
        problems = _semantic_problems(document)
    if problems:
        raise StateFormatError(problems, source=source)
    return document


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "statefmt.schema.json").read_text())


@lru_cache(maxsize=1)
def _schema_validator():
    import jsonschema  # loaded only for a document that the quick check does not pass

    return jsonschema.Draft202012Validator(_schema())


def _schema_problems(document: dict[str, Any]) -> list[str]:
    try:
        if _conforms(document, _schema()):
            return []
    except _Undecided:
        pass
    problems = []
    for error in _schema_validator().iter_errors(document):
        path = list(error.absolute_path)
        if len(path) >= 2 and path[0] == "layers" and isinstance(path[1], int):
            layer = document["layers"][path[1]]
            name = layer.get("name") if isinstance(layer, dict) else None
            field = ".".join(map(str, path[2:])) or "entry"
            where = f"layer {path[1]} {name!r}: {field}"
        else:
            where = ".".join(map(str, path)) or "metadata"
        message = error.message if len(error.message) <= 200 else error.message[:200] + " … (cut)"
        problems.append(f"{where}: {message}")  # jsonschema quotes the whole bad value: keep a line short
    return sorted(problems)


class _Undecided(Exception):
    """The quick schema check met what it does not decide exactly; jsonschema decides."""


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
_TYPED_KEYWORDS = {"required", "properties", "additionalProperties", "items", "minItems", "maxItems",
                   "uniqueItems", "minLength", "pattern", "minimum"}  # each ignores values of other types


def _conforms(value: Any, schema: dict[str, Any] | bool, root: dict[str, Any] | None = None) -> bool:
    """Whether `value` conforms to `schema`: the keywords statefmt.schema.json uses, exactly.

    Why: `import jsonschema` is half of the CLI's cold start, and jsonschema takes 0.35 s
    on a file with 65,536 stream ids; this walk of the same schema takes microseconds.
    It raises `_Undecided` for anything else (an unknown keyword, a float where an integer
    is expected), so a schema change never weakens the check; jsonschema then decides,
    and it alone writes the messages for a document that fails.
    """
    root = schema if root is None else root
    if isinstance(schema, bool):
        return schema
    return all(_keyword_holds(value, keyword, rule, schema, root) for keyword, rule in schema.items())


def _keyword_holds(value: Any, keyword: str, rule: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if keyword in ("$schema", "$id", "$defs", "title", "description", "then", "else"):
        return True
    if keyword == "$ref":
        if not rule.startswith("#/$defs/"):
            raise _Undecided(keyword)
        return _conforms(value, root["$defs"][rule[len("#/$defs/"):]], root)
    if keyword == "type":
        return any(_is_type(value, name) for name in ([rule] if isinstance(rule, str) else rule))
    if keyword in ("enum", "const"):
        return any(_equal(value, candidate) for candidate in (rule if keyword == "enum" else [rule]))
    if keyword == "if":
        return _conforms(value, schema.get("then" if _conforms(value, rule, root) else "else", True), root)
    if keyword == "not":
        return not _conforms(value, rule, root)
    if keyword in ("anyOf", "oneOf"):
        matches = sum(_conforms(value, option, root) for option in rule)
        return matches >= 1 if keyword == "anyOf" else matches == 1
    if isinstance(value, dict) and keyword in ("required", "properties", "additionalProperties"):
        if keyword == "required":
            return all(key in value for key in rule)
        if keyword == "properties":
            return all(_conforms(value[key], option, root) for key, option in rule.items() if key in value)
        if "patternProperties" in schema:
            raise _Undecided(keyword)
        known = schema.get("properties", {})
        return all(_conforms(item, rule, root) for key, item in value.items() if key not in known)
    if isinstance(value, list) and keyword in ("items", "minItems", "maxItems", "uniqueItems"):
        if keyword == "items" and rule == {"type": "string"}:  # stream_ids: 65,536 of them, at C speed
            return set(map(type, value)) <= {str}
        if keyword == "items":
            return all(_conforms(item, rule, root) for item in value)
        if keyword != "uniqueItems":
            return len(value) >= rule if keyword == "minItems" else len(value) <= rule
        if rule and not set(map(type, value)) <= {str}:
            raise _Undecided(keyword)
        return not rule or len(set(value)) == len(value)
    if isinstance(value, str) and keyword in ("minLength", "pattern"):
        return len(value) >= rule if keyword == "minLength" else re.search(rule, value) is not None
    if _is_type(value, "number") and keyword == "minimum":
        return value >= rule
    if keyword in _TYPED_KEYWORDS:
        return True
    raise _Undecided(keyword)


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number"):
        if isinstance(value, float) and name == "integer":
            raise _Undecided("type")  # 1.0 is an integer to JSON Schema
        return isinstance(value, (int, float) if name == "number" else int) and not isinstance(value, bool)
    if name not in _TYPES:
        raise _Undecided("type")
    return isinstance(value, _TYPES[name])


def _equal(value: Any, candidate: Any) -> bool:
    if any(isinstance(x, (float, dict, list)) for x in (value, candidate)):
        raise _Undecided("enum")  # 1 == 1.0 in JSON Schema; containers are not compared here
    return type(value) is type(candidate) and value == candidate


def _semantic_problems(document: dict[str, Any]) -> list[str]:
    """What the schema cannot say: unique names, stream count, projections."""
    problems = []
    counts = Counter(layer["name"] for layer in document["layers"])  # not list.count: quadratic in 65,536 layers
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        problems.append(f"duplicate layer names: {', '.join(map(repr, duplicates))}")
    stream_ids = document.get("stream_ids")
    if stream_ids is not None and len(stream_ids) != document["batch_size"]:
        problems.append(f"stream_ids: expected {document['batch_size']} (batch_size), found {len(stream_ids)}")
    for index, layer in enumerate(document["layers"]):
        proj = layer["proj_units"]
        if proj is not None and (layer["kind"] != "lstm" or proj >= layer["units"]):
            problems.append(f"layer {index} {layer['name']!r}: proj_units: only an LSTM may project, to fewer "
                            f"than its {layer['units']} units; found {proj} on a {layer['kind']}")
        expected = set(_expected_shapes(document, layer))
        if set(layer["checksums"]) != expected:
            problems.append(f"layer {index} {layer['name']!r}: checksums: expected keys {sorted(expected)}, "
                            f"found {sorted(layer['checksums'])}")
    return problems


def _expected_shapes(document: dict[str, Any], layer: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    directions, units, kind = layer["directions"], layer["units"], layer["kind"]
    h_units = layer["proj_units"] or units
    if document["content"] == "state":
        batch = document["batch_size"]
        shapes = {"h": (directions, batch, h_units)}
        if kind == "lstm":
            shapes["c"] = (directions, batch, units)
        return shapes
    rows = GATES[kind] * units
    shapes = {"W": (directions, rows, layer["input_size"]), "R": (directions, rows, h_units),
              "Wb": (directions, rows), "Rb": (directions, rows)}
    if layer["proj_units"] is not None:
        shapes["P"] = (directions, h_units, units)
    return shapes


def _tensor_problems(document: dict[str, Any], tensors: dict[str, tuple[str, list[int]]]) -> list[str]:
    """Every disagreement between the metadata and the tensors the header holds."""
    problems = []
    expected_keys = set()
    for index, layer in enumerate(document["layers"]):
        code = SAFETENSORS_CODES[layer["dtype"]]
        for name, shape in _expected_shapes(document, layer).items():
            key = f"layers.{index}.{name}"
            expected_keys.add(key)
            where = f"layer {index} {layer['name']!r}: {name}"
            if key not in tensors:
                problems.append(f"{where}: tensor `{key}` is missing")
                continue
            found_code, found_shape = tensors[key]
            if found_code != code or tuple(found_shape) != shape:
                problems.append(f"{where}: metadata says {list(shape)} {layer['dtype']}, "
                                f"tensor `{key}` is {found_shape} {_dtype_label(found_code)}")
    extra = sorted(set(tensors) - expected_keys)
    if extra:
        problems.append(f"tensors not described by the metadata: {', '.join(extra)}")
    return problems


def _dtype_label(code: str) -> str:
    names = {code: name for name, code in SAFETENSORS_CODES.items()}
    return names.get(code, code)


def _nonfinite(where: str, array: np.ndarray) -> list[str]:
    return _nonfinite_problem(where, _container.count_nonfinite(array))


def _nonfinite_problem(where: str, count: int) -> list[str]:
    if not count:
        return []
    return [f"{where}: {count} non-finite values (NaN or Inf); such a state would poison every later prediction"]

