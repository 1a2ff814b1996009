"""The vector store: Milvus (Lite, served to every local process, or a server).

- :mod:`~ris.common.store.identity`: row ids, the URI and identity of a store;
- :mod:`~ris.common.store.client`: the bounded Milvus client (every call with a deadline);
- :mod:`~ris.common.store.schema`: the collection's fields, identity and index;
- :mod:`~ris.common.store.collection`: :class:`ImageStore`, its writes, reads and searches;
- :mod:`~ris.common.store.write`: packed inserts and upserts;
- :mod:`~ris.common.store.lite_server`: one Milvus Lite server per ``.db`` file.
"""

from ris.common.store.client import BoundedClient, drop_collection
from ris.common.store.collection import Hit, ImageStore, StoreCache, open_store
from ris.common.store.identity import foreign_store, milvus_uri, path_id, store_identity

__all__ = [
    "BoundedClient",
    "Hit",
    "ImageStore",
    "StoreCache",
    "drop_collection",
    "foreign_store",
    "milvus_uri",
    "open_store",
    "path_id",
    "store_identity",
]
