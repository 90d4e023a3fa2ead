"""Start-up and continuous consistency between the engine, the metadata store and the change-capture
checkpoints. A system of record may refuse to start; it may never start with less money than it
acknowledged, nor serve an empty ledger over a full engine.

Instance marker
- Each façade (settings.consistency.instance_name) has a marker: an engine account with a fixed id
  derived from the name (ledger INSTANCE_MARKER_LEDGER, code ACCOUNT_CODE_INSTANCE_MARKER) whose
  user_data_128 is a random instance id, and the same (name, id) row in the metadata store. Both are
  immutable. The first start with both sides empty writes the store's first, then the engine's: a
  crash in between leaves a marked store without data and an unmarked engine, which the next start
  completes.

Start-up (`verify_startup`) refuses; it never rebuilds. The metadata store holds what the engine does
not (idempotency keys, canonical bodies, metadata, recorded failures), so it cannot be rebuilt from the
engine, and the engine (the money) cannot be rebuilt from the store. Cases:

    engine marker  store marker      outcome
    = store's      = engine's        consistent so far; coverage and checkpoints are checked next
    present        absent            the store is missing or new while the engine holds data: refuse
    absent         present, data     the engine's data is missing (or another cluster): refuse
    absent         present, empty    an interrupted first start: the engine marker is written
    differs        differs           the store belongs to another instance: refuse
    absent         absent            first start, or an upgrade from a build without markers: marked
                                     when neither side has data, or both have and the store covers
                                     the engine's; refused when the store has data and the engine none
                                     (lost journal), and when the engine has data and the store none
                                     (lost store), unless (TigerBeetle only) other façades' markers
                                     show a shared cluster this façade is joining, or the operator
                                     says so (consistency.join_unmarked_engine)

On the embedded engine the transaction metadata (intents, fingerprints, bodies, outcomes) is not in the
store's file at all: it is in the engine's journal records (facade.metadata._journal) and its index is
rebuilt in memory from them at every start, so it can be neither deleted nor older than the engine;
what these checks still guard there is the SQLite file's accounts and the marker.

Coverage (exclusive engines only: the embedded engine, which exactly one process owns): the newest
RECENT_OBJECTS_MAX customer accounts and transfers of the engine all have their rows in the store.
The store writes them before the engine ("write last, read first"), so a current store always has
them and an older copy of it does not. On a shared TigerBeetle cluster other façades' objects are not
in this store, so coverage cannot be decided there (that needs the shared metadata store).

Checkpoints: the last change of every change-capture checkpoint (and of the read model) exists in the
engine; a checkpoint ahead of the engine means the engine lost acknowledged changes.

Continuously (`ConsistencyMonitor`): each round, at most ROUND_OBJECTS_MAX engine accounts and
transfers after the previous round's cursor (so all history is covered over time) are matched against
the store (exclusive engines), the marker is re-read, and the checkpoints and the read model's
position are re-checked; every READ_MODEL_RECONCILE_ROUNDS rounds the balances of one slice of the
in-service read model's accounts are reconciled with the engine's (projections.reconcile: lag is not
drift; slices, so a round never holds the read model's process, and the projection, for long). The first
inconsistency found is kept (it does not heal by itself): /readyz fails with its reason and
`ledger_consistency_ok` drops to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from facade.domain.accounts import ACCOUNT_CODE_CUSTOMER, ACCOUNT_CODE_INSTANCE_MARKER, INSTANCE_MARKER_LEDGER
from facade.domain.ids import instance_marker_id
from facade.engine.protocol import Engine
from facade.engine.types import (
    QUERY_LIMIT_MAX,
    Account,
    ChangeEventsFilter,
    CreateAccountStatus,
    QueryFilter,
    QueryFilterFlags,
)
from facade.metadata import InstanceMarkerTakenError, MetadataStore
from facade.metadata_store import QUERY_VARIABLES_MAX
from facade.observability import metrics
from facade.observability.logs import get_logger
from ledger_events import checkpoint as checkpoints

__all__ = [
    "COVERAGE_PAGE_MAX",
    "READ_MODEL_RECONCILE_ROUNDS",
    "RECENT_OBJECTS_MAX",
    "ROUND_OBJECTS_MAX",
    "ConsistencyMonitor",
    "ConsistencyStatus",
    "InstanceMarker",
    "StartupConsistencyError",
    "StartupReport",
    "verify_startup",
]

RECENT_OBJECTS_MAX = QUERY_LIMIT_MAX
"""Newest engine accounts and transfers (each) whose store rows the start-up check requires."""
ROUND_OBJECTS_MAX = QUERY_LIMIT_MAX
"""Engine accounts and transfers (each) matched against the store per continuous round."""
COVERAGE_PAGE_MAX = QUERY_VARIABLES_MAX
"""Objects per engine query and store query while matching: each holds the engine's or the store's
single thread for about a millisecond, so writes interleave (one 8189-id store query takes ~30 ms)."""
READ_MODEL_RECONCILE_ROUNDS = 2
"""The in-service read model is reconciled with the engine on the first round and then every this many
rounds, one slice of the accounts at a time (projections.reconcile.ReconcileSweep: ~0.1 s each)."""
INSTANCE_ID_BITS = 127
"""Random bits of an instance id (never 0, never 2^128-1: ids and user_data the engine accepts)."""

log = get_logger("ledger.consistency")


class StartupConsistencyError(RuntimeError):
    """The engine, the metadata store and the checkpoints disagree: the service refuses to start.
    The message names what is missing or older, where, and what to do."""


@dataclass(frozen=True, slots=True)
class InstanceMarker:
    name: str
    instance_id: int

    @property
    def account_id(self) -> int:
        return instance_marker_id(self.name)


@dataclass(frozen=True, slots=True)
class StartupReport:
    marker: InstanceMarker
    created: bool
    """True when this start wrote the marker (a first start or an upgrade)."""
    accounts_checked: int
    transfers_checked: int
    checkpoints_checked: int


@dataclass(frozen=True, slots=True)
class ConsistencyStatus:
    ok: bool
    reason: str
    """Empty while ok; otherwise the first inconsistency found."""
    rounds: int = 0
    accounts_checked: int = 0
    """Engine customer accounts matched against the store so far (exclusive engines)."""
    transfers_checked: int = 0
    """Engine transfers matched against the store so far (exclusive engines)."""


def is_exclusive(engine: Engine) -> bool:
    """The embedded engine lives in this process: every object in it was written through this store."""
    return engine.name == "embedded"


async def _engine_has_customer_data(engine: Engine) -> bool:
    accounts = await engine.query_accounts(QueryFilter(code=ACCOUNT_CODE_CUSTOMER, limit=1))
    return bool(accounts) or bool(await engine.query_transfers(QueryFilter(limit=1)))


@dataclass(frozen=True, slots=True)
class _Coverage:
    """One page of engine customer accounts and transfers, and which of them the store lacks."""

    missing_account_ids: list[int]
    missing_transfer_ids: list[int]
    accounts_seen: int
    transfers_seen: int
    account_timestamp_max: int
    transfer_timestamp_max: int

    @property
    def complete(self) -> bool:
        return not self.missing_account_ids and not self.missing_transfer_ids

    def describe(self) -> str:
        first = (self.missing_account_ids + self.missing_transfer_ids)[0]
        return (
            f"{len(self.missing_account_ids)} of {self.accounts_seen} engine accounts and "
            f"{len(self.missing_transfer_ids)} of {self.transfers_seen} engine transfers have no metadata rows "
            f"(first: {first})"
        )


class _Stamped(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def timestamp(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Scan:
    missing_ids: list[int]
    seen: int
    cursor: int
    """Forward: the newest timestamp seen (the next scan starts after it); newest-first: the oldest."""


def _page_filter(cursor: int, newest: bool) -> QueryFilter:
    if newest:  # Newest first, before the cursor (0: from the very newest).
        return QueryFilter(timestamp_max=max(cursor - 1, 0), limit=COVERAGE_PAGE_MAX, flags=QueryFilterFlags.REVERSED)
    return QueryFilter(timestamp_min=cursor + 1, limit=COVERAGE_PAGE_MAX)


async def _scan(
    fetch: Callable[[QueryFilter], Awaitable[Sequence[_Stamped]]],
    known: Callable[[list[int]], Awaitable[Collection[int]]],
    *,
    cursor: int,
    count_max: int,
    newest: bool,
) -> _Scan:
    """Up to count_max engine objects from the cursor on, page by page (one engine query and one store
    query per page: neither single-threaded component is held for long), and which lack store rows.
    The engine is read first: a row is written before its object, so every object seen has its row."""
    missing: list[int] = []
    seen = 0
    for _ in range(-(-count_max // COVERAGE_PAGE_MAX)):
        page = await fetch(_page_filter(cursor, newest))
        assert len(page) <= COVERAGE_PAGE_MAX
        if not page:
            break
        found = await known([o.id for o in page])
        missing.extend(o.id for o in page if o.id not in found)
        seen += len(page)
        cursor = page[-1].timestamp
        if len(page) < COVERAGE_PAGE_MAX or (newest and cursor <= 1):
            break
    assert seen <= count_max + COVERAGE_PAGE_MAX
    return _Scan(missing, seen, cursor)


async def _coverage(
    engine: Engine, store: MetadataStore, *, account_cursor: int, transfer_cursor: int, newest: bool
) -> _Coverage:
    """The newest RECENT_OBJECTS_MAX (start-up), or up to ROUND_OBJECTS_MAX after the cursors (rounds)."""
    count_max = RECENT_OBJECTS_MAX if newest else ROUND_OBJECTS_MAX

    async def customer_accounts(page: QueryFilter) -> Sequence[_Stamped]:
        return await engine.query_accounts(replace(page, code=ACCOUNT_CODE_CUSTOMER))

    accounts = await _scan(
        customer_accounts, store.account_owners, cursor=account_cursor, count_max=count_max, newest=newest
    )
    transfers = await _scan(
        engine.query_transfers, store.known_transfers, cursor=transfer_cursor, count_max=count_max, newest=newest
    )
    return _Coverage(
        missing_account_ids=accounts.missing_ids,
        missing_transfer_ids=transfers.missing_ids,
        accounts_seen=accounts.seen,
        transfers_seen=transfers.seen,
        account_timestamp_max=accounts.cursor,
        transfer_timestamp_max=transfers.cursor,
    )


async def _checkpoint_ahead(engine: Engine, timestamp: int) -> bool:
    """A position (a change's engine timestamp) the engine does not hold: it lost acknowledged changes."""
    if timestamp == 0:
        return False
    exact = ChangeEventsFilter(timestamp_min=timestamp, timestamp_max=timestamp, limit=1)
    found = await engine.get_change_events(exact)
    return not found


async def _marker_in_engine(engine: Engine, name: str) -> int | None:
    found = await engine.lookup_accounts([instance_marker_id(name)])
    return found[0].user_data_128 if found else None


async def _write_engine_marker(engine: Engine, marker: InstanceMarker) -> None:
    [result] = await engine.create_accounts(
        [
            Account(
                id=marker.account_id,
                user_data_128=marker.instance_id,
                ledger=INSTANCE_MARKER_LEDGER,
                code=ACCOUNT_CODE_INSTANCE_MARKER,
            )
        ]
    )
    if result.status not in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS):
        raise StartupConsistencyError(
            f"the engine's instance marker for façade {marker.name!r} could not be written "
            f"({result.status.name.lower()}): another façade with the same instance_name started at the same time?"
        )


