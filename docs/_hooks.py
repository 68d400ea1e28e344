"""mkdocs hook: publish the normative spec (spec/*.md, the schemas) as site pages, read from spec/ at build time.

The spec stays where implementers and the vectors expect it; this only copies it into the site, so a
guide links to it and `mkdocs build --strict` checks those links. Links to files the site does not
carry (the vectors, the generator) become repository paths in code.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

SPEC = Path(__file__).resolve().parents[1] / "spec"
PAGES = {"README.md": "spec/index.md", "store.md": "spec/store.md", "1.0.md": "spec/1.0.md"}
STATIC = ("statefmt.schema.json", "statefmt.schema.v1.json")
LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|#)([^)#\s]+)(#[^)\s]*)?\)")


def _rewrite(text: str) -> str:
    def link(match: re.Match[str]) -> str:
        label, target, anchor = match[1], match[2], match[3] or ""
        if target in PAGES:
            return f"[{label}]({Path(PAGES[target]).name}{anchor})"
        if target in STATIC:
            return f"[{label}]({target})"
        return f"{label} (`spec/{target}` in the repository)"
    return LINK.sub(link, text)


def on_files(files, config):
    for source, page in PAGES.items():
        files.append(File.generated(config, page, content=_rewrite((SPEC / source).read_text())))
    for name in STATIC:
        files.append(File.generated(config, f"spec/{name}", content=(SPEC / name).read_bytes()))
    return files
