"""Feeds the Merkle tree from the change capture and seals checkpoints every N changes or T seconds.

`AuditSink` is a ChangeSink (facade.changes.poller): the service runs one ChangeCapture into it, with
its own position file, so the tree follows the engine's change feed exactly like the Kafka publisher
and the projector do, whatever else is configured. It takes the raw changes and hashes each leaf
straight from the engine's transfer and the metadata: building two LedgerEntry messages per change
only to read the same fields back out of them cost the service ~30 µs per change. A batch's leaves are
one LeafBatch (`leaf_batch`): its leaf inputs and the chain head after them, no object per change (a
LeafRecord and a Link per change, and a call per piece of the layout, made `leaf_records` ~4.2 µs of
CPU a change against ~2.9 for `leaf_batch`; scripts/bench_audit_capture.py). tests/audit/test_audit_golden.py pins
every byte hashed, stored and signed. It is still an EntrySink (`publish`, `leaf_record`) for entries
built elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from facade.audit.log import AuditLog, LeafBatch, LeafRecord, SealedCheckpoint
from facade.engine.types import ChangeEvent, Transfer
from facade.observability import metrics
from facade.observability.logs import get_logger
from ledger_events import checkpoint as positions
from ledger_events.chain import DOMAIN, HASH_SIZE, TRANSFER_LAYOUT, Link, canonical_bytes
from ledger_events.entries import ENTRY_CHANGES, metadata_bytes
from ledger_events.gen.ledger.v1 import entries_pb2

__all__ = ["LEAF_RECORDS_CHUNK", "AuditSink", "leaf_batch", "leaf_record", "leaf_records"]

LEAF_RECORDS_CHUNK = 512
"""Changes hashed into leaves per event-loop turn (~5 ms of hashing; see AuditSink.publish_changes)."""

log = get_logger("ledger.audit")
Publisher = Callable[[SealedCheckpoint], Awaitable[None]]


def leaf_record(entry: entries_pb2.LedgerEntry) -> LeafRecord:
    """The leaf of the change a (debit-side) entry belongs to; its chain link must match its contents."""
    transfer = Transfer(
        id=int(entry.transfer_id),
        debit_account_id=int(entry.account_id if entry.side == entries_pb2.DEBIT else entry.counterparty_account_id),
        credit_account_id=int(entry.counterparty_account_id if entry.side == entries_pb2.DEBIT else entry.account_id),
        amount=int(entry.amount),
        pending_id=int(entry.pending_id),
        user_data_128=int(entry.user_data_128),
        user_data_64=entry.user_data_64,
        user_data_32=entry.user_data_32,
        timeout=entry.timeout_seconds,
        ledger=entry.ledger,
        code=entry.code,
        flags=entry.transfer_flags,
        timestamp=entry.transfer_timestamp,
    )
    metadata = metadata_bytes(entry.metadata if entry.HasField("metadata") else None)
    data = entry.chain.previous_hash + canonical_bytes(
        entry.chain.sequence, entry.engine_timestamp, entry.change, transfer, metadata
    )
    # The chain hash is SHA-256 of exactly the leaf input: the leaf and the chain cannot disagree.
    assert hashlib.sha256(data).digest() == entry.chain.hash, "entry chain link does not match its contents"
    link = Link(entry.chain.sequence, entry.chain.previous_hash, entry.chain.hash)
    return LeafRecord(entry.chain.sequence, entry.engine_timestamp, link, data)


_LEAD = struct.Struct(">32s16sQQB")
"""A leaf input's first 65 bytes: previous_hash, then canonical_bytes' domain, sequence, engine
timestamp and change (big-endian), packed in one call."""
_SIZE = struct.Struct(">I")
_MASK64 = (1 << 64) - 1


def _leaf_inputs(
    events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata], previous: Link
) -> tuple[list[bytes], bytes]:
    """The leaf inputs of `events` (in feed order) after the chain head `previous`, and the chain hash
    of the last. A leaf input is previous_hash || canonical_bytes(change) (ledger_events.chain), so
    the chain hash of change i is the first 32 bytes of leaf input i + 1: nothing else is kept per
    change. The same bytes as canonical_bytes_encoded(..., transfer_bytes(transfer), metadata_bytes(...)),
    one pack for the lead and one for the transfer instead of a call per piece (tests/audit pins them)."""
    assert len(previous.hash) == HASH_SIZE  # "32s" would pad or cut silently.
    inputs: list[bytes] = []
    append = inputs.append
    sha256 = hashlib.sha256
    lead, transfer_layout, size = _LEAD.pack, TRANSFER_LAYOUT.pack, _SIZE.pack
    changes, metadata_get, join, m = ENTRY_CHANGES, metadata.get, b"".join, _MASK64
    chain_hash, sequence = previous.hash, previous.sequence
    for event in events:
        t = event.transfer
        sequence += 1
        i, d, c, a, p, u = t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data_128
        # One check for all six: a negative value or one of 2^128 or more leaves bits at 128 and up.
        assert (i | d | c | a | p | u) >> 128 == 0, "u128 field out of range"
        meta = metadata_get(i)
        encoded = metadata_bytes(meta) if meta is not None else b""
        data = join(
            (
                lead(chain_hash, DOMAIN, sequence, event.timestamp, changes[event.type]),
                transfer_layout(
                    i & m, i >> 64, d & m, d >> 64, c & m, c >> 64, a & m, a >> 64, p & m, p >> 64, u & m, u >> 64,
                    t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, int(t.flags), t.timestamp,
                ),
                size(len(encoded)),
                encoded,
            )
        )  # fmt: skip
        chain_hash = sha256(data).digest()
        append(data)
    assert len(inputs) == len(events)
    assert sequence == previous.sequence + len(events)
    return inputs, chain_hash


def leaf_batch(
    events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata], previous: Link
) -> LeafBatch:
    """The leaves of `events` (at least one) after the chain head `previous`, as the tree takes them."""
    assert events
    inputs, chain_hash = _leaf_inputs(events, metadata, previous)
    sequence_last = previous.sequence + len(events)
    link_last = Link(sequence_last, inputs[-1][:HASH_SIZE], chain_hash)
    return LeafBatch(previous.sequence + 1, inputs, events[-1].timestamp, link_last)


def leaf_records(
    events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata], previous: Link
) -> list[LeafRecord]:
    """The leaves of `events` (in feed order) after the chain head `previous`: the same leaf input and
    link as `leaf_record` of the debit entry that build_entries makes of each change (the chain hash is
    SHA-256 of exactly the leaf input, computed once), without the entries. A record per change: the
    service's capture takes `leaf_batch` instead."""
    inputs, chain_hash = _leaf_inputs(events, metadata, previous)
    hashes = [data[:HASH_SIZE] for data in inputs[1:]]
    if inputs:
        hashes.append(chain_hash)
    records: list[LeafRecord] = []
    for sequence, (event, data, hash_) in enumerate(zip(events, inputs, hashes, strict=True), previous.sequence + 1):
        records.append(LeafRecord(sequence, event.timestamp, Link(sequence, data[:HASH_SIZE], hash_), data))
    assert len(records) == len(events)
    assert not records or records[-1].sequence == previous.sequence + len(events)
    return records