async def verify_startup(  # noqa: PLR0913  Keyword-only: the parts the check compares and where they live.
    engine: Engine,
    store: MetadataStore,
    *,
    instance_name: str,
    store_path: Path | str,
    checkpoint_paths: Sequence[Path],
    join_unmarked_engine: bool = False,
) -> StartupReport:
    """Refuses (StartupConsistencyError) unless engine, store and checkpoints agree; see the module
    docstring. Writes the instance marker on a first start. Bounded: a few engine queries of at most
    RECENT_OBJECTS_MAX objects and one store query per QUERY_VARIABLES_MAX ids."""
    assert instance_name
    engine_id = await _marker_in_engine(engine, instance_name)
    stored = await store.instance_marker()
    store_has_data = await store.has_data()
    where = f"metadata store {store_path}"
    if stored is not None and stored[0] != instance_name:
        raise StartupConsistencyError(
            f"{where} belongs to façade {stored[0]!r}, this façade is {instance_name!r}: point "
            "consistency.instance_name or api.metadata_db at the right one"
        )
    if engine_id is not None and stored is None:
        raise StartupConsistencyError(
            f"{where} is missing or new (no instance marker) but the engine ({engine.name}) holds the data of "
            f"façade {instance_name!r} (instance {engine_id:032x}): refusing to serve the ledger without its "
            "metadata and idempotency records. Restore the store file (with its -wal file) from where it was, "
            "or point api.metadata_db at it"
            + (
                ""
                if is_exclusive(engine)
                else f"; if this is another façade with its own store, give it its own consistency.instance_name "
                f"(not {instance_name!r})"
            )
        )
    if engine_id is not None and stored is not None and engine_id != stored[1]:
        raise StartupConsistencyError(
            f"{where} belongs to instance {stored[1]:032x} but the engine's marker for façade {instance_name!r} "
            f"is instance {engine_id:032x}: the store (or the engine) is another deployment's"
        )
    if engine_id is None and stored is not None and store_has_data:
        raise StartupConsistencyError(
            f"the engine ({engine.name}) has no data of instance {stored[1]:032x}, but {where} records "
            "accounts and transactions of it: the engine's data is missing (journal directory deleted or "
            "replaced, or the wrong cluster). Refusing to start with less money than was acknowledged: "
            "restore the engine's data"
        )
    marker: InstanceMarker
    if engine_id is None and stored is None:
        engine_has_data = await _engine_has_customer_data(engine)
        if store_has_data and not engine_has_data:
            raise StartupConsistencyError(
                f"the engine ({engine.name}) holds no accounts or transfers, but {where} records accounts and "
                "transactions (written by a build without instance markers): the engine's data is missing "
                "(journal directory deleted or replaced, or the wrong cluster). Refusing to start with less "
                "money than was acknowledged: restore the engine's data"
            )
        if engine_has_data and not store_has_data:
            others = await engine.query_accounts(QueryFilter(code=ACCOUNT_CODE_INSTANCE_MARKER, limit=1))
            joining = not is_exclusive(engine) and (bool(others) or join_unmarked_engine)
            if not joining:
                raise StartupConsistencyError(
                    f"{where} is missing or new (empty) but the engine ({engine.name}) holds accounts and "
                    "transfers: refusing to serve the ledger without its metadata and idempotency records. "
                    "Restore the store file (with its -wal file), or point api.metadata_db at it"
                    + (
                        ""
                        if is_exclusive(engine)
                        else " (a new façade on a shared cluster whose data predates "
                        "instance markers: consistency.join_unmarked_engine)"
                    )
                )
        marker = InstanceMarker(instance_name, secrets.randbits(INSTANCE_ID_BITS) | 1)
        try:
            await store.put_instance_marker(marker.name, marker.instance_id)  # Store first: see the docstring.
        except InstanceMarkerTakenError:
            # Façades sharing one store started together and each found it unmarked: the first marker
            # stands and this façade joins it (the same deployment), or refuses if it is another's.
            raced = await store.instance_marker()
            if raced is None or raced[0] != instance_name:
                raise StartupConsistencyError(
                    f"{where} was just marked by façade {raced[0] if raced else None!r}, this façade is "
                    f"{instance_name!r}: façades sharing a store use one consistency.instance_name"
                ) from None
            marker = InstanceMarker(instance_name, raced[1])
        created = True
    else:
        assert stored is not None
        marker = InstanceMarker(instance_name, stored[1])
        # Engine marker absent here only after an interrupted first start (a marked store without data).
        created = engine_id is None
    accounts_checked = transfers_checked = 0
    if is_exclusive(engine):
        coverage = await _coverage(engine, store, account_cursor=0, transfer_cursor=0, newest=True)
        if not coverage.complete:
            raise StartupConsistencyError(
                f"{where} is older than the engine's data: of the newest engine objects, {coverage.describe()}. "
                "The store was restored from an older copy (or lost writes); restore the current one (with its "
                "-wal file)"
            )
        accounts_checked, transfers_checked = coverage.accounts_seen, coverage.transfers_seen
    for path in checkpoint_paths:
        position = checkpoints.load(path).timestamp_last
        if await _checkpoint_ahead(engine, position):
            raise StartupConsistencyError(
                f"change-capture checkpoint {path} is at engine timestamp {position}, a change the engine "
                f"({engine.name}) does not hold: the engine lost acknowledged changes. Restore the engine's data"
            )
    if created:
        await _write_engine_marker(engine, marker)
    assert await _marker_in_engine(engine, instance_name) == marker.instance_id
    log.info("consistent at start-up", instance_name=instance_name, instance_id=f"{marker.instance_id:032x}")
    return StartupReport(marker, created, accounts_checked, transfers_checked, len(checkpoint_paths))


