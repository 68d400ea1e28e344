"""The metadata document: parsed and checked once, at the edge, into frozen dataclasses.

A file's `__metadata__["statefmt"]` is a JSON text; `Document.parse` turns it into a typed
`Document` (or raises `StateFormatError` naming the step of the spec that failed), and
`Document.text` writes one. Writers build their document with the same checks readers run,
so statefmt never writes a file it would refuse to read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import xxhash

from . import cells
from .errors import StateFormatError
from .kinds import BATCH
from .limits import MAX_FILE_DOCUMENT_BYTES, MAX_FILE_LAYERS, MAX_JSON_DEPTH, MAX_PROBLEMS, VERSION_PATTERN

FORMAT_VERSION = "2.1"  # the newest a writer writes; it writes "2.0" for a file 2.0 can hold (see `version_for`)
READABLE_MAJORS = ("1", "2")
METADATA_KEY = "statefmt"
CHECKSUM_KEY = "statefmt_checksum"  # beside the document: a checksum cannot sit inside what it covers
CHECKSUM_PREFIX = "xxh3_64:"
BLOCK_BYTES = 65_536
DESCRIPTIVE_FIELDS = ("source", "created_by", "user")
# 2.1, states only: what the state was computed with and has seen. A signature checks `model`.
SESSION_FIELDS = ("compute_dtype", "tokens", "token_fingerprint", "model")
FIELDS = DESCRIPTIVE_FIELDS + SESSION_FIELDS  # the document's optional fields, which a set carries as `metadata`
STREAM_TENSORS = ("stream_ids.bytes", "stream_ids.offsets", "stream_ids.buckets", "stream_ids.index")
CHECKSUMS_TENSOR = "checksums"

# The checks of the spec's "What a reader MUST check", by step: a stable code for each.
STEPS = {1: "container", 2: "metadata", 3: "version", 4: "metadata-checksum", 5: "schema", 6: "semantics",
         7: "tensors", 8: "checksum", 9: "nonfinite", 10: "stream-index"}


def fail(step: int, problems: str | list[str], source: str | None = None) -> StateFormatError:
    """A `StateFormatError` for a failed reader check, carrying the spec's step and code."""
    error = StateFormatError(cap(problems), source=source)
    error.step, error.code = step, STEPS[step]
    return error


def cap(problems: str | list[str]) -> str | list[str]:
    """At most MAX_PROBLEMS lines, and a count of the rest: an error stays small whatever the input."""
    if isinstance(problems, str) or len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more problems"]


def text_checksum(text: str) -> str:
    """The checksum of a metadata document: xxh3-64 of its UTF-8 bytes."""
    return CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(text.encode())


@dataclass(frozen=True)
class LayerEntry:
    """One layer as the document describes it. `checksums` exists in 1.x files only (whole tensors).

    A modern kind (format 2.1) has `dims` instead of units, directions and proj_units (0, 1, None).
    """

    name: str
    kind: str
    units: int
    directions: int
    proj_units: int | None
    dtype: str
    input_size: int | None = None
    activation: str | None = None
    recurrent_activation: str | None = None
    linear_before_reset: bool | None = None
    checksums: Mapping[str, str] | None = None
    dims: Mapping[str, int | None] | None = None

    @property
    def h_units(self) -> int:
        return self.proj_units or self.units

    def shapes(self, batch_size: int | None) -> dict[str, tuple[int, ...]]:
        """Each tensor of the layer, in the spec's order, with its shape."""
        d, units, h_units = self.directions, self.units, self.h_units
        shapes: dict[str, tuple[int, ...]]
        if self.kind in cells.MODERN:
            assert batch_size is not None and self.dims is not None  # a modern kind is a state, with dims
            sizes = {**self.dims, BATCH: batch_size}
            return {name: tuple(int(sizes[axis] or 0) for axis in axes)
                    for name, axes in cells.MODERN[self.kind].tensors}
        if batch_size is not None:  # h may be projected; c (an LSTM's) never is
            return {name: (d, batch_size, h_units if name == "h" else units) for name in cells.STATE_NAMES[self.kind]}
        rows = cells.GATES[self.kind] * units
        assert self.input_size is not None
        shapes = {"W": (d, rows, self.input_size), "R": (d, rows, h_units), "Wb": (d, rows), "Rb": (d, rows)}
        if self.proj_units is not None:
            shapes["P"] = (d, h_units, units)
        return shapes


