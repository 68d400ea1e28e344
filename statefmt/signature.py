"""What a model expects of a state, layer by layer, and the check of a state against it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ._dtypes import DTYPE_NAMES
from .errors import StateFormatError
from .states import KINDS, StateSet

SIGNATURE_VERSION = "1.0"


@dataclass(frozen=True)
class LayerSignature:
    """One recurrent layer as a model holds it. `name` is informative: layers match by position."""

    kind: str
    units: int
    directions: int = 1
    proj_units: int | None = None
    name: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise StateFormatError(f"signature kind: expected one of {', '.join(KINDS)}, found {self.kind!r}")
        if self.directions not in (1, 2):
            raise StateFormatError(f"signature directions: expected 1 or 2, found {self.directions!r}")


@dataclass(frozen=True)
class StateSignature:
    """What a model expects: its recurrent layers in order, and optionally a batch size and a dtype.

    >>> sig = StateSignature([LayerSignature("lstm", 64), LayerSignature("gru", 32, directions=2)], batch_size=8)
    >>> StateSignature.from_json(sig.to_json()) == sig
    True
    """

    layers: tuple[LayerSignature, ...] = field(default_factory=tuple)
    batch_size: int | None = None
    dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise StateFormatError(f"signature dtype: expected one of {', '.join(DTYPE_NAMES)}, found {self.dtype!r}")

    @classmethod
    def of(cls, states: StateSet, *, batch_size: bool = True, dtype: bool = False) -> StateSignature:
        """The signature a state set fits exactly (with its batch size, and its dtype if all layers share one)."""
        layers = [LayerSignature(l.kind, l.units, l.directions, l.proj_units, l.name) for l in states.layers]
        dtypes = {layer.dtype for layer in states.layers}
        return cls(layers, states.batch_size if batch_size else None, dtypes.pop() if dtype and len(dtypes) == 1 else None)

    def check(self, states: StateSet, *, broadcast: bool = False) -> list[str]:
        """Every way `states` does not fit, one line each; an empty list when it fits.

        `broadcast=True` accepts a batch-1 state for any batch size (one warm start for N streams).
        """
        problems = []
        if len(states.layers) != len(self.layers):
            problems.append(
                f"layer count: expected {len(self.layers)}, found {len(states.layers)} "
                "(StateSet.select picks the layers a target holds)"
            )
        for index, (expected, layer) in enumerate(zip(self.layers, states.layers)):
            where = f"layer {index} {layer.name!r}"
            for name in ("kind", "units", "directions", "proj_units"):
                want, found = getattr(expected, name), getattr(layer, name)
                if want != found:
                    problems.append(f"{where}: {name}: expected {want}, found {found}")
            if self.dtype is not None and layer.dtype != self.dtype:
                problems.append(f"{where}: dtype: expected {self.dtype}, found {layer.dtype}")
        if self.batch_size is not None and states.batch_size != self.batch_size:
            if not (broadcast and states.batch_size == 1):
                hint = " (broadcast=True starts every stream from it)" if states.batch_size == 1 else ""
                problems.append(f"batch size: expected {self.batch_size}, found {states.batch_size}{hint}")
        return problems

    def to_json(self) -> str:
        document = {"statefmt_signature": SIGNATURE_VERSION, **asdict(self)}
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StateSignature:
        try:
            document = json.loads(text)
            version = str(document.get("statefmt_signature", ""))
            if version.split(".")[0] != "1":
                raise StateFormatError(f"statefmt_signature: expected a 1.x version, found {version!r}")
            layers = [LayerSignature(**layer) for layer in document["layers"]]
            return cls(layers, document.get("batch_size"), document.get("dtype"))
        except StateFormatError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise StateFormatError(f"not a statefmt signature: {type(error).__name__}: {error}") from None
