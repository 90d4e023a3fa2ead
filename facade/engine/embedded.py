"""The embedded engine: TigerBeetle's semantics in-process, durable on one machine.

`EmbeddedLedger` is the synchronous core: the state machine plus its journal. A write operation
    1. encodes the batch to TigerBeetle's binary layout (this also validates every field width),
    2. decodes it back and applies exactly those bytes' events to the state machine (so what runs is
       exactly what is journaled, and replay is exact),
    3. appends one journal record (plus a pulse record if pending transfers expired) and fdatasyncs,
    4. only then returns the results.
A batch that changed nothing (every event failed without burning an id, or every event `exists`)
is not journaled: an idempotent retry costs no fsync.

If the journal write fails, the in-memory state is ahead of the disk: the ledger marks itself failed
and refuses every further call; a restart recovers from the journal (TigerBeetle crashes in that
situation for the same reason: after a failed fsync the page cache cannot be trusted).

`EmbeddedEngine` is the async Engine: every operation, read or write, runs on one dedicated thread,
in arrival order. That single writer gives linearizability for free: a read issued after an
acknowledged write runs after it, and no read can observe a batch before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from facade.engine.codec import decode_accounts, decode_transfers, encode_accounts, encode_transfers
from facade.engine.journal import Journal, Operation, Record, encode_record
from facade.engine.protocol import EngineUnavailableError
from facade.engine.state_machine import StateMachine
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    ChangeEvent,
    ChangeEventsFilter,
    CreateAccountResult,
    CreateTransferResult,
    QueryFilter,
    TooMuchDataError,
    Transfer,
    validate_ids,
)
from facade.observability import metrics

PULSE_INTERVAL_SECONDS = 0.1
"""How often the engine checks for expired pending transfers when no writes arrive."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _results_checksum(statuses: Sequence[int]) -> int:
    return zlib.crc32(array("I", statuses).tobytes())


class JournalReplayError(RuntimeError):
    """Replaying the journal produced different results than were acknowledged: the state machine's
    semantics changed under existing data. Refuse to serve rather than post different money."""


