"""The ledger service: the transport-independent core behind gRPC, HTTP and Kafka ingestion.

Writes: validate and map (facade.domain.transactions) → group commit (facade.batcher, which also decides
idempotency against the metadata store, once per batch) → outcome. Reads go to the engine first
(strongly consistent; it alone knows whether a transaction committed) and to the metadata store for
what the engine does not hold.

Tenancy: every account belongs to the client that created it (the authenticated principal's
client id). Reads of another client's account answer NOT_FOUND, exactly as for a missing one.
Ownership fails closed and lives in the engine: a customer account's user_data_128 is the hash of
its owner (facade.domain.ids.account_owner), so every façade on one engine cluster, and a façade
whose metadata store is new, sees the same owner. An account whose owner is unknown (missing, or
created before owners were carried and unknown to the local store) is nobody's but an admin's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import prometheus_client

from facade.auth import SCOPE_ADMIN, Principal
from facade.batcher import Committed, DeadlineExceededError, GroupCommitter, QueueFullError, wait_all
from facade.domain.accounts import (
    ACCOUNT_CODE_CUSTOMER,
    ACCOUNT_CODE_SETTLEMENT,
    AccountRequest,
    Currencies,
    customer_account_flags,
    fingerprint,
)
from facade.domain.errors import ErrorKind, LedgerError, invalid
from facade.domain.ids import account_id, account_owner, settlement_account_id, transaction_id
from facade.domain.transactions import (
    MappedTransaction,
    ResolveRequest,
    decode_transaction,
    map_post,
    map_resolution,
)
from facade.domain.transactions import (
    PostRequest as PostRequest,  # noqa: PLC0414  Re-exported for the edges until core's operations layer.
)
from facade.domain.validation import (
    EXTERNAL_REFERENCE_LENGTH_MAX,
    OWNER_LENGTH_MAX,
    parse_id,
    validate_map,
    validate_text,
)
from facade.engine.protocol import Engine, EngineFault, EngineUnavailableError
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateAccountStatus,
    Transfer,
    TransferFlags,
)
from facade.metadata import AccountRecord, MetadataStore, StoredTransaction
from facade.observability import metrics
from facade.observability.logs import get_logger
from facade.settings import ApiSettings
from facade.write_limit import WriteLimit

log = get_logger("ledger.service")

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
BATCH_TRANSACTIONS_MAX = 1000
"""Transactions per PostTransactions call."""
MAP_IN_THREAD_TRANSACTIONS_MIN = 64
"""Batches at least this large are mapped in a worker thread: mapping a thousand transactions on the
event loop would hold it for tens of milliseconds, and every other call (and grpc's accepting of new
calls, one per loop turn) would wait that long."""

ACCOUNT_TYPE_NO_OVERDRAFT = 1
ACCOUNT_TYPE_OVERDRAFT_ALLOWED = 2
OWNERS_CACHED_MAX = 1 << 20
"""Accounts whose owner hash is cached (16 bytes + dict overhead each, ~200 MiB at most); the oldest
entry is evicted first. Ownership is immutable, so a cached owner never goes stale."""
OWNER_UNKNOWN = 0
"""user_data_128 of accounts created before owners were carried in the engine."""


@dataclass(frozen=True, slots=True)
class TransactionView:
    transaction: MappedTransaction
    committed_at_ns: int
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class AccountView:
    record: AccountRecord
    account: Account


@dataclass(frozen=True, slots=True)
class EntryView:
    transfer: Transfer
    account_id: int
    currency: str
    status: str  # "posted" | "authorized" | "voided"


@dataclass(frozen=True, slots=True)
class EntriesQuery:
    """One page of an account's entries (LedgerService.list_account_entries)."""

    account_id_text: str
    page_size: int
    """0: PAGE_SIZE_DEFAULT; at most PAGE_SIZE_MAX."""
    page_token: str
    """Empty for the first page; else the previous page's next_page_token."""
    from_ns: int
    """Engine timestamps, inclusive; 0 = unbounded."""
    to_ns: int
    descending: bool


