"""The metadata store: the protocol the service depends on, and its backends.

- `SqliteMetadataStore` (facade/metadata_store.py): one file per façade, the default.
- `PostgresMetadataStore`: one database shared by many façades (api.metadata_backend=postgres).
"""

from facade.metadata._open import metadata_location, open_metadata_store
from facade.metadata._postgres import PostgresMetadataStore
from facade.metadata._protocol import InstanceMarkerTakenError, MetadataStore, MetadataStoreError
from facade.metadata_store import AccountRecord, Prior, StoredTransaction
from facade.metadata_store import MetadataStore as SqliteMetadataStore

__all__ = [
    "AccountRecord",
    "InstanceMarkerTakenError",
    "MetadataStore",
    "MetadataStoreError",
    "PostgresMetadataStore",
    "Prior",
    "SqliteMetadataStore",
    "StoredTransaction",
    "metadata_location",
    "open_metadata_store",
]