@dataclass(frozen=True)
class Document:
    """The metadata document of a file (format 1.x or 2.x), checked."""

    format_version: str
    content: str  # "state" or "weights"
    layers: tuple[LayerEntry, ...]
    batch_size: int | None = None
    stream_ids: bool = False  # 2.x: the ids live in the stream_ids.* tensors
    block_bytes: int = BLOCK_BYTES
    checksum_blocks: tuple[str, ...] = ()  # 2.x: xxh3-64 of each block of the `checksums` tensor
    ids_v1: tuple[str, ...] | None = None  # 1.x: the ids, in the document
    source: Mapping[str, Any] | None = None
    created_by: str | None = None
    user: Mapping[str, Any] | None = None
    compute_dtype: str | None = None
    tokens: int | None = None
    token_fingerprint: str | None = None
    model: Mapping[str, str] | None = None

    @property
    def major(self) -> str:
        return self.format_version.split(".")[0]

    @property
    def is_state(self) -> bool:
        return self.content == "state"

    @property
    def fields(self) -> dict[str, Any]:
        """The optional fields a set carries as its `metadata`: descriptive ones, and 2.1's session fields."""
        return {key: getattr(self, key) for key in FIELDS if getattr(self, key) is not None}

    def tensors(self) -> Iterator[tuple[str, str, tuple[int, ...]]]:
        """(name, dtype, shape) of every layer tensor the document calls for, in checksum order (a 2.x
        file's stream index and `checksums` tensor follow them; _reader._tensor_problems lists all)."""
        batch = self.batch_size if self.is_state else None
        for index, layer in enumerate(self.layers):
            for name, shape in layer.shapes(batch).items():
                yield f"layers.{index}.{name}", layer.dtype, shape

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {"format_version": self.format_version, "content": self.content}
        if self.is_state:
            document["batch_size"] = self.batch_size
            document["stream_ids"] = self.stream_ids
        document["block_bytes"] = self.block_bytes
        document["checksum_blocks"] = list(self.checksum_blocks)
        layers = []
        for layer in self.layers:
            entry = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)
                     if f.name not in ("checksums", "dims")}
            if not self.is_state:
                layers.append(entry)
                continue
            if layer.kind in cells.MODERN:
                layers.append({"name": layer.name, "kind": layer.kind, "dtype": layer.dtype,
                               "dims": dict(layer.dims or {})})
                continue
            layers.append({key: value for key, value in entry.items() if key in _STATE_LAYER_KEYS})
        document["layers"] = layers
        document.update(self.fields)
        return document

    def text(self) -> str:
        """The document as a writer stores it: sorted keys, no insignificant whitespace, no NaN."""
        document = self.to_dict()
        check_depth(document)
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def parse(cls, metadata: Mapping[str, str], source: str | None = None) -> Document:
        """The document of a file's `__metadata__`, checked (spec steps 2 to 6)."""
        if METADATA_KEY not in metadata:
            raise fail(2, f"no '{METADATA_KEY}' entry in the safetensors metadata: a plain safetensors file, "
                          "not a statefmt file", source)
        text = metadata[METADATA_KEY]
        if len(text) > MAX_FILE_DOCUMENT_BYTES:
            raise fail(2, f"statefmt metadata of {len(text)} bytes exceeds the {MAX_FILE_DOCUMENT_BYTES}-byte cap",
                       source)
        try:
            document = strict_json(text)
        except StateFormatError as error:
            raise fail(2, f"statefmt metadata: {error.problems[0]}", source) from None
        if not isinstance(document, dict):
            raise fail(2, f"statefmt metadata must be a JSON object, found {type(document).__name__}", source)
        version = document.get("format_version")
        if not (isinstance(version, str) and VERSION_PATTERN.fullmatch(version)):
            raise fail(3, f"format_version: expected a version such as {FORMAT_VERSION!r}, found {_short(version)}",
                       source)
        if version.split(".")[0] not in READABLE_MAJORS:
            raise fail(3, f"format_version {version} is not supported: this statefmt reads 1.x and 2.x files; "
                          "upgrade statefmt", source)
        if metadata.get(CHECKSUM_KEY) != text_checksum(text):
            found = "is missing" if CHECKSUM_KEY not in metadata else "does not match"
            raise fail(4, f"the metadata checksum ('{CHECKSUM_KEY}') {found}: the metadata is corrupt or was "
                          "edited by hand", source)
        return cls.from_dict(document, source)

    @classmethod
    def from_dict(cls, document: dict[str, Any], source: str | None = None) -> Document:
        """A checked `Document` from a parsed JSON object (spec steps 5 and 6)."""
        major = str(document.get("format_version", "")).split(".")[0]
        problems = _schema_problems(document, major)
        if problems:
            raise fail(5, problems, source)
        problems = _semantic_problems(document, major)
        if problems:
            raise fail(6, problems, source)
        is_state = document["content"] == "state"
        layers = []
        for entry in document["layers"]:
            if entry["kind"] in cells.MODERN:
                layers.append(LayerEntry(entry["name"], entry["kind"], 0, 1, None, entry["dtype"],
                                         dims={key: entry["dims"][key] for key in _dim_names(entry["kind"])}))
                continue
            weights = {} if is_state else {
                "input_size": entry["input_size"], "activation": entry.get("activation", "tanh"),
                "recurrent_activation": entry.get("recurrent_activation", "sigmoid"),
                "linear_before_reset": entry.get("linear_before_reset", True)}
            layers.append(LayerEntry(entry["name"], entry["kind"], entry["units"], entry["directions"],
                                     entry["proj_units"], entry["dtype"], **weights,
                                     checksums=entry.get("checksums") if major == "1" else None))
        ids = document.get("stream_ids")
        v2 = major == "2"  # a 1.x document may hold keys of 2.x's names, which a 1.x reader ignores
        return cls(
            format_version=document["format_version"], content=document["content"], layers=tuple(layers),
            batch_size=document.get("batch_size"),
            stream_ids=v2 and ids is True,
            block_bytes=document["block_bytes"] if v2 else BLOCK_BYTES,
            checksum_blocks=tuple(document["checksum_blocks"]) if v2 else (),
            ids_v1=tuple(ids) if not v2 and isinstance(ids, list) else None,
            **{key: document[key] for key in (FIELDS if v2 else DESCRIPTIVE_FIELDS) if key in document},
        )