class AuditSink:
    def __init__(self, audit: AuditLog, *, publishers: Sequence[Publisher] = ()) -> None:
        self.audit = audit
        self._publishers = list(publishers)
        self._sealed_size = 0
        latest = audit.latest()
        if latest is not None:
            self._sealed_size = latest.tree_size
        self._sealed_at = time.monotonic()
        self._published_size = self._sealed_size
        """Checkpoints up to this size were handed to every publisher (a failed publish is retried)."""

    def resume_position(self) -> positions.Checkpoint:
        """Where the change capture must start: after the last leaf the tree holds."""
        return self.audit.head()

    async def publish_changes(
        self, events: Sequence[ChangeEvent], metadata: Mapping[int, entries_pb2.EntryMetadata], previous: Link
    ) -> Link:
        """ChangeSink: the changes after the chain head `previous` into the tree; returns the new head.
        Hashed on the event loop LEAF_RECORDS_CHUNK changes at a time, yielding in between: a whole
        capture batch at once held the loop up to ~60 ms (measured under bench_api), every call's wait."""
        if not events:
            await self._seal_if_due()
            return previous
        inputs: list[bytes] = []
        link = previous
        for start in range(0, len(events), LEAF_RECORDS_CHUNK):
            if start:
                await asyncio.sleep(0)
            chunk = leaf_batch(events[start : start + LEAF_RECORDS_CHUNK], metadata, link)
            inputs += chunk.leaf_inputs
            link = chunk.link_last
        assert len(inputs) == len(events)
        await self._append_batch(LeafBatch(previous.sequence + 1, inputs, events[-1].timestamp, link))
        return link

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        records = [leaf_record(entry) for entry in entries if entry.side == entries_pb2.DEBIT]
        assert len(records) * 2 == len(entries)
        await self._append(records)

    async def _append(self, records: Sequence[LeafRecord]) -> None:
        await asyncio.to_thread(self.audit.append, records)
        await self._seal_if_due()

    async def _append_batch(self, batch: LeafBatch) -> None:
        await asyncio.to_thread(self.audit.append_batch, batch)
        await self._seal_if_due()

    async def _seal_if_due(self) -> None:
        settings = self.audit.settings
        pending = self.audit.head().link.sequence - self._sealed_size
        due = pending >= settings.checkpoint_entries or (
            pending > 0 and time.monotonic() - self._sealed_at >= settings.checkpoint_interval_seconds
        )
        if due or self._published_size < self._sealed_size:
            await self.seal()

    async def seal_if_pending(self) -> None:
        """Seals when changes are unsealed (or the last checkpoint is unpublished); else nothing."""
        head = await asyncio.to_thread(self.audit.head)
        if head.link.sequence > self._sealed_size or self._published_size < self._sealed_size:
            await self.seal()

    async def seal(self) -> SealedCheckpoint:
        sealed = await asyncio.to_thread(self.audit.seal)
        if sealed.tree_size > self._sealed_size:
            metrics.audit_checkpoints_total.inc()
            log.info("checkpoint sealed", tree_size=sealed.tree_size, key_id=sealed.checkpoint.key_id)
        self._sealed_size = sealed.tree_size
        self._sealed_at = time.monotonic()
        if self._published_size < sealed.tree_size:
            # A failure raises into the change capture, which retries the batch and so this publish.
            for publish in self._publishers:
                await publish(sealed)
            self._published_size = sealed.tree_size
        return sealed
