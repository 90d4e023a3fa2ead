"""The read model in its own process: chDB, the projector's inserts and the History queries run in a
child process that `ledger serve` starts, feeds and restarts; the service's interpreter only reads the
change feed and hands the changes over in large batches.

Why the child owns chDB and receives the changes from the service (rather than reading the journal itself): the
embedded engine is single-writer and in-process, and change capture (the engine's change feed joined
with the metadata store's domain metadata, chained for audit) already runs in the service with its
checkpoint and at-least-once rules. A child reading the journal would duplicate the journal decoding
and the metadata join, and a second reader of a file being written needs its own torn-tail rules.
Shipping the changes keeps one change-capture path (reading the feed, the metadata join, the
checkpoint stay in the service) and moves what costs most - building and chaining the entries, row
building, ClickHouse inserts and merges, queries - off the service's interpreter (the GIL) and into a
process the OS schedules on its own. The changes travel in the engine's own 128-byte binary layout
(facade.engine.codec): a few µs per change to encode, where pickling the objects costs ~20.

chDB opens a directory in one process only, so the child answers the History queries too: the
service reaches it through `RemoteClient`, the same ClickHouseClient protocol the queries already
use, over a pipe.

One request at a time: the pipe is used from the read model's single thread only (projections
.read_model), so requests never interleave. Every call is bounded by CALL_TIMEOUT_SECONDS; a child that
dies or stops answering is killed, the call fails with ClickHouseError (change capture retries with
backoff, a query answers an error) and the next call starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from facade.engine.codec import encode_accounts, encode_transfers
from facade.engine.types import Account, ChangeEvent
from facade.settings import ClickHouseSettings
from ledger_events.chain import Link
from ledger_events.checkpoint import Checkpoint
from ledger_events.gen.ledger.v1 import entries_pb2
from projections._change_columns import RECORDS_CHANGES_MIN, change_records
from projections._change_rows import change_rows
from projections.client import ClickHouseError, Parameters, Row, open_client
from projections.projector import Projector
from projections.queries import PROJECTED_TIMESTAMP_SQL, to_int

__all__ = ["ProjectionProcess", "RemoteClient", "RemoteProjector"]

T = TypeVar("T")

START_TIMEOUT_SECONDS = 120.0
"""Spawning the child, importing chDB and opening its directory (a cold start is slow on a busy host)."""
CALL_TIMEOUT_SECONDS = 120.0
"""The longest one request may take (a full batch insert, a reconciliation over the whole model)."""
STOP_TIMEOUT_SECONDS = 30.0
NICE_INCREMENT = 0
"""The child's CPU priority relative to the service. It ran at +5 (writes first, the projection lags
when the cores are saturated), but a niced child on a busy host gets a few percent of a core and falls
behind without bound: in bench_api.py (two A/B pairs, load 7-10) +5 gave lag p99 1.4-2.6 s at 100
tx/RPC and 5.0-6.4 s at 1000 tx/RPC, 0 gave 1.2-1.3 s and 3.2-3.4 s, and the service acked as many or
more transactions (4,300-4,700 vs 2,200-3,800 tx/s at 100 tx/RPC). Kept as a knob: os.nice(0) is a no-op."""


class _Op(enum.Enum):
    COMMAND = "command"
    INSERT_TSV = "insert_tsv"
    QUERY_ROWS = "query_rows"
    QUERY_RAW = "query_raw"
    QUERY_FORMATTED = "query_formatted"
    PROJECT = "project"
    PROJECT_CHANGES = "project_changes"
    RESUME_CHECKPOINT = "resume_checkpoint"
    CALL = "call"
    """A module-level function(client, *arguments) run here, next to the rows it reads (pickled by name)."""
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class _Request:
    op: _Op
    arguments: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Changes:
    """A batch of engine changes in transit: the engine's binary layout plus what it does not hold."""

    timestamps: list[int]
    types: list[int]
    transfers: bytes
    accounts: bytes
    """Debit then credit account per change; id 0 (never a real account) where the backend has none."""
    metadata: dict[int, bytes]
    """Serialized EntryMetadata by transfer id, for the transfers that have any."""


_NO_ACCOUNT = Account()


def _encode_changes(events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata]) -> _Changes:
    accounts: list[Account] = []
    for event in events:
        accounts.append(event.debit_account or _NO_ACCOUNT)
        accounts.append(event.credit_account or _NO_ACCOUNT)
    return _Changes(
        timestamps=[event.timestamp for event in events],
        types=[event.type.value for event in events],
        transfers=encode_transfers([event.transfer for event in events]),
        accounts=encode_accounts(accounts),
        metadata={transfer_id: found.SerializeToString() for transfer_id, found in metadata.items()},
    )


