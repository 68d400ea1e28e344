"""Griffe extension for the API reference: a docstring's `>>>` example lines become a Python code block.

The house style writes examples as bare doctest lines (`>>> save(states, path)  # doctest: +SKIP`),
which Markdown would otherwise render as nested block quotes. The `# doctest: +SKIP` markers are
dropped from the page; the docstrings themselves are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

SKIP = re.compile(r"\s*#\s*doctest:\s*\+SKIP\s*$")


def fence(text: str) -> str:
    """`text` with each run of `>>>`/`...` lines (and the output lines after them) wrapped in a fence."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            body = lines[i][len(indent):]
            if body.startswith((">>> ", "... ")) or body in (">>>", "..."):
                body = SKIP.sub("", body[4:])
            block.append(body)
            i += 1
        out += [f"{indent}```python", *(indent + b for b in block), f"{indent}```"]
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence(obj.docstring.value)
