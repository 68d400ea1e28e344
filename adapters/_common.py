"""What every adapter shares: importing its framework lazily, and checking a state before reinjection."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np

from statefmt import StateMismatchError, StateSet, StateSignature, validate


def require(module: str, extra: str):
    """Import a framework on first use, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"statefmt.adapters.{extra} needs `{module}`, which is not installed: pip install \"statefmt[{extra}]\""
        ) from error


def source_metadata(framework: str, extra: str, model: str) -> dict[str, str]:
    """The `source` metadata of an export: which framework, at which version, produced it from what model."""
    return {"framework": framework, "version": require(framework, extra).__version__, "model": model}


def fit(states: StateSet, signature: StateSignature, *, strict: bool = False,
        broadcast: bool | int = False) -> StateSet:
    """Check `states` against what the target expects, then broadcast its batch if asked.

    Every mismatch (layer count, kind, units, directions, proj_units, batch size, and dtype
    when `strict`) is reported at once in one `StateMismatchError`. `broadcast=True` starts
    the target's batch size worth of streams from a batch-1 state; `broadcast=N` starts N
    (for targets, such as PyTorch modules, that fix no batch size). Broadcasting is a view,
    not a copy.
    """
    validate(states)  # NaN/Inf in memory are refused like NaN/Inf in a file
    if not isinstance(broadcast, bool):
        signature = dataclasses.replace(signature, batch_size=int(broadcast))
    if not strict:
        signature = dataclasses.replace(signature, dtype=None)
    problems = signature.check(states, broadcast=bool(broadcast))
    if broadcast and signature.batch_size is None:
        problems.append("broadcast=True needs a target with a fixed batch size; pass broadcast=N to start N streams")
    if problems:
        raise StateMismatchError(problems)
    if not broadcast or states.batch_size == signature.batch_size:
        return states
    size = signature.batch_size
    layers = [layer.with_arrays(**{s: np.broadcast_to(layer[s], (layer.directions, size, layer[s].shape[2]))
                                   for s in layer.state_names}) for layer in states.layers]
    return StateSet(layers, metadata=states.metadata)
