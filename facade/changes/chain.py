"""The audit hash chain: the one place its bytes and hashes are defined.

Every committed change (transfer or expiry), in commit order, gets a link:

    hash = SHA-256(previous_hash || canonical_bytes(change))

with previous_hash = 32 zero bytes before the first change. A changed, missing, inserted or
reordered change breaks every later hash, and `sequence` (1, 2, 3, ...) makes a gap explicit.

Canonical bytes, version 1 (big-endian integers unless noted):

    b"ledger.v1.chain\\x01"        domain separation and version
    sequence u64
    engine_timestamp u64
    change u8                      EntryChange value
    transfer [128]u8               TigerBeetle's transfer layout (little-endian, facade/engine/codec.py),
                                   with the transfer's own timestamp
    metadata_size u32, metadata    canonical JSON of the domain metadata (UTF-8, keys sorted, no
                                   spaces); size 0 when the transfer has none

Everything hashed is stored in the ClickHouse read model, so `ledger audit verify` recomputes the
chain from rows alone. Balances are not hashed: they are derived from the transfers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from facade.engine.codec import EVENT_SIZE as TRANSFER_ENCODED_SIZE
from facade.engine.codec import encode_transfers
from facade.engine.types import Transfer

HASH_SIZE = 32
HASH_GENESIS = bytes(HASH_SIZE)
_DOMAIN = b"ledger.v1.chain\x01"
_FIXED = struct.Struct(">QQB")
_SIZE = struct.Struct(">I")


@dataclass(slots=True, frozen=True)
class Link:
    sequence: int
    previous_hash: bytes
    hash: bytes


GENESIS = Link(sequence=0, previous_hash=HASH_GENESIS, hash=HASH_GENESIS)


def canonical_metadata(metadata: Mapping[str, object] | None) -> bytes:
    """Canonical JSON of the metadata mapping (str keys; str, int or str→str map values)."""
    if not metadata:
        return b""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_bytes(sequence: int, engine_timestamp: int, change: int, transfer: Transfer, metadata: bytes) -> bytes:
    return canonical_bytes_encoded(sequence, engine_timestamp, change, encode_transfers([transfer]), metadata)


def canonical_bytes_encoded(
    sequence: int, engine_timestamp: int, change: int, transfer_encoded: bytes, metadata: bytes
) -> bytes:
    """canonical_bytes with the transfer already in the engine's 128-byte layout (the read model's
    process receives changes in it: encoding the decoded transfer again would give the same bytes)."""
    assert sequence >= 1
    assert 0 <= change <= 255
    assert len(transfer_encoded) == TRANSFER_ENCODED_SIZE
    return b"".join(
        (
            _DOMAIN,
            _FIXED.pack(sequence, engine_timestamp, change),
            transfer_encoded,
            _SIZE.pack(len(metadata)),
            metadata,
        )
    )


def next_link(previous: Link, engine_timestamp: int, change: int, transfer: Transfer, metadata: bytes) -> Link:
    return next_link_encoded(previous, engine_timestamp, change, encode_transfers([transfer]), metadata)


def next_link_encoded(
    previous: Link, engine_timestamp: int, change: int, transfer_encoded: bytes, metadata: bytes
) -> Link:
    sequence = previous.sequence + 1
    data = canonical_bytes_encoded(sequence, engine_timestamp, change, transfer_encoded, metadata)
    return Link(sequence, previous.hash, hashlib.sha256(previous.hash + data).digest())


METADATA_FIELDS = (
    "transaction_id",
    "idempotency_key",
    "client_id",
    "transaction_type",
    "source",
    "correlation_id",
    "description",
    "labels",
    "currency",
    "leg_index",
)
"""The hashed metadata fields: every field of ledger.v1.EntryMetadata, always all present."""


def metadata_mapping(
    transaction_id: str,
    idempotency_key: str,
    client_id: str,
    transaction_type: str,
    source: str,
    correlation_id: str,
    description: str,
    labels: Mapping[str, str],
    currency: str,
    leg_index: int,
) -> dict[str, object]:
    """The mapping `canonical_metadata` hashes, built the same way by the publisher (from the
    facade's metadata) and by the verifier (from read-model rows)."""
    return {
        "transaction_id": transaction_id,
        "idempotency_key": idempotency_key,
        "client_id": client_id,
        "transaction_type": transaction_type,
        "source": source,
        "correlation_id": correlation_id,
        "description": description,
        "labels": dict(labels),
        "currency": currency,
        "leg_index": leg_index,
    }
