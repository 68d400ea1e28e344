"""Framework adapters, one module per framework, each importing its framework only when used.

Every module offers the same verbs: `signature(target)`, `export(source, state=None)`,
`initial_state(states, target, *, strict=False, device=None, broadcast=False)`.
"""