ENGINE_FAULT_MESSAGES = {
    EngineFault.UNAVAILABLE: "the ledger cannot record writes right now; retry later",
    EngineFault.STORAGE_FULL: "the ledger's storage is full: writes resume when space returns; retry later",
    EngineFault.STORAGE_FAILED: "the ledger's storage failed: writes wait for an operator; reads still work",
}
ENGINE_UNAVAILABLE_LOG_INTERVAL_SECONDS = 1.0
"""At most one log line per interval while the engine refuses writes: a refused batch is not log spam."""
_engine_unavailable_logged_at = -math.inf


def _log_engine_unavailable(error: EngineUnavailableError) -> None:
    global _engine_unavailable_logged_at  # noqa: PLW0603 - one rate limit for the process.
    now = time.monotonic()
    if now - _engine_unavailable_logged_at >= ENGINE_UNAVAILABLE_LOG_INTERVAL_SECONDS:
        _engine_unavailable_logged_at = now
        log.warning("engine refused writes", reason=str(error))


class LedgerService:
    def __init__(self, engine: Engine, store: MetadataStore, settings: ApiSettings) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.currencies = Currencies(dict(settings.currencies))
        self.committer = GroupCommitter(
            engine,
            store,
            queue_transfers_max=settings.write_queue_transfers_max,
            batch_transfers_max=settings.batch_transfers_max,
            queue_wait_seconds_max=settings.write_queue_wait_ms_max / 1000,
            retry_after_seconds_min=settings.retry_after_ms / 1000,
            batch_seconds_max=settings.write_batch_ms_max / 1000,
        )
        self.write_limit = WriteLimit(bulk_max=settings.bulk_in_flight_max)
        """Writes in progress at the edges' doors (facade.write_limit), shared by gRPC and the gateway."""
        self._settlement_ids = frozenset(settlement_account_id(code) for code in self.currencies.by_code)
        self._owners: dict[int, int] = {}
        """account id → owner hash (account_owner), read from the engine: ownership never changes, so a
        known owner is cached (at most OWNERS_CACHED_MAX, oldest evicted; a miss costs one batched
        engine lookup per call). Missing accounts and unknown owners are not cached."""
        self.account_created: Callable[[AccountView], None] | None = None
        """Told of each account once the engine holds it (the read model's account feed, set by the
        composition root); must not block. Also told on an idempotent repeat: the listener dedups."""

    async def start(self) -> None:
        """Creates each currency's settlement account (idempotently) and starts group commit."""
        accounts = [
            Account(id=settlement_account_id(code), ledger=c.ledger, code=ACCOUNT_CODE_SETTLEMENT)
            for code, c in self.currencies.by_code.items()
        ]
        results = await self.engine.create_accounts(accounts)
        for account, result in zip(accounts, results, strict=True):
            if result.status not in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS):
                raise RuntimeError(f"settlement account {account.id}: {result.status.name}")
        self.committer.start()

    async def close(self) -> None:
        await self.committer.close()

    # ------------------------------------------------------------------------------------------
    # Accounts.

    async def create_account(self, principal: Principal, request: AccountRequest) -> AccountView:
        currency, external_reference, owner = request.currency, request.external_reference, request.owner
        account_type, metadata = request.account_type, request.metadata
        validate_text(external_reference, "external_reference", length_max=EXTERNAL_REFERENCE_LENGTH_MAX, required=True)
        validate_text(owner, "owner", length_max=OWNER_LENGTH_MAX)
        validate_map(metadata, "metadata")
        ledger = self.currencies.get(currency).ledger
        if account_type not in (ACCOUNT_TYPE_NO_OVERDRAFT, ACCOUNT_TYPE_OVERDRAFT_ALLOWED):
            raise invalid("INVALID_ACCOUNT_TYPE", "type must be NO_OVERDRAFT or OVERDRAFT_ALLOWED")
        new_id = account_id(principal.client_id, external_reference)
        record = AccountRecord(
            new_id,
            principal.client_id,
            external_reference,
            currency,
            owner,
            account_type,
            metadata,
            fingerprint({"currency": currency, "owner": owner, "type": account_type, "metadata": metadata}),
        )
        reused = LedgerError(
            ErrorKind.CONFLICT,
            "ACCOUNT_REFERENCE_REUSED",
            "an account with this external_reference exists with different attributes",
        )
        flags = customer_account_flags(account_type == ACCOUNT_TYPE_NO_OVERDRAFT)
        # Read first: the account may exist already, created through another façade (whose store this
        # one does not share); a record with other attributes must not enter this store.
        existing = await self.engine.lookup_accounts([new_id])
        if existing and (existing[0].ledger != ledger or existing[0].flags != flags):
            raise reused
        stored = await self.store.put_account(record)  # Metadata first: write last, read first.
        if stored.fingerprint != record.fingerprint:
            raise reused
        owner_hash = account_owner(principal.client_id)
        [result] = await self.engine.create_accounts(
            [Account(id=new_id, user_data_128=owner_hash, ledger=ledger, code=ACCOUNT_CODE_CUSTOMER, flags=flags)]
        )
        if result.status not in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS) and not (
            result.status is CreateAccountStatus.EXISTS_WITH_DIFFERENT_USER_DATA_128
            and await self._legacy_account(new_id)
        ):
            raise LedgerError(ErrorKind.INTERNAL, "ACCOUNT_CREATE_FAILED", result.status.name.lower())
        view = await self.get_account(principal, str(new_id))
        if self.account_created is not None:
            self.account_created(view)  # After this point the account exists in the engine and the store.
        return view

    async def _legacy_account(self, account_id_value: int) -> bool:
        """An account created before owners were carried in the engine (user_data_128 = 0): re-creating
        it is idempotent (the store just matched its attributes); the engine account stays immutable."""
        found = await self.engine.lookup_accounts([account_id_value])
        return bool(found) and found[0].user_data_128 == OWNER_UNKNOWN

    async def _account_owners(self, account_ids: Sequence[int]) -> dict[int, int]:
        """The owner hash of each existing account among `account_ids`; OWNER_UNKNOWN when the engine
        carries none and the local store does not know it. Missing accounts are absent."""
        owners = {a: self._owners[a] for a in account_ids if a in self._owners}
        missing = [a for a in account_ids if a not in owners]
        legacy: list[int] = []
        for start in range(0, len(missing), BATCH_EVENTS_MAX):
            for account in await self.engine.lookup_accounts(missing[start : start + BATCH_EVENTS_MAX]):
                owners[account.id] = account.user_data_128
                if account.user_data_128 == OWNER_UNKNOWN:
                    legacy.append(account.id)
        if legacy:
            # Accounts from before owners were carried: the local store may know them; if not, they
            # stay OWNER_UNKNOWN (admin only). A store's owner is as immutable as the engine's.
            for legacy_id, client_id in (await self.store.account_owners(legacy)).items():
                owners[legacy_id] = account_owner(client_id)
        for found_id in missing:
            owner_hash = owners.get(found_id, OWNER_UNKNOWN)
            if owner_hash != OWNER_UNKNOWN:
                if len(self._owners) >= OWNERS_CACHED_MAX:
                    del self._owners[next(iter(self._owners))]
                self._owners[found_id] = owner_hash
        assert len(self._owners) <= OWNERS_CACHED_MAX
        return owners

    async def _owned_account(self, principal: Principal, account_id_text: str) -> AccountRecord:
        """The account's record, if the caller may see it. The local store's record when it has one;
        otherwise (an account created through another façade, or a store that is new) a record made
        from what the engine holds, for the owner by the engine's owner hash (or an admin): currency
        and type, without the external reference, owner label and metadata the engine does not keep."""
        requested = parse_id(account_id_text, "account_id")
        admin = SCOPE_ADMIN in principal.scopes
        record = await self.store.get_account(requested)
        if record is not None:
            if record.client_id != principal.client_id and not admin:
                raise LedgerError(ErrorKind.NOT_FOUND, "ACCOUNT_NOT_FOUND", "no such account")
            return record
        found = await self.engine.lookup_accounts([requested])
        if not found or found[0].code != ACCOUNT_CODE_CUSTOMER:
            raise LedgerError(ErrorKind.NOT_FOUND, "ACCOUNT_NOT_FOUND", "no such account")
        account = found[0]
        mine = account.user_data_128 == account_owner(principal.client_id)
        if not mine and not admin:
            raise LedgerError(ErrorKind.NOT_FOUND, "ACCOUNT_NOT_FOUND", "no such account")
        account_type = ACCOUNT_TYPE_NO_OVERDRAFT if is_no_overdraft(account) else ACCOUNT_TYPE_OVERDRAFT_ALLOWED
        currency = self.currencies.code_of_ledger(account.ledger)
        # The client is the caller's own when the owner hash says so; an admin reading a foreign
        # account learns only that its owner is not the admin (the hash is one-way).
        return AccountRecord(requested, principal.client_id if mine else "", "", currency, "", account_type, {}, "")

    async def get_account(self, principal: Principal, account_id_text: str) -> AccountView:
        record = await self._owned_account(principal, account_id_text)
        accounts = await self.engine.lookup_accounts([record.account_id])
        if not accounts:
            # Metadata is written first; the engine create may not have happened (crash in between).
            raise LedgerError(ErrorKind.NOT_FOUND, "ACCOUNT_NOT_FOUND", "no such account")
        return AccountView(record, accounts[0])

    async def list_accounts(
        self, principal: Principal, page_size: int, page_token: str, currency: str
    ) -> tuple[list[AccountView], str]:
        size = _page_size(page_size)
        records = await self.store.list_accounts(principal.client_id, page_token, size + 1, currency)
        more = len(records) > size
        records = records[:size]
        accounts = {a.id: a for a in await self.engine.lookup_accounts([r.account_id for r in records])}
        views = [AccountView(r, accounts[r.account_id]) for r in records if r.account_id in accounts]
        return views, (str(records[-1].account_id) if more else "")

    # ------------------------------------------------------------------------------------------
    # Transactions.

    async def post_transactions(
        self, principal: Principal, requests: Sequence[PostRequest], deadline: float | None = None
    ) -> list[TransactionView | LedgerError]:
        if len(requests) > BATCH_TRANSACTIONS_MAX:
            raise invalid("BATCH_TOO_LARGE", f"at most {BATCH_TRANSACTIONS_MAX} transactions per call")
        if len(requests) >= MAP_IN_THREAD_TRANSACTIONS_MIN:
            mapped = await asyncio.to_thread(self._map_posts, principal, requests)
        else:
            mapped = self._map_posts(principal, requests)
        return await self._submit(await self._owned_legs(principal, mapped), deadline)

    def _map_posts(
        self, principal: Principal, requests: Sequence[PostRequest]
    ) -> list[MappedTransaction | LedgerError]:
        """Pure (no I/O, no shared mutable state): safe in a worker thread."""
        mapped: list[MappedTransaction | LedgerError] = []
        for request in requests:
            try:
                mapped.append(map_post(principal.client_id, request, currencies=self.currencies))
            except LedgerError as error:
                mapped.append(error)
        assert len(mapped) == len(requests)
        return mapped

    def admit(self, transfers: int, deadline: float | None = None) -> None:
        """Refuses (RESOURCE_EXHAUSTED, with a retry hint) work that could not commit in time, before an
        edge spends time parsing or mapping it. `transfers` may be an estimate (one per leg)."""
        try:
            self.committer.admit(transfers, deadline)
        except QueueFullError as error:
            raise queue_full(error) from error
        except DeadlineExceededError as error:
            raise LedgerError(ErrorKind.DEADLINE, "DEADLINE_EXCEEDED", str(error)) from error

    async def _owned_legs(
        self, principal: Principal, mapped: list[MappedTransaction | LedgerError]
    ) -> list[MappedTransaction | LedgerError]:
        """A client moves money only between its own accounts (and the settlement accounts); ledger.admin
        may move any. Another client's account is answered exactly like a missing one (ACCOUNT_NOT_FOUND),
        so ids reveal nothing. Checked before anything is queued, so a refused transaction writes nothing."""
        if SCOPE_ADMIN in principal.scopes:
            return mapped
        accounts = {
            account_id
            for transaction in mapped
            if isinstance(transaction, MappedTransaction)
            for leg in transaction.legs
            for account_id in (leg.debit_account_id, leg.credit_account_id)
        } - self._settlement_ids
        # Fail closed: a missing account, an unknown owner and another client's owner all refuse.
        owners = await self._account_owners(sorted(accounts))
        caller = account_owner(principal.client_id)
        checked: list[MappedTransaction | LedgerError] = []
        for transaction in mapped:
            if isinstance(transaction, MappedTransaction) and any(
                owners.get(account_id, OWNER_UNKNOWN) != caller
                for leg in transaction.legs
                for account_id in (leg.debit_account_id, leg.credit_account_id)
                if account_id not in self._settlement_ids
            ):
                checked.append(LedgerError(ErrorKind.NOT_FOUND, "ACCOUNT_NOT_FOUND", "no such account"))
            else:
                checked.append(transaction)
        return checked

    async def resolve_authorization(
        self, principal: Principal, authorization_id_text: str, request: ResolveRequest, deadline: float | None = None
    ) -> TransactionView:
        stored = await self._stored_transaction(principal, parse_id_hex(authorization_id_text))
        if stored is None:
            raise LedgerError(ErrorKind.NOT_FOUND, "AUTHORIZATION_NOT_FOUND", "no such authorization")
        if stored.failure is not None:
            raise LedgerError(
                ErrorKind.PRECONDITION, "AUTHORIZATION_NOT_COMMITTED", "the authorization did not succeed"
            )
        # An authorization that never reached the engine fails in it: PENDING_TRANSFER_NOT_FOUND.
        authorization = decode_transaction(stored.client_id, stored.idempotency_key, stored.body)
        mapped = map_resolution(principal.client_id, request, authorization=authorization)
        [result] = await self._submit([mapped], deadline)
        if isinstance(result, LedgerError):
            raise result
        return result

    async def _submit(
        self, mapped: list[MappedTransaction | LedgerError], deadline: float | None
    ) -> list[TransactionView | LedgerError]:
        results: list[TransactionView | LedgerError] = []
        valid = [m for m in mapped if isinstance(m, MappedTransaction)]
        outcomes: list[object] = []
        if valid:
            try:
                futures = self.committer.submit(valid, deadline)
            except QueueFullError as error:
                raise queue_full(error) from error
            except DeadlineExceededError as error:
                raise LedgerError(ErrorKind.DEADLINE, "DEADLINE_EXCEEDED", str(error)) from error
            try:
                outcomes = list(await wait_all(futures))
            except asyncio.CancelledError:
                # The caller gave up (its RPC was cancelled or its deadline passed): what is still queued
                # is dropped, so nothing is committed for a caller who will never see the answer.
                self.committer.abandon(futures)
                raise
        outcomes.reverse()
        counts: dict[tuple[str, str], int] = {}
        # Committed ones, the common case, are counted here and labelled once below (no label per transaction).
        created = deduplicated = 0
        for item in mapped:
            result: TransactionView | LedgerError
            if isinstance(item, LedgerError):
                result = item
            else:
                outcome = outcomes.pop()
                if isinstance(outcome, Committed):
                    if outcome.deduplicated:
                        deduplicated += 1
                    else:
                        created += 1
                    results.append(TransactionView(item, outcome.timestamp, outcome.deduplicated))
                    continue
                if isinstance(outcome, LedgerError):
                    result = outcome
                elif isinstance(outcome, DeadlineExceededError):
                    result = LedgerError(ErrorKind.DEADLINE, "DEADLINE_EXCEEDED", str(outcome))
                elif isinstance(outcome, EngineUnavailableError):
                    # The engine's reason names files and OS errors: for the operator's log, not the caller.
                    _log_engine_unavailable(outcome)
                    result = LedgerError(
                        ErrorKind.UNAVAILABLE, outcome.fault.value, ENGINE_FAULT_MESSAGES[outcome.fault]
                    )
                else:
                    assert isinstance(outcome, BaseException)
                    raise outcome
            label = ("rejected", result.reason)
            counts[label] = counts.get(label, 0) + 1
            results.append(result)
        if created:
            counts["created", ""] = created
        if deduplicated:
            counts["deduplicated", ""] = deduplicated
        assert not outcomes
        assert len(results) == len(mapped) == sum(counts.values())
        for (outcome_label, reason), count in counts.items():
            _transactions_metric(outcome_label, reason).inc(count)
            if outcome_label == "deduplicated":
                metrics.deduplicated_requests_total.inc(count)
        return results

    async def _stored_transaction(self, principal: Principal, tx_id: int) -> StoredTransaction | None:
        stored = await self.store.get_transaction(tx_id)
        return stored if stored is not None and stored.client_id == principal.client_id else None

    async def get_transaction(
        self, principal: Principal, transaction_id_text: str, idempotency_key: str
    ) -> TransactionView:
        if idempotency_key:
            tx_id = transaction_id(principal.client_id, idempotency_key)
        else:
            tx_id = parse_id_hex(transaction_id_text)
        stored = await self._stored_transaction(principal, tx_id)
        if stored is not None and stored.failure is None:
            transaction = decode_transaction(stored.client_id, stored.idempotency_key, stored.body)
            # Read first: the engine says whether (and when) the intent was committed.
            found = await self.engine.lookup_transfers([transaction.transfers[0].id])
            if found:
                return TransactionView(transaction, found[0].timestamp, deduplicated=False)
        raise LedgerError(ErrorKind.NOT_FOUND, "TRANSACTION_NOT_FOUND", "no such transaction")

    async def list_account_entries(self, principal: Principal, query: EntriesQuery) -> tuple[list[EntryView], str]:
        descending = query.descending
        record = await self._owned_account(principal, query.account_id_text)
        size = _page_size(query.page_size)
        cursor = _decode_cursor(query.page_token)
        timestamp_min, timestamp_max = query.from_ns, query.to_ns
        if cursor:
            if descending:
                timestamp_max = cursor - 1
            else:
                timestamp_min = cursor + 1
        if timestamp_max and timestamp_min > timestamp_max:
            return [], ""
        flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
        if descending:
            flags |= AccountFilterFlags.REVERSED
        transfers = await self.engine.get_account_transfers(
            AccountFilter(
                account_id=record.account_id,
                timestamp_min=timestamp_min,
                timestamp_max=timestamp_max,
                limit=size + 1,
                flags=flags,
            )
        )
        more = len(transfers) > size
        transfers = transfers[:size]
        entries = [EntryView(t, record.account_id, record.currency, _entry_status(t)) for t in transfers]
        return entries, (_encode_cursor(transfers[-1].timestamp) if more else "")

    async def balances(self, principal: Principal, account_id_text: str) -> AccountView:
        return await self.get_account(principal, account_id_text)


