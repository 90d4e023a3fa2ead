"""Signed checkpoints in the read model: table `audit_checkpoints`, one row per checkpoint.

The service hands every sealed checkpoint to `store_checkpoint` (facade.audit.service), next to the
append-only `checkpoints.jsonl` of the audit dir (the signer's own record). The note is stored
verbatim, so a row verifies with the public key alone; the other columns are for querying.
"""

from __future__ import annotations

from dataclasses import dataclass

from facade.audit.log import SealedCheckpoint
from projections.client import ClickHouseClient
from projections.queries import to_int, to_str

__all__ = ["CHECKPOINTS_LISTED_MAX", "StoredCheckpoint", "create_table", "list_checkpoints", "store_checkpoint"]

CHECKPOINTS_LISTED_MAX = 10_000
"""Rows one `list_checkpoints` call returns at most."""

_DDL = """CREATE TABLE IF NOT EXISTS audit_checkpoints (
    tree_size UInt64,
    root_hash String,
    timestamp_last UInt64,
    key_id String,
    note String
) ENGINE = ReplacingMergeTree ORDER BY tree_size"""
_INSERT = """INSERT INTO audit_checkpoints (tree_size, root_hash, timestamp_last, key_id, note)
SELECT {tree_size:UInt64}, {root_hash:String}, {timestamp_last:UInt64}, {key_id:String}, {note:String}"""
_LIST = """SELECT tree_size, root_hash, timestamp_last, key_id, note FROM audit_checkpoints FINAL
WHERE tree_size >= {tree_size_min:UInt64} ORDER BY tree_size LIMIT {limit:UInt32}"""


@dataclass(slots=True, frozen=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: str
    """Hex."""
    timestamp_last: int
    key_id: str
    note: str


def create_table(client: ClickHouseClient) -> None:
    client.command(_DDL)


def store_checkpoint(client: ClickHouseClient, sealed: SealedCheckpoint) -> None:
    """Idempotent (ReplacingMergeTree by tree size): a re-published checkpoint replaces itself."""
    checkpoint = sealed.checkpoint
    create_table(client)
    client.command(
        _INSERT,
        {
            "tree_size": checkpoint.tree_size,
            "root_hash": checkpoint.root_hash.hex(),
            "timestamp_last": checkpoint.timestamp_last,
            "key_id": checkpoint.key_id,
            "note": sealed.note,
        },
    )


def list_checkpoints(client: ClickHouseClient, tree_size_min: int = 0) -> list[StoredCheckpoint]:
    create_table(client)
    rows = client.query_rows(_LIST, {"tree_size_min": tree_size_min, "limit": CHECKPOINTS_LISTED_MAX})
    return [
        StoredCheckpoint(to_int(size), to_str(root), to_int(timestamp), to_str(key_id), to_str(note))
        for size, root, timestamp, key_id, note in rows
    ]
