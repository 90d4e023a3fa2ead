"""The transaction metadata section and its index on real files: what is encoded is what is read back,
one entry at a time or many at once (neighbours read together, long entries past the read-ahead)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from facade.engine.intents import (
    READ_TAIL_BYTES,
    TEXT_SIZE_MAX,
    OutcomeKind,
    TransactionIndex,
    TransactionIntent,
    decode_section,
    encode_section,
    read_entries,
    read_entry,
)

PREFIX_BYTES = 1000
"""Bytes before the section in the test file: locations are file offsets, never section offsets."""


def intents(rng: random.Random, count: int) -> list[TransactionIntent]:
    made: list[TransactionIntent] = []
    for index in range(count):
        # Mostly short bodies, some past the read-ahead, one as long as a body may be.
        size = rng.choice([10, 200, READ_TAIL_BYTES + 1, 3 * READ_TAIL_BYTES])
        if index == count // 2:
            size = TEXT_SIZE_MAX  # Its neighbours fall in other read spans.
        legs = rng.randint(1, 3)
        kind = rng.choice(list(OutcomeKind))
        made.append(
            TransactionIntent(
                rng.getrandbits(128), rng.randbytes(16), f"client-{index}", f"key-é-{index}", "b" * size, legs,
                index, tuple(rng.getrandbits(128) for _ in range(legs)), kind, rng.getrandbits(32),
                rng.randrange(16),
            )
        )  # fmt: skip
    return made


def test_a_section_reads_back_entry_by_entry_and_all_at_once(tmp_path: Path) -> None:
    rng = random.Random(14)
    written = intents(rng, 40)
    section, offsets = encode_section(written, with_transfer_ids=True)
    path = tmp_path / "journal"
    path.write_bytes(bytes(PREFIX_BYTES) + section)
    assert [d.intent for d in decode_section(section, transfer_ids=None)] == written
    assert [d.offset for d in decode_section(section, transfer_ids=None)] == offsets
    fd = os.open(path, os.O_RDONLY)
    try:
        locations = [PREFIX_BYTES + offset for offset in offsets]
        together = read_entries(fd, [*reversed(locations), locations[0]])  # Any order, repeats allowed.
        for intent, location in zip(written, locations, strict=True):
            alone = read_entry(fd, location)
            assert alone == together[location]
            assert (alone.transaction_id, alone.text, alone.kind, alone.transfer_count) == (
                intent.transaction_id, intent.text, intent.kind, intent.transfer_count,
            )  # fmt: skip
    finally:
        os.close(fd)


def test_the_index_keeps_the_first_intent_and_the_latest_outcome() -> None:
    index = TransactionIndex()
    first = TransactionIntent(7, bytes(16), "c", "k", "{}", 2, 0, (70, 71))
    index.add(first, 1000, first.transfer_ids)
    reused = TransactionIntent(7, b"\x01" * 16, "c", "k", "{1}", 1, 0, (72,), OutcomeKind.COMMITTED)
    index.add(reused, 2000, reused.transfer_ids)  # Same id: only the outcome may change.
    entry = index.transactions[7]
    assert (entry.fingerprint, entry.location, entry.kind) == (bytes(16), 1000, OutcomeKind.COMMITTED)
    assert index.transfers == {70: 7 << 8, 71: (7 << 8) | 1}
    failure = TransactionIntent(7, bytes(16), "", "", '["x"]', 0, kind=OutcomeKind.FAILURE_TEXT)
    index.add(failure, 3000, ())
    assert (entry.kind, entry.failure, entry.location) == (OutcomeKind.FAILURE_TEXT, '["x"]', 1000)
