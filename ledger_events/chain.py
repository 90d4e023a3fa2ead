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
    transfer [128]u8               TigerBeetle's transfer layout (little-endian; `transfer_bytes` below,
                                   the same bytes as the engine's codec), with the transfer's own timestamp
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
from typing import Protocol

__all__ = [
    "DOMAIN",
    "GENESIS",
    "HASH_GENESIS",
    "HASH_SIZE",
    "METADATA_FIELDS",
    "TRANSFER_LAYOUT",
    "TRANSFER_SIZE",
    "ChainTransfer",
    "Link",
    "MetadataFields",
    "canonical_bytes",
    "canonical_bytes_encoded",
    "canonical_metadata",
    "metadata_mapping",
    "next_link",
    "next_link_encoded",
    "transfer_bytes",
]

HASH_SIZE = 32
HASH_GENESIS = bytes(HASH_SIZE)
TRANSFER_SIZE = 128
_DOMAIN = b"ledger.v1.chain\x01"
_FIXED = struct.Struct(">QQB")
_SIZE = struct.Struct(">I")
# TigerBeetle's transfer layout, defined here rather than borrowed from the engine's codec: the hashed
# bytes are a published contract (version 1) that must not move when an engine changes its own encoding.
# tests/changes/test_chain_contract.py asserts both give the same bytes.
_TRANSFER = struct.Struct("<12Q Q I I I H H Q")
_MASK64 = (1 << 64) - 1
assert _TRANSFER.size == TRANSFER_SIZE
DOMAIN = _DOMAIN
TRANSFER_LAYOUT = _TRANSFER
"""The version-1 layout's pieces for an encoder of many changes at once (facade.audit.sink.leaf_batch),
whose output tests compare with canonical_bytes byte for byte."""


class ChainTransfer(Protocol):
    """The transfer fields the chain hashes (an engine `Transfer`, or one rebuilt from read-model rows)."""

    @property
    def id(self) -> int: ...
    @property
    def debit_account_id(self) -> int: ...
    @property
    def credit_account_id(self) -> int: ...
    @property
    def amount(self) -> int: ...
    @property
    def pending_id(self) -> int: ...
    @property
    def user_data_128(self) -> int: ...
    @property
    def user_data_64(self) -> int: ...
    @property
    def user_data_32(self) -> int: ...
    @property
    def timeout(self) -> int: ...
    @property
    def ledger(self) -> int: ...
    @property
    def code(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def timestamp(self) -> int: ...


def transfer_bytes(t: ChainTransfer) -> bytes:
    """The 128-byte TigerBeetle layout of a transfer (u128 fields as two little-endian u64 halves)."""
    m = _MASK64
    for value in (t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data_128):
        assert 0 <= value < 1 << 128, "u128 field out of range"
    return _TRANSFER.pack(
        t.id & m, t.id >> 64,
        t.debit_account_id & m, t.debit_account_id >> 64,
        t.credit_account_id & m, t.credit_account_id >> 64,
        t.amount & m, t.amount >> 64,
        t.pending_id & m, t.pending_id >> 64,
        t.user_data_128 & m, t.user_data_128 >> 64,
        t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, int(t.flags), t.timestamp,
    )  # fmt: skip


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


def canonical_bytes(
    sequence: int, engine_timestamp: int, change: int, transfer: ChainTransfer, metadata: bytes
) -> bytes:
    return canonical_bytes_encoded(sequence, engine_timestamp, change, transfer_bytes(transfer), metadata)


def canonical_bytes_encoded(
    sequence: int, engine_timestamp: int, change: int, transfer_encoded: bytes, metadata: bytes
) -> bytes:
    """canonical_bytes with the transfer already in the engine's 128-byte layout (the read model's
    process receives changes in it: encoding the decoded transfer again would give the same bytes)."""
    assert sequence >= 1
    assert 0 <= change <= 255
    assert len(transfer_encoded) == TRANSFER_SIZE
    return b"".join(
        (
            _DOMAIN,
            _FIXED.pack(sequence, engine_timestamp, change),
            transfer_encoded,
            _SIZE.pack(len(metadata)),
            metadata,
        )
    )


def next_link(previous: Link, engine_timestamp: int, change: int, transfer: ChainTransfer, metadata: bytes) -> Link:
    return next_link_encoded(previous, engine_timestamp, change, transfer_bytes(transfer), metadata)


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


class MetadataFields(Protocol):
    """The hashed metadata fields (a ledger.v1.EntryMetadata, or a read-model row's columns)."""

    @property
    def transaction_id(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def transaction_type(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def currency(self) -> str: ...
    @property
    def leg_index(self) -> int: ...


def metadata_mapping(fields: MetadataFields) -> dict[str, object]:
    """The mapping `canonical_metadata` hashes, built the same way by the publisher (from the
    facade's metadata) and by the verifier (from read-model rows)."""
    mapping: dict[str, object] = {name: getattr(fields, name) for name in METADATA_FIELDS}
    mapping["labels"] = dict(fields.labels)
    return mapping