class EmbeddedLedger:
    """The synchronous core. One thread at a time (the engine's writer thread)."""

    def __init__(self, journal: Journal, state: StateMachine, clock: Callable[[], int]) -> None:
        self._journal = journal
        self.state = state
        self._clock = clock
        self._failed: BaseException | None = None

    @classmethod
    def open(cls, directory: Path, clock: Callable[[], int] = time.time_ns) -> EmbeddedLedger:
        journal, records = Journal.open(directory)
        state = StateMachine()
        try:
            for record in records:
                _replay(state, record)
            state.check_invariants()
        except BaseException:
            journal.close()
            raise
        return cls(journal, state, clock)

    @property
    def journal_size(self) -> int:
        return self._journal.size

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise EngineUnavailableError(f"engine failed and must be restarted: {self._failed!r}")

    def _pulse_record(self, realtime_ns: int) -> bytes | None:
        next_expiry = self.state.next_expiry()
        if next_expiry is None or next_expiry > realtime_ns:
            return None
        expired = self.state.pulse(realtime_ns)
        assert expired > 0
        return encode_record(self._journal.next_op(), Operation.PULSE, realtime_ns, expired, 0, b"")

    def _commit(self, records: list[bytes]) -> None:
        started = time.perf_counter()
        try:
            self._journal.append(records)
            metrics.journal_fsync_seconds.observe(time.perf_counter() - started)
        except BaseException as error:
            self._failed = error
            raise EngineUnavailableError(f"journal write failed; engine stopped: {error!r}") from error

    def pulse(self) -> int:
        """Expires due pending transfers durably; returns how many expired."""
        self._check_usable()
        before = len(self.state.changes)
        record = self._pulse_record(self._clock())
        if record is not None:
            self._commit([record])
        return len(self.state.changes) - before

    def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        self._check_usable()
        if len(accounts) > BATCH_EVENTS_MAX:
            raise TooMuchDataError(f"{len(accounts)} accounts exceed batch_events_max={BATCH_EVENTS_MAX}")
        if not accounts:
            return []
        body = encode_accounts(accounts)
        events = decode_accounts(body)
        state = self.state
        timestamp = state.prepare(len(events), self._clock())
        state.dirty = False
        results = state.create_accounts(events, timestamp)
        if state.dirty:
            checksum = _results_checksum([r.status for r in results])
            op = self._journal.next_op()
            record = encode_record(op, Operation.CREATE_ACCOUNTS, timestamp, len(events), checksum, body)
            self._commit([record])
        return results

    def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        self._check_usable()
        if len(transfers) > BATCH_EVENTS_MAX:
            raise TooMuchDataError(f"{len(transfers)} transfers exceed batch_events_max={BATCH_EVENTS_MAX}")
        if not transfers:
            return []
        body = encode_transfers(transfers)
        events = decode_transfers(body)
        state = self.state
        realtime_ns = self._clock()
        # Expire first, in its own record, so limits see released reservations as TigerBeetle's
        # pulse would have released them.
        records: list[bytes] = []
        pulse = self._pulse_record(realtime_ns)
        if pulse is not None:
            records.append(pulse)
        timestamp = state.prepare(len(events), realtime_ns)
        state.dirty = False
        results = state.create_transfers(events, timestamp)
        if state.dirty:
            checksum = _results_checksum([r.status for r in results])
            op = self._journal.next_op()
            records.append(encode_record(op, Operation.CREATE_TRANSFERS, timestamp, len(events), checksum, body))
        if records:
            self._commit(records)
        return results

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        self._check_usable()
        validate_ids(list(ids))
        return self.state.lookup_accounts(ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        self._check_usable()
        validate_ids(list(ids))
        return self.state.lookup_transfers(ids)

    def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        self._check_usable()
        return self.state.get_account_transfers(filter)

    def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        self._check_usable()
        return self.state.get_account_balances(filter)

    def query_accounts(self, filter: QueryFilter) -> list[Account]:
        self._check_usable()
        return self.state.query_accounts(filter)

    def query_transfers(self, filter: QueryFilter) -> list[Transfer]:
        self._check_usable()
        return self.state.query_transfers(filter)

    def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        self._check_usable()
        return self.state.get_change_events(filter)

    def next_expiry(self) -> int | None:
        return self.state.next_expiry()

    def close(self) -> None:
        self._journal.close()


def _replay(state: StateMachine, record: Record) -> None:
    """Re-applies one journaled operation; the results must match what was acknowledged."""
    if record.operation == Operation.PULSE:
        expired = state.pulse(record.timestamp)
        if expired != record.count:
            raise JournalReplayError(f"op {record.op}: pulse expired {expired}, journal says {record.count}")
        return
    statuses: list[int]
    if record.operation == Operation.CREATE_ACCOUNTS:
        statuses = [r.status for r in state.create_accounts(decode_accounts(record.body), record.timestamp)]
    else:
        assert record.operation == Operation.CREATE_TRANSFERS
        statuses = [r.status for r in state.create_transfers(decode_transfers(record.body), record.timestamp)]
    if _results_checksum(statuses) != record.results_checksum:
        raise JournalReplayError(f"op {record.op}: replayed results differ from the acknowledged ones")


class EmbeddedEngine:
    """The async Engine over an EmbeddedLedger; one writer thread serializes every call."""

    name = "embedded"

    def __init__(self, ledger: EmbeddedLedger, executor: ThreadPoolExecutor) -> None:
        self._ledger = ledger
        self._executor = executor
        self._closed = False
        self._pulse_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, data_dir: Path, clock: Callable[[], int] = time.time_ns) -> EmbeddedEngine:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-engine")
        loop = asyncio.get_running_loop()
        try:
            ledger = await loop.run_in_executor(executor, EmbeddedLedger.open, Path(data_dir), clock)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        engine = cls(ledger, executor)
        engine._pulse_task = asyncio.create_task(engine._pulse_loop(), name="ledger-engine-pulse")
        return engine

    @property
    def ledger(self) -> EmbeddedLedger:
        return self._ledger

    async def _run(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._closed:
            raise EngineUnavailableError("engine is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    async def _pulse_loop(self) -> None:
        """Releases expired reservations even when no writes arrive (TigerBeetle's pulse)."""
        while not self._closed:
            await asyncio.sleep(PULSE_INTERVAL_SECONDS)
            next_expiry = self._ledger.next_expiry()  # A racy peek is fine: pulse re-checks.
            if next_expiry is not None and next_expiry <= time.time_ns():
                try:
                    await self._run(self._ledger.pulse)
                except EngineUnavailableError:
                    return

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        return await self._run(self._ledger.create_accounts, list(accounts))

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        return await self._run(self._ledger.create_transfers, list(transfers))

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return await self._run(self._ledger.lookup_accounts, list(ids))

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return await self._run(self._ledger.lookup_transfers, list(ids))

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        return await self._run(self._ledger.get_account_transfers, filter)

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        return await self._run(self._ledger.get_account_balances, filter)

    async def query_accounts(self, filter: QueryFilter) -> list[Account]:
        return await self._run(self._ledger.query_accounts, filter)

    async def query_transfers(self, filter: QueryFilter) -> list[Transfer]:
        return await self._run(self._ledger.query_transfers, filter)

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        return await self._run(self._ledger.get_change_events, filter)

    async def close(self) -> None:
        if self._closed:
            return
        if self._pulse_task is not None:
            self._pulse_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pulse_task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._ledger.close)
        self._closed = True
        self._executor.shutdown(wait=True)