def _project_changes(
    projector: Projector, changes: _Changes, previous: Link, *, records_changes_min: int = RECORDS_CHANGES_MIN
) -> Link:
    """Builds and chains the rows of `changes` straight from their bytes (as change capture and the
    projector would, without LedgerEntry messages or engine objects in between: projections._change_rows)
    and projects them."""
    parse = entries_pb2.EntryMetadata.FromString
    metadata = {transfer_id: parse(data) for transfer_id, data in changes.metadata.items()}
    arguments = (changes.timestamps, changes.types, changes.transfers, changes.accounts, metadata, previous)
    if len(changes.timestamps) >= records_changes_min and projector.appends(changes.timestamps[0]):
        # A batch in order: Native blocks (projections._change_columns); a replay reaching below a table's
        # high-water mark: TabSeparated rows, de-duplicated key by key.
        with _collector_paused():
            records, link = change_records(*arguments)
        projector.project_records(records)
    else:
        with _collector_paused():
            tables, link = change_rows(*arguments)
        projector.project_tables(tables, len(changes.timestamps))
    assert link.sequence == previous.sequence + len(changes.timestamps)
    return link


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a batch's rows are built: they are tens of thousands of
    short-lived tuples and strings, none in a reference cycle, and the collections their allocations set off
    found nothing to free while costing ~1-1.4 µs a change (scripts/bench_read_model_process.py's calling
    thread at 10,000 changes/s: 8.9 -> 7.9 µs a change building the rows). One batch at a time (at most
    8189 changes), so what waits for the next collection is bounded."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _Reply:
    value: Any = None
    error: str = ""


_READ_ONLY_OPS = frozenset({_Op.QUERY_RAW, _Op.QUERY_FORMATTED})
"""Requests that cannot write (the SQL endpoint's queries carry readonly=1: facade.api.sql)."""


class _ProjectedTimestamp:
    """The answer to PROJECTED_TIMESTAMP_SQL, kept while this process is the only writer since it last
    asked ClickHouse. Every History answer asks for it (projected_until), and the query cost ~4.5 ms of
    this process's CPU over a few dozen parts (chDB 4.4): at bench_api.py's 20 probes a second, a tenth
    of a core. The projector is the only writer of `transactions`, and it moves the answer only forward
    (in-order batches, replays below it); any other write (a statement, an insert, a function run here)
    or a failed projection forgets it, and the next question goes to ClickHouse again."""

    def __init__(self) -> None:
        self.known: int | None = None

    def answer(self, sql: str, parameters: object) -> list[Row] | None:
        if self.known is None or sql != PROJECTED_TIMESTAMP_SQL or parameters:
            return None
        return [[self.known]] if self.known else []

    def learn(self, sql: str, parameters: object, rows: list[Row]) -> None:
        if sql == PROJECTED_TIMESTAMP_SQL and not parameters:
            self.known = to_int(rows[0][0]) if rows else 0

    def projected(self, projector: Projector) -> None:
        if self.known is not None:
            self.known = max(self.known, projector.last_engine_timestamp)

    def forget(self) -> None:
        self.known = None


def _child(connection: Connection, settings: ClickHouseSettings) -> None:
    """The child's loop: one request, one reply, until CLOSE or the service goes away."""
    # Ctrl-C reaches the whole process group: the service stops the child itself, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE_INCREMENT)
    try:
        client = open_client(settings)
        projector = Projector(client)
    except Exception as error:
        connection.send(_Reply(error=f"{type(error).__name__}: {error}"))
        return
    connection.send(_Reply())
    projected = _ProjectedTimestamp()
    try:
        while True:
            try:
                request: _Request = connection.recv()
            except EOFError:  # The service is gone: close chDB cleanly and exit.
                return
            if request.op is _Op.CLOSE:
                connection.send(_Reply())
                return
            try:
                value: Any
                if request.op is _Op.QUERY_ROWS:
                    sql, parameters = request.arguments
                    value = projected.answer(sql, parameters)
                    if value is None:
                        value = client.query_rows(sql, parameters)
                        projected.learn(sql, parameters, value)
                elif request.op in (_Op.PROJECT, _Op.PROJECT_CHANGES):
                    # Forgotten until the batch is in: a failure part way may leave rows in some tables.
                    known, projected.known = projected.known, None
                    if request.op is _Op.PROJECT:
                        [payloads] = request.arguments
                        value = projector.project([entries_pb2.LedgerEntry.FromString(p) for p in payloads])
                    else:
                        value = _project_changes(projector, *request.arguments)
                    projected.known = known
                    projected.projected(projector)
                elif request.op is _Op.RESUME_CHECKPOINT:
                    value = projector.resume_checkpoint()
                elif request.op is _Op.CALL:
                    projected.forget()  # The function may write.
                    function, arguments = request.arguments
                    value = function(client, *arguments)
                else:
                    if request.op not in _READ_ONLY_OPS:
                        projected.forget()  # A write other than the projector's.
                    value = getattr(client, request.op.value)(*request.arguments)
                reply = _Reply(value=value)
            except Exception as error:  # Answered, not fatal: the caller decides (retry, error status).
                reply = _Reply(error=f"{type(error).__name__}: {error}")
            connection.send(reply)
    finally:
        client.close()