_STATE_LAYER_KEYS = ("name", "kind", "units", "directions", "proj_units", "dtype")


def _dim_names(kind: str) -> tuple[str, ...]:
    """The keys of a modern layer's `dims`: its sizes, then its settings."""
    return cells.MODERN[kind].dims + cells.MODERN[kind].settings


def version_for(layers: tuple[LayerEntry, ...], fields: Mapping[str, Any]) -> str:
    """The version a writer writes: 2.0 when the file needs nothing of 2.1, so 2.0 readers read it."""
    modern = any(layer.kind in cells.MODERN for layer in layers) or any(key in fields for key in SESSION_FIELDS)
    return FORMAT_VERSION if modern else "2.0"


def known_kind_problems(document: dict[str, Any]) -> list[str]:
    """A layer of a kind this reader does not know, refused by name (before the schema's longer message)."""
    layers = document.get("layers")
    problems = []
    for index, layer in enumerate(layers if isinstance(layers, list) else []):
        kind = layer.get("kind") if isinstance(layer, dict) else None
        known = cells.STATE_KINDS if document.get("content") == "state" else cells.KINDS
        if isinstance(kind, str) and kind not in known:
            problems.append(f"layer {index} {_short(layer.get('name'))}: kind {_short(kind)} is not one this reader "
                            f"knows ({', '.join(known)}); a later statefmt may read it")
    return problems[:MAX_PROBLEMS]


def metadata_entries(text: str) -> dict[str, str]:
    """The safetensors `__metadata__` of a file whose metadata document is `text`: it and its checksum."""
    return {METADATA_KEY: text, CHECKSUM_KEY: text_checksum(text)}


