"""statefmt: a framework-neutral, versioned file format for recurrent network state.

The core needs numpy, safetensors and click only; it never imports a deep-learning
framework. Framework adapters live in `statefmt.adapters.<framework>` and import
their framework when first used.
"""

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

__version__ = "0.2.0"

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