class ProjectionProcess:
    """The parent's handle on the child: starts it, sends requests, restarts it after a failure."""

    def __init__(self, settings: ClickHouseSettings) -> None:
        assert settings.backend == "chdb", "a ClickHouse server is its own process already"
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")  # No fork of a process running gRPC threads.
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        """Belt and braces: requests never interleave on the pipe even if a second thread calls."""
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        assert self._process is None and self._connection is None
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child, args=(child, self._settings), name="ledger-read-model", daemon=True
        )
        process.start()
        child.close()
        self._process, self._connection = process, parent
        reply = self._receive(START_TIMEOUT_SECONDS)
        if reply.error:
            self._kill()
            raise ClickHouseError(f"read model process failed to start: {reply.error}")
        assert self._process.is_alive()

    def call(self, op: _Op, *arguments: Any) -> Any:
        with self._lock:
            if self._connection is None:
                self.restarts += 1
                self.start()
            assert self._connection is not None
            try:
                self._connection.send(_Request(op, arguments))
            except OSError as error:
                self._kill()
                raise ClickHouseError(f"read model process is gone: {error}") from error
            reply = self._receive(CALL_TIMEOUT_SECONDS)
        if reply.error:
            raise ClickHouseError(reply.error)
        return reply.value

    def _receive(self, timeout_seconds: float) -> _Reply:
        assert self._connection is not None
        try:
            if not self._connection.poll(timeout_seconds):
                self._kill()
                raise ClickHouseError(f"read model process did not answer within {timeout_seconds:.0f} s")
            reply: _Reply = self._connection.recv()
        except (EOFError, OSError) as error:
            self._kill()
            raise ClickHouseError(f"read model process is gone: {error!r}") from error
        return reply

    def _kill(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._process is not None:
            self._process.kill()
            self._process.join(STOP_TIMEOUT_SECONDS)
        self._process, self._connection = None, None

    def close(self) -> None:
        """Asks the child to close chDB and exit; kills it if it does not."""
        with self._lock:
            if self._connection is None:
                return
            with contextlib.suppress(ClickHouseError, OSError):
                self._connection.send(_Request(_Op.CLOSE, ()))
                self._receive(STOP_TIMEOUT_SECONDS)
            assert self._process is not None
            self._process.join(STOP_TIMEOUT_SECONDS)
            self._kill()


class RemoteClient:
    """ClickHouseClient over the pipe: the queries in projections.queries run unchanged."""

    def __init__(self, process: ProjectionProcess, database: str) -> None:
        self._process = process
        self.database = database

    def command(self, sql: str, parameters: Parameters | None = None) -> None:
        self._process.call(_Op.COMMAND, sql, parameters)

    def insert_tsv(self, table: str, columns: Sequence[str], data: str) -> None:
        self._process.call(_Op.INSERT_TSV, table, tuple(columns), data)

    def query_rows(self, sql: str, parameters: Parameters | None = None) -> list[Row]:
        rows: list[Row] = self._process.call(_Op.QUERY_ROWS, sql, parameters)
        return rows

    def query_raw(self, sql: str, fmt: str, parameters: Parameters | None = None) -> bytes:
        raw: bytes = self._process.call(_Op.QUERY_RAW, sql, fmt, parameters)
        return raw

    def query_formatted(self, sql: str, fmt: str, parameters: Mapping[str, str], size_max: int) -> bytes:
        """ChdbClient.query_formatted in the child (the SQL endpoint's queries)."""
        raw: bytes = self._process.call(_Op.QUERY_FORMATTED, sql, fmt, dict(parameters), size_max)
        assert len(raw) <= size_max
        return raw

    def call(self, function: Callable[..., T], *arguments: Any) -> T:
        """function(client, *arguments) in the read model's process: `function` must be module-level (it
        travels by name) and its arguments and result picklable."""
        assert callable(function) and "<locals>" not in function.__qualname__, "module-level functions only"
        value: T = self._process.call(_Op.CALL, function, arguments)
        return value

    def close(self) -> None:
        self._process.close()


class RemoteProjector:
    """The projector's side of change capture in the service: entries go to the child, serialized in
    one message per batch, on the read model's thread (the one that owns the pipe)."""

    def __init__(self, process: ProjectionProcess, executor: Executor) -> None:
        self._process = process
        self._executor = executor

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        """EntrySink: returns once the child has inserted every entry (visible to every query)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.project, entries)

    async def publish_changes(
        self, events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata], previous: Link
    ) -> Link:
        """ChangeSink: the child builds, chains and inserts the entries; returns the chain's new head."""
        changes = _encode_changes(events, metadata)
        link: Link = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._process.call, _Op.PROJECT_CHANGES, changes, previous
        )
        assert link.sequence == previous.sequence + len(events)
        return link

    def project(self, entries: Sequence[entries_pb2.LedgerEntry]) -> int:
        inserted: int = self._process.call(_Op.PROJECT, [entry.SerializeToString() for entry in entries])
        assert inserted <= len(entries) * 2  # An entry makes at most two rows (entry, transaction).
        return inserted

    def resume_checkpoint(self) -> Checkpoint:
        checkpoint: Checkpoint = self._process.call(_Op.RESUME_CHECKPOINT)
        return checkpoint