TRANSACTIONS_METRICS_CACHED_MAX = 1024
"""Children of ledger_transactions_total kept at hand (outcome and reason pairs: a few dozen reasons exist)."""
_TRANSACTIONS_METRICS: dict[tuple[str, str], prometheus_client.Counter] = {}


def _transactions_metric(outcome_label: str, reason: str) -> prometheus_client.Counter:
    """ledger_transactions_total's child for the labels: `labels()` takes a lock and hashes, once per call."""
    key = (outcome_label, reason)
    child = _TRANSACTIONS_METRICS.get(key)
    if child is None:
        child = metrics.transactions_total.labels(outcome_label, reason)
        if len(_TRANSACTIONS_METRICS) < TRANSACTIONS_METRICS_CACHED_MAX:
            _TRANSACTIONS_METRICS[key] = child
    assert len(_TRANSACTIONS_METRICS) <= TRANSACTIONS_METRICS_CACHED_MAX
    return child


def queue_full(error: QueueFullError) -> LedgerError:
    retry_after_ms = max(1, math.ceil(error.retry_after_seconds * 1000))
    return LedgerError(ErrorKind.EXHAUSTED, "WRITE_QUEUE_FULL", str(error), {"retry_after_ms": str(retry_after_ms)})


def parse_id_hex(text: str) -> int:
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise invalid("INVALID_ID", "transaction ids are 32 lowercase hex digits", field="transaction_id")
    return int(text, 16)


def _entry_status(t: Transfer) -> str:
    if t.flags & TransferFlags.PENDING:
        return "authorized"
    if t.flags & TransferFlags.VOID_PENDING_TRANSFER:
        return "voided"
    return "posted"


def _page_size(requested: int) -> int:
    if requested == 0:
        return PAGE_SIZE_DEFAULT
    return min(requested, PAGE_SIZE_MAX)


def _encode_cursor(timestamp: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"ts": timestamp}).encode()).decode()


def _decode_cursor(token: str) -> int:
    if not token:
        return 0
    try:
        timestamp = json.loads(base64.urlsafe_b64decode(token.encode()))["ts"]
    except (ValueError, KeyError, TypeError) as error:
        raise invalid("INVALID_PAGE_TOKEN", "page_token is not a token this service issued") from error
    if not isinstance(timestamp, int) or timestamp <= 0:
        raise invalid("INVALID_PAGE_TOKEN", "page_token is not a token this service issued")
    return timestamp


def deadline_from_timeout(timeout_seconds: float | None) -> float | None:
    return None if timeout_seconds is None else time.monotonic() + timeout_seconds


def is_no_overdraft(account: Account) -> bool:
    return bool(account.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
