"""The metadata store: the protocol the service depends on, and its backends.

- `SqliteMetadataStore` (facade/metadata_store.py): one file per façade, the default.
- `JournalMetadataStore`: the embedded engine's: transaction metadata in the engine's journal (same
  append as the batch), accounts in the SQLite file.
- `PostgresMetadataStore`: one database shared by many façades (api.metadata_backend=postgres).
"""

from facade.metadata._journal import JournalMetadataStore
from facade.metadata._open import metadata_location, open_metadata_store
from facade.metadata._postgres import PostgresMetadataStore
from facade.metadata._protocol import InstanceMarkerTakenError, MetadataStore, MetadataStoreError
from facade.metadata_store import AccountRecord, Prior, StoredTransaction
from facade.metadata_store import MetadataStore as SqliteMetadataStore

__all__ = [
    "AccountRecord",
    "InstanceMarkerTakenError",
    "JournalMetadataStore",
    "MetadataStore",
    "MetadataStoreError",
    "PostgresMetadataStore",
    "Prior",
    "SqliteMetadataStore",
    "StoredTransaction",
    "metadata_location",
    "open_metadata_store",
]
