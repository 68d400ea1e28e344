"""What every adapter shares: importing its framework lazily, and checking a state or weights before they go in.

The verbs every adapter module offers, and what `name=`, `broadcast=` and `batch_size=` mean, are
listed once, in the docstring of `statefmt.adapters`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import numpy as np
import xxhash

from statefmt import StateMismatchError, StateSet, StateSignature, WeightSet, WeightSignature, validate
from statefmt._document import CHECKSUM_PREFIX


def require(module: str, extra: str) -> ModuleType:
    """Import a framework on first use, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if module == "keras" and error.name not in (None, "keras"):  # Keras is there; its backend is not
            raise ImportError(
                f"Keras needs a backend, and its backend `{error.name}` is not installed: install one (pip install "
                "tensorflow, torch or jax) and set KERAS_BACKEND to tensorflow, torch or jax (see the Keras "
                "adapter's reference page)") from error
        raise ImportError(
            f"statefmt.adapters.{extra} needs `{module}`, which is not installed: pip install \"statefmt[{extra}]\""
        ) from error


def source_metadata(framework: str, extra: str, model: str) -> dict[str, str]:
    """The `source` metadata of an export: which framework, at which version, produced it from what model."""
    version = getattr(require(framework, extra), "__version__", None)  # BlinkDL's rwkv has none
    return {"framework": framework, "version": version or importlib.metadata.version(framework), "model": model}


def model_fingerprints(implementation: str, config: Any, weights: Iterable[tuple[str, np.ndarray]]) -> dict[str, str]:
    """The `model` field of a 2.1 state: XXH3-64 of the configuration (canonical JSON) and of the weights
    (each name, dtype, shape and bytes, in name order), so a state refuses another model of the same
    implementation by name. `implementation` says whose layout was hashed: others' are not comparable.

    >>> model_fingerprints("rwkv", {"n_layer": 2}, [("emb", np.zeros(2, "float32"))])["config"][:8]
    'xxh3_64:'
    """
    digest = xxhash.xxh3_64()
    for key, array in sorted(weights, key=lambda item: item[0]):
        array = np.ascontiguousarray(array)
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.view(np.uint8).reshape(-1).data)
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return {"implementation": implementation, "config": CHECKSUM_PREFIX + xxhash.xxh3_64_hexdigest(text.encode()),
            "weights": CHECKSUM_PREFIX + digest.hexdigest()}


def prefixed(prefix: str | None, name: str) -> str:
    """A layer name under `name=`: "prefix/name"."""
    return f"{prefix}/{name}" if prefix else name


def fit(states: StateSet, signature: StateSignature, *, strict: bool = False, broadcast: bool = False,
        batch_size: int | None = None, downcast: bool = True) -> StateSet:
    """Check `states` against what the target expects, then broadcast its batch if asked.

    Every mismatch (layer count, kind, units, directions, proj_units or dims, the model's
    fingerprints, batch size, and dtype when `strict`) is reported at once in one
    `StateMismatchError`. `downcast=False` (modern kinds) accepts a state narrower than the
    target's dtype, never a wider one: the adapter would have to cast it down. Broadcasting is
    a view, not a copy.
    """
    if not isinstance(states, StateSet):
        raise StateMismatchError(signature.check(states))
    if not isinstance(broadcast, (bool, np.bool_)):
        hint = f"broadcast=True, batch_size={broadcast}" if isinstance(broadcast, int) else "broadcast=True"
        raise StateMismatchError(f"broadcast: expected True or False, found {broadcast!r}; to start N streams from "
                                 f"a batch-1 state pass broadcast=True and batch_size=N (here {hint})")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise StateMismatchError(f"batch_size: expected a whole number >= 1, found {batch_size!r}")
        if signature.batch_size is not None and signature.batch_size != batch_size:
            raise StateMismatchError(f"batch_size: the target fixes batch size {signature.batch_size}, "
                                     f"found batch_size={batch_size}; leave batch_size out")
        signature = dataclasses.replace(signature, batch_size=int(batch_size))
    validate(states)  # NaN/Inf in memory are refused like NaN/Inf in a file
    if not strict and downcast:
        signature = dataclasses.replace(signature, dtype=None)
    problems = signature.check(states, broadcast=bool(broadcast), upcast=not strict)
    if broadcast and signature.batch_size is None:
        problems.append("broadcast=True needs a batch size, and the target fixes none: "
                        "pass batch_size=N to start N streams")
    if problems:
        raise StateMismatchError(problems, source=states.file)
    if not broadcast or states.batch_size == signature.batch_size:
        return states
    size = signature.batch_size
    assert size is not None  # broadcast without a batch size was refused above
    layers = [layer.with_arrays(**{s: np.broadcast_to(layer[s], _with_batch(layer[s].shape, layer.batch_axis, size))
                                   for s in layer.state_names}) for layer in states.layers]
    return StateSet(layers, metadata=states.metadata, file=states.file)


def _with_batch(shape: tuple[int, ...], axis: int, size: int) -> tuple[int, ...]:
    return (*shape[:axis], size, *shape[axis + 1:])


def fit_weights(weights: WeightSet, signature: WeightSignature, problems: Iterable[str] = ()) -> WeightSet:
    """Check `weights` against what the target can take; `problems` are the target's own (e.g. not built).

    Everything is reported at once in one `StateMismatchError`, before anything is assigned.
    """
    problems = list(problems)
    if not isinstance(weights, WeightSet):
        raise StateMismatchError(signature.check(weights))
    for index, layer in enumerate(weights.layers):
        for key in layer.weight_names:
            array = np.asarray(layer[key])
            if array.dtype.name == "bfloat16":  # exact in float32, which numpy's isfinite takes
                array = array.astype(np.float32)
            count = int(np.count_nonzero(~np.isfinite(array)))
            if count:
                problems.append(f"layer {index} {layer.name!r}: {key}: {count} non-finite values (NaN or Inf); "
                                "weights holding them would poison every output")
    problems += signature.check(weights)
    if problems:
        raise StateMismatchError(problems, source=weights.file)
    return weights
