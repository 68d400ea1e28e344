"""statefmt: a framework-neutral, versioned file format for recurrent network state.

The core needs numpy and click (and jsonschema, xxhash, ml_dtypes); it reads and writes the
safetensors container itself, and never imports a deep-learning framework. Framework adapters
live in `statefmt.adapters.<framework>` and import their framework when first used.
"""

from .api import FORMAT_VERSION, load, load_weights, read, save, upgrade, validate
from .errors import (
    StateError,
    StateFormatError,
    StateMismatchError,
    StateUnreadableError,
    StoreConflictError,
    StoreError,
    StoreMemoryError,
    StoreNotFoundError,
)
from .signature import LayerSignature, LayerWeightSignature, StateSignature, WeightSignature
from .states import LayerState, StateSet
from .weights import LayerWeights, WeightSet


def __getattr__(name: str) -> str:
    """`__version__`, the installed distribution's (pyproject.toml states it once), read when first asked
    for: importing importlib.metadata up front would slow every CLI start."""
    if name != "__version__":
        raise AttributeError(f"module 'statefmt' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("statefmt")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found


__all__ = [
    "FORMAT_VERSION",
    "LayerSignature",
    "LayerState",
    "LayerWeightSignature",
    "LayerWeights",
    "StateError",
    "StateFormatError",
    "StateMismatchError",
    "StateSet",
    "StateSignature",
    "StateUnreadableError",
    "StoreConflictError",
    "StoreError",
    "StoreMemoryError",
    "StoreNotFoundError",
    "WeightSet",
    "WeightSignature",
    "load",
    "load_weights",
    "read",
    "save",
    "upgrade",
    "validate",
]
