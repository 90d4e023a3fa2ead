"""The metadata store protocol: what the service, the group committer, the consistency checks and
change capture need from the store that keeps what does not fit the engine (accounts' attributes,
idempotency intents and fingerprints, canonical bodies, recorded failures, the instance marker).

Every backend keeps TigerBeetle's "write last, read first" per batch (facade/metadata_store.py tells
the whole protocol): `prepare` records the intents durably before the engine sees the transfers, in
one durable write (one round trip to a server); success is read back from the engine, never stored;
`record_failures` is durable before the refused callers are answered.

On the embedded engine the store is facade/metadata/_journal.py: the group committer skips steps 1 and
3 there (`priors` reads, `submit` makes the batch's one append carry the intents and outcomes), and
`prepare` / `record_failures` called on their own append stand-alone metadata records.

A backend may run calls concurrently (PostgreSQL: a pool of connections; SQLite: one thread, in
order). The group committer never has one transaction id in two calls at once (repeats are folded into
the first occurrence while it commits), so no order between calls is needed within a façade; between
façades sharing a store, `prepare` itself decides which intent is stored first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from facade.domain.transactions import MappedTransaction
from facade.metadata_store import AccountRecord, Prior, StoredTransaction
from ledger_events.gen.ledger.v1 import entries_pb2

__all__ = ["InstanceMarkerTakenError", "MetadataStore", "MetadataStoreError"]


class MetadataStoreError(RuntimeError):
    """The store cannot be reached or refused a statement (a backend's own errors, translated at the seam).
    Operating errors only: a write that raises this was not acknowledged, and its caller may retry."""


class InstanceMarkerTakenError(MetadataStoreError):
    """`put_instance_marker` found a marker already there: another façade sharing the store wrote its
    own first (they started together). The caller reads the marker that stands."""


class MetadataStore(Protocol):
    """The seam between the service and wherever its metadata lives (SQLite per façade, or a PostgreSQL
    database shared by many façades). Ids are the engine's u128 integers."""

    async def close(self) -> None: ...

    # The instance marker and consistency checks (facade.consistency).

    async def instance_marker(self) -> tuple[str, int] | None:
        """(façade name, instance id) of the engine instance this store belongs to; None if unmarked."""
        ...

    async def put_instance_marker(self, name: str, instance_id: int) -> None:
        """Durably records the marker (once: a store belongs to one instance for good). A shared store
        raises InstanceMarkerTakenError when another façade's marker got there first."""
        ...

    async def has_data(self) -> bool:
        """Whether any account or transaction was ever recorded here."""
        ...

    async def known_transfers(self, transfer_ids: Sequence[int]) -> set[int]:
        """The transfers among `transfer_ids` whose transaction intent this store holds."""
        ...

    # Accounts.

    async def put_account(self, record: AccountRecord) -> AccountRecord:
        """Inserts the account, or returns the one already stored under its (client, reference)."""
        ...

    async def get_account(self, account_id: int) -> AccountRecord | None: ...

    async def account_owners(self, account_ids: Sequence[int]) -> dict[int, str]:
        """The owning client of each known account among `account_ids`."""
        ...

    async def list_accounts(self, client_id: str, after: str, limit: int, currency: str) -> list[AccountRecord]:
        """The client's accounts whose id (as decimal text, byte order) follows `after`, in that order."""
        ...

    async def accounts_after(self, after: str, limit: int) -> list[AccountRecord]:
        """Every client's accounts whose id (as decimal text) follows `after`, in that order, at most
        `limit`: the read model's catch-up walks the whole store with it."""
        ...

    # Transactions.

    async def prepare(self, transactions: Sequence[MappedTransaction]) -> dict[int, Prior]:
        """Step 1 of a batch: what is already stored for these (distinct) transaction ids, and a durable
        intent for every other one, before the engine sees any of them."""
        ...

    async def record_failures(self, failures: Sequence[tuple[int, str]]) -> None:
        """Step 3 of a batch: (transaction id, LedgerError.to_json()) of each refused transaction, durable
        before those callers are answered. A recorded failure is final for its idempotency key, except
        IDEMPOTENCY_KEY_FAILED (a retry met the engine's burned id before the first façade recorded
        why): the original reason, recorded later, replaces it."""
        ...

    async def get_transaction(self, transaction_id: int) -> StoredTransaction | None: ...

    async def metadata_for(self, transfer_ids: Sequence[int]) -> Mapping[int, entries_pb2.EntryMetadata]:
        """Change capture's MetadataSource: the domain metadata of each transfer that has any."""
        ...