def strict_json(text: str | bytes) -> Any:
    """Parse JSON as RFC 8259 says and RFC 7493 (I-JSON) asks: no duplicate keys, no NaN or
    Infinity, nesting at most MAX_JSON_DEPTH deep. `StateFormatError` says what is wrong."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # strictly: json.loads(bytes) would let surrogate bytes through
        value = json.loads(text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant,
                           parse_float=_finite_float)
    except RecursionError:
        raise StateFormatError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as error:
        message = str(error) if isinstance(error, StateFormatError) else f"not valid JSON ({error})"
        raise StateFormatError(message[:300]) from None
    check_depth(value)
    if _SURROGATE_ESCAPE.search(text):
        try:  # a pair is one character; a lone surrogate is no Unicode text at all (I-JSON forbids it)
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise StateFormatError("a JSON string holds a lone surrogate (\\ud800 to \\udfff): not Unicode "
                                   "text") from None
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        repeated = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise StateFormatError(f"duplicate JSON key {_short(repeated[0])}: a key may appear once per object")
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StateFormatError(f"the number {text[:40]} overflows a double; NaN and Infinity are not allowed")
    return value


def _refuse_constant(name: str) -> Any:
    raise StateFormatError(f"{name} is not a JSON number; NaN and Infinity are not allowed")


def check_depth(value: Any) -> None:
    """Refuse JSON values nested deeper than MAX_JSON_DEPTH: the same limit when writing and reading."""
    level: list[Any] = [value]
    for _ in range(MAX_JSON_DEPTH + 1):
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list) and not set(map(type, item)) <= {str, int, float, bool, type(None)}:
                below.extend(v for v in item if isinstance(v, (dict, list)))
        if not below:
            return
        level = below
    raise StateFormatError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- step 5: the schema ---------------------------------------------------------------------------------------

@lru_cache(maxsize=2)
def schema(major: str = "2") -> dict[str, Any]:
    """The JSON Schema of a document of this major version (statefmt.schema.json is 2.x)."""
    name = "statefmt.schema.json" if major == "2" else "statefmt.schema.v1.json"
    loaded: dict[str, Any] = json.loads((Path(__file__).parent / name).read_text())
    return loaded


@lru_cache(maxsize=2)
def _validator(major: str) -> Any:
    import jsonschema  # loaded only for a document that the quick check does not pass

    return jsonschema.Draft202012Validator(schema(major))


def _schema_problems(document: dict[str, Any], major: str) -> list[str]:
    layers = document.get("layers")
    if isinstance(layers, list) and len(layers) > MAX_FILE_LAYERS:  # before the schema: a bounded error, fast
        return [f"layers: expected at most {MAX_FILE_LAYERS}, found {len(layers)}"]
    ids = document.get("stream_ids")
    if isinstance(ids, list) and not set(map(type, ids)) <= {str}:  # at C speed: 65,536 ids
        # jsonschema's uniqueItems compares mixed-type items pairwise: a crafted list would take hours
        index = next(i for i, item in enumerate(ids) if not isinstance(item, str))
        return [f"stream_ids.{index}: every stream id must be a string, found {type(ids[index]).__name__}"]
    unknown = known_kind_problems(document) if major == "2" else []
    if unknown:
        return unknown
    floats = [f"{where}: expected an integer, found {value!r}" for where, value in _integer_fields(document)
              if isinstance(value, float)]
    if floats:  # 2.0 is an integer to JSON Schema, not to the code that sizes arrays with it
        return floats[:MAX_PROBLEMS]
    try:
        if _conforms(document, schema(major)):
            return []
    except _Undecided:
        pass
    problems = []
    for error in _validator(major).iter_errors(document):
        path = list(error.absolute_path)
        if len(path) >= 2 and path[0] == "layers" and isinstance(path[1], int):
            layer = document["layers"][path[1]]
            name = layer.get("name") if isinstance(layer, dict) else None
            field = ".".join(map(str, path[2:])) or "entry"
            where = f"layer {path[1]} {_short(name)}: {field}"
        else:
            where = ".".join(map(str, path)) or "metadata"
        message = error.message if len(error.message) <= 200 else error.message[:200] + " … (cut)"
        problems.append(f"{where}: {message}")  # jsonschema quotes the whole bad value: keep a line short
        if len(problems) > MAX_PROBLEMS:
            break
    return sorted(problems)


def _integer_fields(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key in ("batch_size", "block_bytes"):
        yield key, document.get(key)
    layers = document.get("layers")
    for index, layer in enumerate(layers if isinstance(layers, list) else []):
        if isinstance(layer, dict):
            for key in ("units", "directions", "proj_units", "input_size"):
                yield f"layer {index}: {key}", layer.get(key)
            dims = layer.get("dims")
            for key, value in (dims.items() if isinstance(dims, dict) else ()):
                yield f"layer {index}: dims.{key}", value
    yield "tokens", document.get("tokens")


class _Undecided(Exception):
    """The quick schema check met what it does not decide exactly; jsonschema decides."""


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
_TYPED_KEYWORDS = {"required", "properties", "additionalProperties", "items", "minItems", "maxItems",
                   "uniqueItems", "minLength", "pattern", "minimum", "maximum"}  # each ignores other types


def _conforms(value: Any, rules: dict[str, Any] | bool, root: dict[str, Any] | None = None) -> bool:
    """Whether `value` conforms to the schema `rules`: the keywords statefmt's schemas use, exactly.

    Why: `import jsonschema` costs more than the rest of the CLI's cold start (see `make bench`,
    the ablation rows). It raises `_Undecided` for anything else (an unknown keyword, a float
    where an integer is expected), so a schema change never weakens the check; jsonschema then
    decides, and it alone writes the messages for a document that fails.
    """
    if isinstance(rules, bool):
        return rules
    top = rules if root is None else root
    return all(_keyword_holds(value, keyword, rule, rules, top) for keyword, rule in rules.items())


def _keyword_holds(value: Any, keyword: str, rule: Any, rules: dict[str, Any], root: dict[str, Any]) -> bool:
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
        return _conforms(value, rules.get("then" if _conforms(value, rule, root) else "else", True), root)
    if keyword == "not":
        return not _conforms(value, rule, root)
    if keyword == "allOf":
        return all(_conforms(value, option, root) for option in rule)
    if keyword in ("anyOf", "oneOf"):
        matches = sum(_conforms(value, option, root) for option in rule)
        return matches >= 1 if keyword == "anyOf" else matches == 1
    if isinstance(value, dict) and keyword in ("required", "properties", "additionalProperties"):
        if keyword == "required":
            return all(key in value for key in rule)
        if keyword == "properties":
            return all(_conforms(value[key], option, root) for key, option in rule.items() if key in value)
        if "patternProperties" in rules:
            raise _Undecided(keyword)
        known = rules.get("properties", {})
        return all(_conforms(item, rule, root) for key, item in value.items() if key not in known)
    if isinstance(value, list) and keyword in ("items", "minItems", "maxItems", "uniqueItems"):
        if keyword == "items" and rule == {"type": "string"}:  # 1.x stream_ids: 65,536 of them, at C speed
            return set(map(type, value)) <= {str}
        if keyword == "items":
            return all(_conforms(item, rule, root) for item in value)
        if keyword != "uniqueItems":
            return bool(len(value) >= rule if keyword == "minItems" else len(value) <= rule)
        if rule and not set(map(type, value)) <= {str}:
            raise _Undecided(keyword)
        return bool(not rule or len(set(value)) == len(value))
    if isinstance(value, str) and keyword in ("minLength", "pattern"):
        return bool(len(value) >= rule if keyword == "minLength" else re.search(rule, value) is not None)
    if _is_type(value, "number") and keyword in ("minimum", "maximum"):
        return bool(value >= rule if keyword == "minimum" else value <= rule)
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
    return type(value) is type(candidate) and bool(value == candidate)


# --- step 6: what the schema cannot say ------------------------------------------------------------------------

def _semantic_problems(document: dict[str, Any], major: str) -> list[str]:
    problems = []
    counts = Counter(layer["name"] for layer in document["layers"])  # not list.count: quadratic in 65,536 layers
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        problems.append(f"duplicate layer names: {', '.join(_short(name) for name in duplicates[:10])}")
    ids = document.get("stream_ids")
    if isinstance(ids, list) and len(ids) != document["batch_size"]:
        problems.append(f"stream_ids: expected {document['batch_size']} (batch_size), found {len(ids)}")
    minor = int(str(document["format_version"]).split(".")[1])
    for index, layer in enumerate(document["layers"]):
        where = f"layer {index} {_short(layer['name'])}"
        if layer["kind"] in cells.MODERN:
            problems += _modern_problems(where, layer, minor, document.get("tokens"))
            continue
        proj = layer["proj_units"]
        if proj is not None and (layer["kind"] != "lstm" or proj >= layer["units"]):
            problems.append(f"{where}: proj_units: only an LSTM may project, to fewer than its {layer['units']} "
                            f"units; found {proj} on a {layer['kind']}")
        if major == "1":
            entry = LayerEntry(layer["name"], layer["kind"], layer["units"], layer["directions"], proj,
                               layer["dtype"], input_size=layer.get("input_size"))
            expected = set(entry.shapes(document.get("batch_size") if document["content"] == "state" else None))
            if set(layer["checksums"]) != expected:
                problems.append(f"{where}: checksums: expected keys {sorted(expected)}, "
                                f"found {sorted(layer['checksums'])}")
    return problems


def _modern_problems(where: str, layer: dict[str, Any], minor: int, tokens: Any) -> list[str]:
    problems = []
    if minor < 1:
        problems.append(f"{where}: kind: {layer['kind']} needs format 2.1 or later, the file says 2.{minor}")
    dims = layer["dims"]
    window, length = dims.get("window"), dims.get("length")
    if window is not None and length is not None and length > window:
        problems.append(f"{where}: dims.length: a sliding window of {window} keeps at most {window} positions, "
                        f"found {length}")
    if isinstance(tokens, int) and length is not None and length > tokens:
        problems.append(f"{where}: dims.length: the state has seen {tokens} tokens, found {length} positions")
    return problems
