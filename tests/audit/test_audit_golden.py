"""Golden values of the audit evidence for one fixed set of changes: the leaf inputs, chain links, the
tree's files, roots, proofs and the signed checkpoint, computed once with the implementation as it stood
before the audit capture was made cheaper (main at 330e8a6) and pinned here. Every byte the service
hashes, signs, stores or exports must stay exactly what it was, however leaf_records, the sink and the
tree compute it: any difference fails here, whatever the other tests agree on among themselves."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from facade.audit.log import AuditLog
from facade.audit.sink import AuditSink, leaf_records
from facade.engine.types import ChangeEvent, ChangeEventType, Transfer, TransferFlags
from facade.settings import AuditSettings
from ledger_audit_verifier import leaf_hash, verify_consistency, verify_inclusion
from ledger_events.chain import GENESIS, Link
from ledger_events.gen.ledger.v1 import entries_pb2

CHANGES_COUNT = 1500
BATCH_SIZES = (1, 2, 3, 511, 513, 64, 5, 401)
"""Appends of uneven sizes (odd and even tree sizes, across a LEAF_RECORDS_CHUNK) summing to
CHANGES_COUNT; then the last REEMITTED_COUNT are published again (skipped by the tree, as after a crash)."""
REEMITTED_COUNT = 200
U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
TEXTS = ("", "a", "plain text", "caf\u00e9 \u20ac \U0001f600", 'quote " backslash \\ slash /', "tab\tnl\n\x00\x1f\x7f")

# Computed with 330e8a6's leaf_records / AuditSink / MerkleTree / AuditLog.seal (see module docstring).
GOLDEN_LEAF_INPUTS = "15a3078b81dcbe2c6dbcb005ea18d526cef8c563491f870d7cb7f4ec13e903af"
GOLDEN_HEAD = "3e795b40e8a39115bf1f928c7d302504aaa4fa95a8f86eadb6a6fd8a5a199103"
GOLDEN_LEVEL_FILES = "2b43d3ae7205dd271d745c424aab90c1bab546e305912d646b946eac2c610c05"
GOLDEN_ROOTS = "78b724d9eb13bdcd3482d00f9b5b86f4a8c8af91394cfe44cea594ec4256fd18"
GOLDEN_PROOFS = "da72c4906418ebf54dcd4e2ffbe7ba77fd153110c948b9c1018a94c20c8c06e5"
GOLDEN_NOTE = "995b905e24464af6b0184009735e74da5940b58b7e5450acbfe474075621b2b5"


def _u128(rng: random.Random) -> int:
    return rng.choice((0, 1, U64_MAX, 1 << 64, U128_MAX, rng.getrandbits(128), rng.getrandbits(64)))


def golden_changes() -> tuple[list[ChangeEvent], dict[int, entries_pb2.EntryMetadata]]:
    """CHANGES_COUNT changes of every type, u128 and u64 extremes, ~2/3 with metadata (JSON escapes,
    non-ASCII, control characters, labels), in increasing engine timestamps."""
    rng = random.Random(14)
    events: list[ChangeEvent] = []
    metadata: dict[int, entries_pb2.EntryMetadata] = {}
    timestamp = 1_700_000_000_000_000_000
    for number in range(CHANGES_COUNT):
        change = ChangeEventType(rng.randrange(len(ChangeEventType)))
        timestamp += rng.randrange(1, 1000)
        transfer = Transfer(
            id=(number + 1) * 0x1_0000_0001 if number % 3 else U128_MAX - number,
            debit_account_id=_u128(rng),
            credit_account_id=_u128(rng),
            amount=_u128(rng),
            pending_id=_u128(rng) if change != ChangeEventType.SINGLE_PHASE else 0,
            user_data_128=_u128(rng),
            user_data_64=rng.choice((0, U64_MAX, rng.getrandbits(64))),
            user_data_32=rng.choice((0, (1 << 32) - 1, rng.getrandbits(32))),
            timeout=rng.choice((0, (1 << 32) - 1, rng.getrandbits(16))),
            ledger=rng.choice((1, 840, (1 << 32) - 1)),
            code=rng.choice((1, (1 << 16) - 1)),
            flags=TransferFlags(rng.choice((0, int(TransferFlags.PENDING), int(TransferFlags.LINKED)))),
            timestamp=timestamp - rng.randrange(2),
        )
        events.append(ChangeEvent(timestamp, change, transfer))
        if number % 3 != 2:
            labels = {rng.choice(TEXTS) + str(i): rng.choice(TEXTS) for i in range(rng.randrange(4))}
            metadata[transfer.id] = entries_pb2.EntryMetadata(
                transaction_id=f"{rng.getrandbits(128):032x}",
                idempotency_key=rng.choice(TEXTS),
                client_id=rng.choice(TEXTS),
                transaction_type=rng.choice(("transfer", "credit", "debit", "")),
                source=rng.choice(TEXTS),
                correlation_id=rng.choice(TEXTS),
                description=rng.choice(TEXTS) * rng.randrange(3),
                labels=labels,
                currency=rng.choice(("USD", "EUR", "")),
                leg_index=rng.choice((0, 1, 7, (1 << 31) - 1)),
            )
    return events, metadata


def _digest(parts: list[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def test_leaf_inputs_and_links_are_the_golden_ones() -> None:
    events, metadata = golden_changes()
    previous = Link(41, b"\x01" * 32, b"\x02" * 32)
    records = leaf_records(events, metadata, previous)
    parts: list[bytes] = []
    for record in records:
        link = record.link
        parts += [record.sequence.to_bytes(8, "big"), record.engine_timestamp.to_bytes(8, "big")]
        parts += [link.sequence.to_bytes(8, "big"), link.previous_hash, link.hash, record.leaf_input]
    assert _digest(parts) == GOLDEN_LEAF_INPUTS


def _signing_key_file(tmp_path: Path) -> Path:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    path = tmp_path / "signing.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


async def test_tree_files_roots_proofs_and_checkpoint_are_the_golden_ones(tmp_path: Path) -> None:
    events, metadata = golden_changes()
    settings = AuditSettings(data_dir=tmp_path / "audit", signing_key_file=_signing_key_file(tmp_path))
    log = AuditLog(settings)
    sink = AuditSink(log)
    head = GENESIS
    start = 0
    for size in BATCH_SIZES:
        head = await sink.publish_changes(events[start : start + size], metadata, head)
        start += size
    assert start == CHANGES_COUNT
    # Re-emitted, as after a crash before the capture's position was saved: identical, so skipped.
    start = CHANGES_COUNT - REEMITTED_COUNT
    previous = leaf_records(events[:start], metadata, GENESIS)[-1].link
    assert await sink.publish_changes(events[start:], metadata, previous) == head
    assert log.tree.size == CHANGES_COUNT
    assert head.sequence == CHANGES_COUNT
    assert hashlib.sha256(head.hash).hexdigest() == GOLDEN_HEAD

    tree_directory = tmp_path / "audit" / "tree"
    levels = sorted(tree_directory.glob("level-*.bin"))
    assert _digest([path.name.encode() + path.read_bytes() for path in levels]) == GOLDEN_LEVEL_FILES
    roots = [log.tree.root(size) for size in range(CHANGES_COUNT + 1)]
    assert _digest(roots) == GOLDEN_ROOTS

    rng = random.Random(15)
    proofs: list[bytes] = []
    for _ in range(200):
        size = rng.randrange(1, CHANGES_COUNT + 1)
        index = rng.randrange(size)
        inclusion = log.tree.inclusion_proof(index, size)
        verify_inclusion(index, size, log.tree.leaf(index), inclusion, roots[size])
        size_old = rng.randrange(size + 1)
        consistency = log.tree.consistency_proof(size_old, size)
        if size_old:
            verify_consistency(size_old, size, consistency, roots[size_old], roots[size])
        proofs += [b"".join(inclusion), b"".join(consistency)]
    assert _digest(proofs) == GOLDEN_PROOFS

    sealed = await sink.seal()
    assert sealed.tree_size == CHANGES_COUNT
    assert sealed.checkpoint.root_hash == roots[CHANGES_COUNT]
    assert log.tree.leaf(CHANGES_COUNT - 1) == leaf_hash(leaf_records(events, metadata, GENESIS)[-1].leaf_input)
    assert hashlib.sha256(sealed.note.encode()).hexdigest() == GOLDEN_NOTE
    log.close()
