"""statefmt: a framework-neutral, versioned file format for recurrent network state.

The core needs numpy and click (and jsonschema, xxhash, ml_dtypes); it reads and writes the
safetensors container itself, and never imports a deep-learning framework. Framework adapters
live in `statefmt.adapters.<framework>` and import their framework when first used.
"""

from importlib.metadata import PackageNotFoundError, version

from .api import FORMAT_VERSION, load, load_weights, read, save, upgrade, validate
from .errors import (
    StateError,
    StateFormatError,
    StateMismatchError,
    StoreConflictError,
    StoreError,
    StoreMemoryError,
    StoreNotFoundError,
)
from .signature import LayerSignature, LayerWeightSignature, StateSignature, WeightSignature
from .states import LayerState, StateSet
from .weights import LayerWeights, WeightSet

try:
    __version__ = version("statefmt")  # the installed distribution's: pyproject.toml states it once
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

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
