"""A store of per-stream recurrent state on Lance: get and put by stream id, versions, object storage.

One row per stream: its id, and one fixed-size-list column per layer and state (spec/store.md).
The statefmt document sits in the dataset's schema metadata under `statefmt`. Lance does the
storage, the BTREE index on the id, upserts, versions, compaction and object stores; this package
adds the neutral schema, validation and stream-id semantics, so that a `StateSet` from `get` goes
straight into any adapter.

Its modules: `_schema` (the layers, the document, the Arrow fields), `_arrow` (conversion and the
checks of a put), `_lance` (Lance's errors turned into ours, URLs), `_durable` (fsync), `_store`
(the `Store` class). Lance and pyarrow are imported inside functions: `from statefmt import store`
stays cheap.

>>> s = store.create("plant-b.lance", StateSignature([LayerSignature("lstm", 64)] * 2))
>>> version = s.put(states)                          # states.stream_ids name the rows
>>> h0, c0 = st.initial_state(s.get(["pump-7", "pump-2"], missing="zeros"), lstm)
"""

from .._document import METADATA_KEY
from ._arrow import check_ids
from ._schema import ID_COLUMN, INDEX_NAME, STORE_FORMAT_VERSION
from ._store import Store, Version, create, open

__all__ = ["ID_COLUMN", "INDEX_NAME", "METADATA_KEY", "STORE_FORMAT_VERSION", "Store", "Version", "check_ids", "create",
           "open"]
