"""BlinkDL's `rwkv` runtime (PyPI `rwkv`): the state of an RWKV-4 `rwkv.model.RWKV` to and from the neutral layout.

`model.forward(tokens, state)` returns `(logits, state)`, the state a flat list of five tensors
per layer with no batch axis: `[att_x (C,), num (C,), den (C,), max (C,), ffn_x (C,)]` (BlinkDL's
`att_xx, att_aa, att_bb, att_pp, ffn_xx`), num/den/max float32. The neutral kind `rwkv4` holds
the same five as `att_x, att_num, att_den, att_max, ffn_x`, each `[batch, channels]`: one runtime
state is one stream (batch 1). Layers are named "l0", "l1", ...

Only RWKV-4 checkpoints and float32 strategies ("cpu fp32", "cuda fp32") are taken: the runtime
keeps `att_x`/`ffn_x` in the strategy's dtype, and statefmt does not narrow a state behind the
caller's back. `rwkv` and torch are imported on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from statefmt import LayerSignature, LayerState, StateError, StateSet, StateSignature

from ._common import fit, model_fingerprints, prefixed, require, source_metadata
from .torch import _numpy, _tensor

_EXTRA = "rwkv"
_ORDER = ("att_x", "att_num", "att_den", "att_max", "ffn_x")  # BlinkDL's order within a layer


def signature(target: Any, *, name: str | None = None) -> StateSignature:
    """What an RWKV-4 `rwkv.model.RWKV` takes: one `rwkv4` layer per block, batch 1, float32.

    >>> signature(model).layers[0].dims
    {'channels': 32}
    """
    model = _rwkv4(target)
    return StateSignature([LayerSignature("rwkv4", dims={"channels": model.args.n_embd}, name=_name(name, i))
                           for i in range(model.args.n_layer)], batch_size=1, dtype="float32",
                          model=_fingerprints(model))


def export(source: Any, state: Any = None, *, name: str | None = None) -> StateSet:
    """The state `source.forward` returned, as a batch-1 StateSet.

    >>> logits, state = model.forward(tokens, None)
    >>> statefmt.save(export(model, state), "session.statefmt")
    """
    model = _rwkv4(source)
    expected = 5 * model.args.n_layer
    if not isinstance(state, (list, tuple)) or len(state) != expected:
        count = f"a {type(state).__name__} of {len(state)}" if isinstance(state, (list, tuple)) else repr(state)
        raise StateError(f"expected the state RWKV.forward returned, a list of {expected} tensors (5 per layer), "
                         f"found {count}" + ("; a state is None only before the first token" if state is None else ""))
    layers = []
    for i in range(model.args.n_layer):
        arrays = {key: _numpy(tensor)[None] for key, tensor in zip(_ORDER, state[5 * i:5 * i + 5])}
        layers.append(LayerState(_name(name, i), "rwkv4", **arrays))
    metadata = {"source": source_metadata("rwkv", _EXTRA, type(model).__name__), "compute_dtype": "float32",
                "model": _fingerprints(model)}
    return StateSet(layers, metadata=metadata)


def initial_state(states: StateSet, target: Any, *, strict: bool = False, broadcast: bool = False,
                  batch_size: int | None = None, device: Any = None) -> list[Any]:
    """The state `target.forward(tokens, state)` continues from: five tensors per layer, on each layer's device.

    >>> state = initial_state(statefmt.load("session.statefmt"), model)
    >>> logits, state = model.forward(next_tokens, state)

    One stream: pick it from a batch with `states.rows([row])` (or `load(path, streams=[id])`).
    """
    torch = require("torch", _EXTRA)
    model = _rwkv4(target)
    states = fit(states, signature(target), strict=strict, broadcast=broadcast, batch_size=batch_size,
                 downcast=False)
    result = []
    for i, layer in enumerate(states.layers):
        where = model.strategy[i].device if device is None else torch.device(device)
        result += [_tensor(np.ascontiguousarray(layer[key][0])).to(device=where, dtype=torch.float32)
                   for key in _ORDER]
    return result


def _rwkv4(target: Any):
    rwkv = require("rwkv.model", _EXTRA)
    torch = require("torch", _EXTRA)
    if not isinstance(target, rwkv.RWKV):
        raise StateError(f"statefmt.adapters.rwkv takes an rwkv.model.RWKV, found {type(target).__name__}")
    if target.version != 4:
        raise StateError(f"statefmt.adapters.rwkv takes RWKV-4 checkpoints, found RWKV-{target.version:g} "
                         f"({target.args.MODEL_NAME})")
    narrow = sorted({str(s.atype).removeprefix("torch.") for s in target.strategy[:-1] if s.atype != torch.float32})
    if narrow:
        raise StateError(f"strategy {target.args.strategy_string!r} keeps att_x and ffn_x in {', '.join(narrow)}: "
                         "statefmt.adapters.rwkv takes float32 strategies (\"cpu fp32\", \"cuda fp32\")")
    if target.args.n_att != target.args.n_embd:
        raise StateError(f"{target.args.MODEL_NAME}: attention width {target.args.n_att} differs from the embedding "
                         f"width {target.args.n_embd}; the rwkv4 kind has one width (channels)")
    return target


def _fingerprints(model) -> dict[str, str]:
    """Over the runtime's own (converted) weights: a state matches a model loaded with the same strategy."""
    config = {key: getattr(model.args, key) for key in ("n_layer", "n_embd", "n_att", "n_ffn")}
    return model_fingerprints("rwkv", {**config, "version": model.version},
                              ((key, _numpy(value)) for key, value in model.w.items()))


def _name(prefix: str | None, index: int) -> str:
    return prefixed(prefix, f"l{index}")
