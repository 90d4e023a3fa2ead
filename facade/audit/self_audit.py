"""Continuous self-audit: every new signed checkpoint is recomputed from the read model's rows.

Each round takes the checkpoints sealed since the last round and, for each, folds the read model's
`transactions` rows (chain order) into a compact range (the right frontier: at most 64 subtree roots)
up to the checkpoint's size, checking the chain link by link, and compares the root with the signed
one. Then it checks the ledger invariants on the read model: per ledger Σ debits = Σ credits, and
(given the engine) every account's balances = Σ of its entries (projections.reconcile). Both read the
entries one slice of the account ids per round (projections.reconcile.ReconcileSweep: never a scan of
the whole read model, which would hold the read model's process, and so the projection, for seconds);
the ledger sums are added up over a sweep, as of the engine time it started at, and checked when it
ends. A failure
counts in `ledger_audit_failures_total{check}` and shows in /readyz under dependencies.audit; a
clean round moves `ledger_audit_last_verified_timestamp` to the verified checkpoint's engine time.
A checkpoint the read model has not caught up with yet is not a failure: it is verified next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from facade.audit.log import AuditLog, SealedCheckpoint
from facade.engine.protocol import Engine
from facade.engine.types import Transfer
from facade.observability import metrics
from facade.observability.logs import get_logger
from ledger_audit_verifier import leaf_hash, node_hash
from ledger_events.chain import GENESIS, METADATA_FIELDS, Link, canonical_bytes
from ledger_events.entries import metadata_bytes
from ledger_events.gen.ledger.v1 import entries_pb2
from projections.audit import _CHAIN_PAGE as CHAIN_PAGE_SQL
from projections.audit import AUDIT_PAGE_ROWS
from projections.audit import COLUMNS as CHAIN_COLUMNS
from projections.client import ClickHouseClient, Row
from projections.queries import TIMESTAMP_MAX, projected_timestamp, to_bool, to_int
from projections.reconcile import ReadModelFigures, ReconcileSweep, compare
from projections.rows import CHANGE_VALUES

__all__ = [
    "CHECKPOINTS_PER_ROUND_MAX",
    "AuditCheck",
    "ChainFold",
    "Frontier",
    "SelfAudit",
    "SelfAuditFailure",
    "fold_chain",
    "row_leaf_input_of",
]

CHECKPOINTS_PER_ROUND_MAX = 64
"""Checkpoints verified per round: a long backlog is worked through over several rounds."""
FRONTIER_LEVELS_MAX = 64
T = TypeVar("T")
log = get_logger("ledger.audit")


class Query(Protocol):
    async def __call__(self, function: Callable[[ClickHouseClient], T]) -> T: ...


class AuditCheck(enum.StrEnum):
    ROOT = "root"
    CHAIN = "chain"
    LEDGER_SUMS = "ledger_sums"
    BALANCES = "balances"
    ERROR = "error"


@dataclass(slots=True, frozen=True)
class SelfAuditFailure:
    check: AuditCheck
    reason: str


class Frontier:
    """The compact range of a growing tree: the roots of its complete subtrees, largest first."""

    def __init__(self) -> None:
        self.size = 0
        self._subtrees: list[tuple[int, bytes]] = []

    def add(self, leaf: bytes) -> None:
        self._subtrees.append((1, leaf))
        self.size += 1
        while len(self._subtrees) >= 2 and self._subtrees[-1][0] == self._subtrees[-2][0]:
            (size, right), (_, left) = self._subtrees.pop(), self._subtrees.pop()
            self._subtrees.append((2 * size, node_hash(left, right)))
        assert len(self._subtrees) <= FRONTIER_LEVELS_MAX

    def root(self) -> bytes:
        if not self._subtrees:
            return hashlib.sha256(b"").digest()
        root = self._subtrees[-1][1]
        for _, subtree in reversed(self._subtrees[:-1]):
            root = node_hash(subtree, root)
        return root


_LEDGER_SUMS_IN_RANGE = """
SELECT ledger, sumIf(toUInt256(amount), side = 'DEBIT'), sumIf(toUInt256(amount), side = 'CREDIT')
FROM entries FINAL
WHERE account_id BETWEEN {low:UInt128} AND {high:UInt128} AND engine_timestamp <= {timestamp:UInt64}
GROUP BY ledger"""


@dataclass(slots=True)
class ChainFold:
    """How far the read model's chain has been folded: the frontier, the last link, its engine time.
    Plain data, so the fold can run where the rows are (the read model's process) and come back."""

    frontier: Frontier = field(default_factory=Frontier)
    link: Link = GENESIS
    timestamp_last: int = 0


def fold_chain(client: ClickHouseClient, fold: ChainFold, tree_size: int) -> tuple[ChainFold, SelfAuditFailure | None]:
    """Folds the rows after `fold` up to `tree_size`, checking the chain link by link (on the client's
    thread, or in the read model's own process: every new change is read, hashed three times and folded,
    work that held the service's interpreter for seconds per round at a few thousand tx/s). Returns the
    fold as far as it got and the chain break found, if any. The rows are read as the audit module pages
    them (projections.audit's chain pages) and their leaf inputs built straight from the row's values
    (`row_leaf_input_of`): converting each row to a ChainRow first was ~24 µs of the read model's CPU a
    change, most of the fold, paid for every change once per self-audit round."""
    assert tree_size >= fold.frontier.size
    sha256 = hashlib.sha256
    for page in _chain_value_pages(client, fold.timestamp_last + 1, TIMESTAMP_MAX):
        for values in page:
            if fold.frontier.size == tree_size:
                return fold, None
            sequence = to_int(values[_SEQUENCE])
            if sequence <= fold.link.sequence:
                continue  # A duplicate not yet merged away (ReplacingMergeTree): already folded.
            data = row_leaf_input_of(values)
            link = Link(sequence, fold.link.hash, sha256(data).digest())
            if (
                sequence != fold.link.sequence + 1
                or values[_PREVIOUS_HASH] != fold.link.hash.hex()
                or values[_HASH] != link.hash.hex()
            ):
                return fold, SelfAuditFailure(AuditCheck.CHAIN, f"chain breaks at sequence {fold.link.sequence + 1}")
            fold.frontier.add(leaf_hash(data))
            fold.link = link
            fold.timestamp_last = to_int(values[_TIMESTAMP])
        if fold.frontier.size == tree_size:
            return fold, None
    assert fold.frontier.size <= tree_size
    return fold, None


_COLUMN = {name: index for index, name in enumerate(CHAIN_COLUMNS)}
_TIMESTAMP, _CHANGE, _SEQUENCE = _COLUMN["engine_timestamp"], _COLUMN["change"], _COLUMN["chain_sequence"]
_PREVIOUS_HASH, _HASH, _HAS_METADATA = _COLUMN["chain_previous_hash"], _COLUMN["chain_hash"], _COLUMN["has_metadata"]
_TRANSFER_COLUMNS = tuple(
    _COLUMN[name]
    for name in (
        "transfer_id", "debit_account_id", "credit_account_id", "amount", "pending_id", "user_data_128",
        "user_data_64", "user_data_32", "timeout_seconds", "ledger", "code", "transfer_flags", "transfer_timestamp",
    )
)  # fmt: skip
"""Transfer's fields in its constructor's order."""
_METADATA_COLUMNS = tuple((name, _COLUMN[name]) for name in (*METADATA_FIELDS, "labels"))


def _chain_value_pages(client: ClickHouseClient, timestamp_from: int, timestamp_to: int) -> Iterator[list[Row]]:
    """projections.audit's chain pages (the same query, order and paging), as the rows' raw values."""
    cursor = timestamp_from
    while True:
        found = client.query_rows(
            CHAIN_PAGE_SQL, {"cursor": cursor, "timestamp_to": timestamp_to, "limit": AUDIT_PAGE_ROWS}
        )
        if not found:
            return
        yield found
        if len(found) < AUDIT_PAGE_ROWS:
            return
        cursor = to_int(found[-1][_TIMESTAMP]) + 1


def row_leaf_input_of(values: Row) -> bytes:
    """The leaf input of a chain row given as its values in CHAIN_COLUMNS order: the bytes
    projections.audit_evidence.row_leaf_input builds from the row's ChainRow (asserted equal in the
    tests), with the metadata's canonical bytes from ledger_events.entries.metadata_bytes (asserted equal
    to the generic canonical JSON in tests/changes/test_metadata_bytes.py). The values' types are held by
    what takes them (int() of a JSON integer or decimal string, the protobuf fields' own types, a hex string)."""
    row: Sequence[Any] = values
    transfer = Transfer(*(int(row[index]) for index in _TRANSFER_COLUMNS))
    metadata = b""
    if to_bool(row[_HAS_METADATA]):
        metadata = metadata_bytes(entries_pb2.EntryMetadata(**{name: row[index] for name, index in _METADATA_COLUMNS}))
    data = canonical_bytes(int(row[_SEQUENCE]), int(row[_TIMESTAMP]), CHANGE_VALUES[row[_CHANGE]], transfer, metadata)
    return bytes.fromhex(row[_PREVIOUS_HASH]) + data


class QueryInModel(Protocol):
    """Runs a module-level function(client, *arguments) where the read model is (its own process)."""

    async def __call__(
        self,
        function: Callable[[ClickHouseClient, ChainFold, int], tuple[ChainFold, SelfAuditFailure | None]],
        fold: ChainFold,
        tree_size: int,
        /,
    ) -> tuple[ChainFold, SelfAuditFailure | None]: ...


class SelfAudit:
    def __init__(
        self,
        audit: AuditLog,
        query: Query,
        *,
        engine: Engine | None = None,
        query_in_model: QueryInModel | None = None,
    ) -> None:
        self.audit = audit
        self._query = query
        self._query_in_model = query_in_model
        self._engine = engine
        self._fold = ChainFold()
        self.verified_size = 0
        self.failure: SelfAuditFailure | None = None
        self._sweep = ReconcileSweep()
        self._sums_timestamp = 0
        """The engine time the current sweep's ledger sums are taken as of (fixed when it starts)."""
        self._sums: dict[int, tuple[int, int]] = {}
        """Σ debits and Σ credits by ledger over the sweep's slices so far."""

    def _slice(self, client: ClickHouseClient) -> tuple[ReadModelFigures, SelfAuditFailure | None]:
        """The next slice of the sweep (on the client's thread): its balance figures, and the ledger
        sums' verdict when the slice ends a sweep."""
        if self._sweep.sweep_ends:
            self._sums_timestamp = projected_timestamp(client)
            self._sums = {}
        figures = self._sweep.next_figures(client)
        accounts = figures.accounts
        parameters = {"low": accounts.low, "high": accounts.high, "timestamp": self._sums_timestamp}
        for ledger, debits, credits in client.query_rows(_LEDGER_SUMS_IN_RANGE, parameters):
            debits_before, credits_before = self._sums.get(to_int(ledger), (0, 0))
            self._sums[to_int(ledger)] = (debits_before + to_int(debits), credits_before + to_int(credits))
        if not self._sweep.sweep_ends:
            return figures, None
        for ledger, (debits, credits) in sorted(self._sums.items()):
            if debits != credits:
                return figures, SelfAuditFailure(
                    AuditCheck.LEDGER_SUMS, f"ledger {ledger}: Σ debits {debits} ≠ Σ credits {credits}"
                )
        return figures, None

    async def _verify(self, sealed: SealedCheckpoint) -> SelfAuditFailure | bool | None:
        """A failure, None when intact, or False when the read model has not reached it yet."""
        assert sealed.tree_size > self.verified_size
        fold = self._fold
        if self._query_in_model is not None:
            self._fold, failure = await self._query_in_model(fold_chain, fold, sealed.tree_size)
        else:
            self._fold, failure = await self._query(lambda client: fold_chain(client, fold, sealed.tree_size))
        if failure is not None:
            return failure
        if self.frontier.size < sealed.tree_size:
            return False
        assert self.frontier.size == sealed.tree_size
        if self.frontier.root() != sealed.checkpoint.root_hash:
            return SelfAuditFailure(
                AuditCheck.ROOT, f"root of the read model's first {sealed.tree_size} changes ≠ signed root"
            )
        return None

    @property
    def frontier(self) -> Frontier:
        return self._fold.frontier

    async def run_once(self) -> SelfAuditFailure | None:
        """One round; returns (and keeps in `failure`) the first failure found."""
        try:
            failure = await self._round()
        except Exception as error:  # The read model or the engine did not answer: report, retry next round.
            failure = SelfAuditFailure(AuditCheck.ERROR, f"{type(error).__name__}: {error}")
        if failure is not None:
            metrics.audit_failures_total.labels(failure.check.value).inc()
            log.error("self-audit failed", check=failure.check.value, reason=failure.reason)
        self.failure = failure
        return failure

    async def _round(self) -> SelfAuditFailure | None:
        pending = [c for c in self.audit.checkpoints() if c.tree_size > self.verified_size]
        verified: SealedCheckpoint | None = None
        for sealed in pending[:CHECKPOINTS_PER_ROUND_MAX]:
            result = await self._verify(sealed)
            if result is False:
                break
            if isinstance(result, SelfAuditFailure):
                return result
            verified = sealed
            self.verified_size = sealed.tree_size
        figures, failure = await self._query(self._slice)
        if failure is not None:
            return failure
        if self._engine is not None:
            report = await compare(self._engine, figures)
            if not report.ok:
                return SelfAuditFailure(
                    AuditCheck.BALANCES, f"{len(report.drifting_accounts)} accounts: balances ≠ Σ entries"
                )
        if verified is not None:
            metrics.audit_last_verified_timestamp.set(verified.checkpoint.timestamp_last / 1e9)
        return None

    async def check(self) -> None:
        """Readiness detail: raises while the last round failed."""
        if self.failure is not None:
            raise RuntimeError(f"self-audit {self.failure.check.value}: {self.failure.reason}")

    async def run(self, stop: asyncio.Event, interval_seconds: float) -> None:
        while not stop.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_seconds)
