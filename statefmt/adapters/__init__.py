"""Framework adapters, one module per framework (keras, torch, flax, onnx), each importing its framework
only when used.

Every module offers the same verbs, with the same arguments in the same order and meaning:

    signature(target, *, name=None) -> StateSignature
    export(source, state=None, *, name=None) -> StateSet
    initial_state(states, target, *, strict=False, broadcast=False, batch_size=None, device=None)
    export_weights(source, *, name=None) -> WeightSet
    import_weights(weights, target) -> the target holding the weights
    weight_signature(target) -> WeightSignature

`name=` prefixes every layer name with "name/" (two models' states in one file stay apart).
`broadcast=True` starts every stream from a batch-1 state, at the batch size the target fixes
or at `batch_size=N` where it fixes none; `batch_size=N` alone expects N streams. Flax linen, whose modules hold
no params, also takes `variables=` by keyword in the weight verbs.

The implementations of modern recurrent language models (transformers, recurrentgemma, rwkv,
keras_hub) offer the state verbs (signature, export, initial_state): a state saved by one
continues in another with the same weights (docs/handoffs.md); their weights stay their own.
"""