class ConsistencyMonitor:
    """The continuous check (see the module docstring). `status` is what /readyz reads."""

    def __init__(  # noqa: PLR0913  Keyword-only: the parts the check compares and how often.
        self,
        engine: Engine,
        store: MetadataStore,
        *,
        marker: InstanceMarker,
        checkpoint_paths: Sequence[Path],
        read_model_position: Callable[[], Awaitable[int]] | None,
        read_model_drift: Callable[[], Awaitable[str]] | None = None,
        interval_seconds: float,
    ) -> None:
        assert interval_seconds > 0
        self._engine = engine
        self._store = store
        self._marker = marker
        self._checkpoint_paths = list(checkpoint_paths)
        self._read_model_position = read_model_position
        self._read_model_drift = read_model_drift
        """The read model's reconciliation with the engine: "" when they agree, else the drift."""
        self._interval_seconds = interval_seconds
        self._account_cursor = 0
        self._transfer_cursor = 0
        """Engine timestamps up to which every object was matched against the store."""
        self._accounts_checked = 0
        self._transfers_checked = 0
        self.status = ConsistencyStatus(ok=True, reason="")
        self._round_lock = asyncio.Lock()
        """One round at a time (the background task and an explicit call share the cursors)."""
        metrics.consistency_ok.set(1)

    async def check(self) -> None:
        """The readiness check: raises with the reason once an inconsistency was found."""
        if not self.status.ok:
            raise RuntimeError(self.status.reason)

    async def _inconsistency(self) -> str:
        """One bounded round; returns the inconsistency found, or "" (and advances the cursors)."""
        engine_id = await _marker_in_engine(self._engine, self._marker.name)
        if engine_id != self._marker.instance_id:
            return (
                f"the engine's instance marker for façade {self._marker.name!r} is "
                f"{'missing' if engine_id is None else f'{engine_id:032x}'}, the store's is "
                f"{self._marker.instance_id:032x}: the engine was replaced or reset"
            )
        if is_exclusive(self._engine):
            coverage = await _coverage(
                self._engine,
                self._store,
                account_cursor=self._account_cursor,
                transfer_cursor=self._transfer_cursor,
                newest=False,
            )
            if not coverage.complete:
                return f"{coverage.describe()}: the metadata store lost writes"
            self._accounts_checked += coverage.accounts_seen
            self._transfers_checked += coverage.transfers_seen
            assert coverage.account_timestamp_max >= self._account_cursor
            self._account_cursor = coverage.account_timestamp_max
            self._transfer_cursor = coverage.transfer_timestamp_max
        for path in self._checkpoint_paths:
            position = checkpoints.load(path).timestamp_last
            if await _checkpoint_ahead(self._engine, position):
                return f"checkpoint {path} is at {position}, a change the engine does not hold"
        if self._read_model_position is not None:
            position = await self._read_model_position()
            if await _checkpoint_ahead(self._engine, position):
                return f"the read model is projected to {position}, a change the engine does not hold"
        if self._read_model_drift is not None and self.status.rounds % READ_MODEL_RECONCILE_ROUNDS == 0:
            return await self._read_model_drift()
        return ""

    async def check_round(self) -> ConsistencyStatus:
        async with self._round_lock:
            return await self._check_round()

    async def _check_round(self) -> ConsistencyStatus:
        if not self.status.ok:
            return self.status  # An inconsistency does not heal by itself.
        reason = await self._inconsistency()
        self.status = ConsistencyStatus(
            ok=not reason,
            reason=reason,
            rounds=self.status.rounds + 1,
            accounts_checked=self._accounts_checked,
            transfers_checked=self._transfers_checked,
        )
        metrics.consistency_ok.set(1 if self.status.ok else 0)
        metrics.consistency_rounds_total.labels("ok" if self.status.ok else "inconsistent").inc()
        if reason:
            log.error("inconsistency detected", reason=reason)
        return self.status

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until `stop` is set. A round that fails (engine or store unavailable) is counted and
        retried next interval; those outages are readiness's engine check's business, not an inconsistency."""
        while not stop.is_set():
            try:
                await self.check_round()
            except Exception as error:  # Any failure to check is "not checked", never "consistent".
                metrics.consistency_rounds_total.labels("error").inc()
                log.warning("consistency round failed", error=f"{type(error).__name__}: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_seconds)
