"""Every cap statefmt enforces on what it reads, and the version pattern, defined once.

Caps keep a reader's time and memory bounded whatever the input; each name says what it bounds.
A file's document and a store's document have caps of their own: a store's sits in Lance's schema
metadata, which every read of the dataset loads, so it is kept far smaller.

>>> MAX_FILE_DOCUMENT_BYTES // MAX_STORE_DOCUMENT_BYTES
64
>>> bool(VERSION_PATTERN.fullmatch("2.0")), bool(VERSION_PATTERN.fullmatch("02.0"))
(True, False)
"""

from __future__ import annotations

import re

# a file
MAX_HEADER_BYTES = 100_000_000  # the safetensors header: safetensors' own cap
MAX_FILE_DOCUMENT_BYTES = 64 * 1024 * 1024  # the JSON document in a file's `__metadata__`
MAX_FILE_LAYERS = 65_536
# a store
MAX_STORE_DOCUMENT_BYTES = 1024 * 1024  # the JSON document in a Lance dataset's schema metadata
MAX_STORE_LAYERS = 1024
MAX_STREAM_ID_BYTES = 1024  # one stream id of a store, UTF-8
# any JSON statefmt reads, and its errors
MAX_JSON_DEPTH = 64  # nesting, the same for every caller: not the interpreter's recursion limit
MAX_PROBLEMS = 100  # lines in one error; the rest are counted
MAX_SIGNATURE_BYTES = 16 * 1024 * 1024  # a signature JSON file given to the CLI

VERSION_PATTERN = re.compile(r"(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})")  # MAJOR.MINOR of a file or a store
