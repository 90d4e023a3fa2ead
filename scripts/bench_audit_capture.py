"""The audit capture's CPU per change in the service process: leaf records, the tree's append, both.

Feeds N changes shaped like bench_api.py's (one transfer, metadata with a transaction id, idempotency
key, source and correlation id) in capture batches of --batch changes through:

- leaf_records: the leaf inputs and chain links (facade.audit.sink), a record per change,
- leaf_batch: the same as one LeafBatch, what the service's capture builds (where the tree has it),
- AuditLog.append: the Merkle tree (leaf hashes, parents, one write and fsync per level) and head.json,
- AuditSink.publish_changes: both, as the service's audit capture runs them (into a fresh log),

and reports process CPU (user + system, every thread) in µs per change for each, best of --repeat.
To compare two trees in one run, run this file with each tree's interpreter (it imports the code of
the interpreter's installed tree, not the file's):

    /tmp/base/.venv/bin/python scripts/bench_audit_capture.py && .venv/bin/python scripts/bench_audit_capture.py
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import facade
import facade.audit.sink as sink_module
from facade.audit.log import AuditLog, LeafRecord
from facade.audit.sink import AuditSink, leaf_records
from facade.engine.types import ChangeEvent, ChangeEventType, Transfer
from facade.observability.logs import configure_logging
from facade.settings import AuditSettings
from ledger_events.chain import GENESIS, Link
from ledger_events.gen.ledger.v1 import entries_pb2

CHANGES_DEFAULT = 100_000
BATCH_DEFAULT = 1024
"""The audit capture's batches at ~10,000 tx/s (it polls every 0.1 s; facade.audit.service)."""


def changes(count: int) -> tuple[list[ChangeEvent], dict[int, entries_pb2.EntryMetadata]]:
    events: list[ChangeEvent] = []
    metadata: dict[int, entries_pb2.EntryMetadata] = {}
    timestamp = 1_700_000_000_000_000_000
    for number in range(count):
        timestamp += 1
        transfer = Transfer(
            id=uuid.UUID(int=(number + 1) * 0x9E3779B97F4A7C15).int & ((1 << 128) - 1),
            debit_account_id=(1 << 96) + number % 1000,
            credit_account_id=(1 << 96) + (number + 1) % 1000,
            amount=1 + number % 1000,
            ledger=840,
            code=1,
            timestamp=timestamp,
        )
        events.append(ChangeEvent(timestamp, ChangeEventType.SINGLE_PHASE, transfer))
        key = f"bench-100-{number}"
        metadata[transfer.id] = entries_pb2.EntryMetadata(
            transaction_id=uuid.UUID(int=transfer.id).hex,
            idempotency_key=key,
            client_id="bench-writer",
            transaction_type="transfer",
            source="bench",
            correlation_id=key,
            currency="USD",
        )
    return events, metadata


def batches(events: list[ChangeEvent], size: int) -> list[list[ChangeEvent]]:
    return [events[start : start + size] for start in range(0, len(events), size)]


def cpu_us_per_change(seconds: float, count: int) -> float:
    return seconds * 1e6 / count


def measure_leaf_records(chunks: list[list[ChangeEvent]], metadata: dict[int, entries_pb2.EntryMetadata]) -> float:
    started = time.process_time()
    link = GENESIS
    for chunk in chunks:
        link = leaf_records(chunk, metadata, link)[-1].link
    return time.process_time() - started


def measure_leaf_batch(chunks: list[list[ChangeEvent]], metadata: dict[int, entries_pb2.EntryMetadata]) -> float:
    """The service's path since leaf_batch (an older tree has none: leaf_records was its path)."""
    leaf_batch = getattr(sink_module, "leaf_batch", None)
    if leaf_batch is None:
        return float("nan")
    started = time.process_time()
    link = GENESIS
    for chunk in chunks:
        link = leaf_batch(chunk, metadata, link).link_last
    return time.process_time() - started


def measure_append(directory: Path, records: list[list[LeafRecord]]) -> float:
    log = AuditLog(AuditSettings(data_dir=directory))
    started = time.process_time()
    for chunk in records:
        log.append(chunk)
    elapsed = time.process_time() - started
    log.close()
    return elapsed


def measure_publish(
    directory: Path, chunks: list[list[ChangeEvent]], metadata: dict[int, entries_pb2.EntryMetadata]
) -> float:
    log = AuditLog(AuditSettings(data_dir=directory))
    sink = AuditSink(log)

    async def run() -> float:
        link: Link = GENESIS
        started = time.process_time()
        for chunk in chunks:
            link = await sink.publish_changes(chunk, metadata, link)
        return time.process_time() - started

    elapsed = asyncio.run(run())
    log.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=CHANGES_DEFAULT)
    parser.add_argument("--batch", type=int, default=BATCH_DEFAULT)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    configure_logging("WARNING")  # Not a line per checkpoint sealed.
    events, metadata = changes(args.changes)
    chunks = batches(events, args.batch)
    records: list[list[LeafRecord]] = []
    link = GENESIS
    for chunk in chunks:
        records.append(leaf_records(chunk, metadata, link))
        link = records[-1][-1].link
    results: dict[str, list[float]] = {
        "leaf_records": [],
        "leaf_batch": [],
        "AuditLog.append": [],
        "publish_changes": [],
    }
    for _ in range(args.repeat):
        directory = Path(tempfile.mkdtemp(prefix="bench-audit-capture-"))
        try:
            results["leaf_records"].append(measure_leaf_records(chunks, metadata))
            results["leaf_batch"].append(measure_leaf_batch(chunks, metadata))
            results["AuditLog.append"].append(measure_append(directory / "append", records))
            results["publish_changes"].append(measure_publish(directory / "publish", chunks, metadata))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    tree = Path(facade.__file__).resolve().parent.parent
    print(f"{tree}: {args.changes:,} changes in batches of {args.batch}, CPU µs/change (best of {args.repeat})")
    for name, seconds in results.items():
        print(f"  {name:<16} {cpu_us_per_change(min(seconds), args.changes):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
