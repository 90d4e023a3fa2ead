"""Export bundles: rows + the signed checkpoint covering them + inclusion proofs, verified offline.

Leaf input of a change (the Merkle leaf is SHA-256(0x00 || leaf input)):

    previous_hash [32]u8           the audit chain's previous link (32 zero bytes before the first)
    b"ledger.v1.chain\\x01"         domain separation and version
    sequence u64, engine_timestamp u64, change u8          (big-endian)
    transfer [128]u8               TigerBeetle's transfer layout, little-endian
    metadata_size u32 (big-endian), metadata (canonical JSON, UTF-8, keys sorted, no spaces)

That is exactly what the chain hashes (chain_hash = SHA-256(leaf input)), so a leaf commits to the
whole chain before it: proving an export's last row proves every row before it back to the first,
and proving its first row pins where it starts. Leaf index = sequence - 1.

Verification (nothing read but the bundle and the key; nothing written):
 1. The checkpoint's Ed25519 signature verifies with the given key (key id from the key).
 2. Every file listed by the manifest is present with its SHA-256 and row count (truncation).
 3. Rows form an unbroken chain: sequences consecutive from the manifest's first, each
    previous_hash the previous row's chain_hash, each chain_hash = SHA-256(leaf input).
 4. The first and last rows (every row when the evidence says "all") have inclusion proofs that
    verify against the checkpoint's root and size.
 5. Every row's timestamp is in the manifest's range, and the boundary changes (right before and
    right after the range, with their leaf inputs and proofs) show nothing of the range was left out.
An altered row whose chain was recomputed no longer has the leaf the signed tree holds; a deleted,
inserted or reordered row breaks step 3; a wrong key or a forged checkpoint fails step 1.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger_audit_verifier._merkle import ProofError, leaf_hash, verify_inclusion
from ledger_audit_verifier._note import Checkpoint, NoteError, VerifierKey, parse_checkpoint_any

__all__ = [
    "EVIDENCE_NAME",
    "EVIDENCE_VERSION",
    "BundleReport",
    "leaf_input",
    "row_leaf_input",
    "verify_bundle",
]

EVIDENCE_NAME = "evidence.json"
EVIDENCE_VERSION = 1
MANIFEST_NAME = "manifest.json"
EVIDENCE_BYTES_MAX = 64 * 1024 * 1024
"""An evidence file holds at most EVIDENCE_ALL_ROWS_MAX proofs (~4 KiB each): larger is refused."""
FILES_MAX = 100_000
"""Export files per bundle considered; more is refused."""
CHANGES: Mapping[str, int] = {
    "SINGLE_PHASE": 1,
    "TWO_PHASE_PENDING": 2,
    "TWO_PHASE_POSTED": 3,
    "TWO_PHASE_VOIDED": 4,
    "TWO_PHASE_EXPIRED": 5,
}
"""ledger.v1.EntryChange values (proto/ledger/v1/entries.proto)."""
METADATA_FIELDS = (
    "transaction_id", "idempotency_key", "client_id", "transaction_type", "source", "correlation_id",
    "description", "labels", "currency", "leg_index",
)  # fmt: skip
ROW_COLUMNS = frozenset(
    {
        "engine_timestamp", "change", "debit_account_id", "credit_account_id", "amount", "transfer_id",
        "pending_id", "ledger", "code", "transfer_flags", "user_data_128", "user_data_64", "user_data_32",
        "timeout_seconds", "transfer_timestamp", "chain_sequence", "chain_previous_hash", "chain_hash",
        "has_metadata", *METADATA_FIELDS,
    }
)  # fmt: skip
"""The export columns a row's leaf input is computed from."""
_DOMAIN = b"ledger.v1.chain\x01"
_FIXED = struct.Struct(">QQB")
_SIZE = struct.Struct(">I")
_TRANSFER = struct.Struct("<12Q Q I I I H H Q")
_MASK64 = (1 << 64) - 1
_U128_MAX = (1 << 128) - 1


def leaf_input(  # noqa: PLR0913  Keyword-only: one per field of the hashed layout.
    *,
    previous_hash: bytes,
    sequence: int,
    engine_timestamp: int,
    change: int,
    transfer: bytes,
    metadata: bytes,
) -> bytes:
    assert len(previous_hash) == 32 and len(transfer) == 128
    assert sequence >= 1
    return b"".join(
        (
            previous_hash,
            _DOMAIN,
            _FIXED.pack(sequence, engine_timestamp, change),
            transfer,
            _SIZE.pack(len(metadata)),
            metadata,
        )
    )


def _u128(text: str) -> tuple[int, int]:
    value = int(text)
    if not 0 <= value <= _U128_MAX:
        raise ValueError(f"{text} is not a u128")
    return value & _MASK64, value >> 64


def row_leaf_input(row: Mapping[str, str]) -> bytes:
    """The leaf input of one exported `transactions` row (CSV values as text)."""
    transfer = _TRANSFER.pack(
        *_u128(row["transfer_id"]),
        *_u128(row["debit_account_id"]),
        *_u128(row["credit_account_id"]),
        *_u128(row["amount"]),
        *_u128(row["pending_id"]),
        *_u128(row["user_data_128"]),
        int(row["user_data_64"]),
        int(row["user_data_32"]),
        int(row["timeout_seconds"]),
        int(row["ledger"]),
        int(row["code"]),
        int(row["transfer_flags"]),
        int(row["transfer_timestamp"]),
    )
    metadata = b""
    if int(row["has_metadata"]) != 0:
        mapping: dict[str, object] = {name: row[name] for name in METADATA_FIELDS}
        mapping["labels"] = json.loads(row["labels"])
        mapping["leg_index"] = int(row["leg_index"])
        metadata = json.dumps(mapping, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if row["change"] not in CHANGES:
        raise ValueError(f"unknown change {row['change']!r}")
    return leaf_input(
        previous_hash=bytes.fromhex(row["chain_previous_hash"]),
        sequence=int(row["chain_sequence"]),
        engine_timestamp=int(row["engine_timestamp"]),
        change=CHANGES[row["change"]],
        transfer=transfer,
        metadata=metadata,
    )


@dataclass(slots=True)
class BundleReport:
    rows_checked: int = 0
    rows_proved: int = 0
    tree_size: int = 0
    root_hash: str = ""
    key_id: str = ""
    timestamp_from: int = 0
    timestamp_to: int = 0
    """The range the rows are proved to be all of: every change of the signed tree with an engine
    timestamp in [timestamp_from, timestamp_to) (up to `complete_through` when the export reaches the
    tree's end)."""
    complete_through: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(path: Path, fmt: str) -> Iterator[dict[str, str]]:
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)
        return
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # Optional: only for Parquet exports.
    except ImportError as error:
        raise ValueError("a Parquet export needs pyarrow installed") from error
    table = pq.read_table(path)
    # Only the columns the chain hashes: typed columns beside them (times, decimals, maps) are not read.
    table = table.select([name for name in table.column_names if name in ROW_COLUMNS])
    for record in table.to_pylist():
        yield {name: str(value) for name, value in record.items()}


class _RefusedError(Exception):
    """Verification stops at the first problem: what follows it proves nothing."""


def _load_json(path: Path, limit: int) -> dict[str, object]:
    if not path.is_file():
        raise _RefusedError(f"{path.name} is missing")
    data = path.read_bytes()
    if len(data) > limit:
        raise _RefusedError(f"{path.name} is larger than {limit} bytes")
    try:
        loaded = json.loads(data)
    except ValueError as error:
        raise _RefusedError(f"{path.name} is not JSON: {error}") from error
    if not isinstance(loaded, dict):
        raise _RefusedError(f"{path.name} is not a JSON object")
    return loaded


def _proofs(evidence: Mapping[str, object]) -> dict[int, list[bytes]]:
    listed = evidence.get("proofs")
    if not isinstance(listed, list):
        raise _RefusedError("evidence has no proofs list")
    proofs: dict[int, list[bytes]] = {}
    try:
        for proof in listed:
            proofs[int(proof["sequence"])] = [base64.b64decode(h, validate=True) for h in proof["hashes"]]
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise _RefusedError(f"malformed proof in evidence: {error}") from error
    return proofs


def _verify(directory: Path, keys: list[VerifierKey], report: BundleReport) -> None:
    manifest = _load_json(directory / MANIFEST_NAME, EVIDENCE_BYTES_MAX)
    evidence = _load_json(directory / EVIDENCE_NAME, EVIDENCE_BYTES_MAX)
    if evidence.get("version") != EVIDENCE_VERSION:
        raise _RefusedError(f"evidence version {evidence.get('version')!r} not supported")
    note = evidence.get("checkpoint")
    if not isinstance(note, str):
        raise _RefusedError("evidence has no checkpoint")
    checkpoint: Checkpoint = parse_checkpoint_any(note.encode(), keys)
    report.tree_size = checkpoint.tree_size
    report.root_hash = checkpoint.root_hash.hex()
    report.key_id = checkpoint.key_id
    every_row = evidence.get("proof_rows") == "all"
    proofs = _proofs(evidence)
    files = manifest.get("files")
    fmt = manifest.get("format")
    if not isinstance(files, list) or len(files) > FILES_MAX or fmt not in ("csv", "parquet"):
        raise _RefusedError("manifest lists no files or an unknown format")
    row_count = int(str(manifest.get("row_count", -1)))
    first_sequence = int(str(manifest.get("first_sequence", 0)))
    previous = bytes.fromhex(str(manifest.get("previous_hash", "")))
    timestamp_from = int(str(manifest.get("timestamp_from", -1)))
    timestamp_to = int(str(manifest.get("timestamp_to", -1)))
    if not 0 <= timestamp_from <= timestamp_to:
        raise _RefusedError("manifest has no valid time range")
    report.timestamp_from, report.timestamp_to = timestamp_from, timestamp_to
    boundaries = evidence.get("boundary")
    if not isinstance(boundaries, dict):
        raise _RefusedError("evidence has no boundary proofs (the changes around the range)")
    if row_count == 0:
        before = _check_boundary(boundaries.get("before"), checkpoint, None, timestamp_from, timestamp_to)
        before_sequence = before[0] if before is not None else 0
        before_hash = before[1] if before is not None else bytes(32)
        _check_end(boundaries.get("after"), checkpoint, before_sequence, before_hash, timestamp_to, report)
        return
    if len(previous) != 32 or first_sequence < 1:
        raise _RefusedError("manifest has no valid first sequence and previous hash")
    before = _check_boundary(boundaries.get("before"), checkpoint, None, timestamp_from, timestamp_to)
    if (before[0] if before is not None else 0) != first_sequence - 1:
        raise _RefusedError(f"the change before the range is not sequence {first_sequence - 1} (rows cut at the start)")
    if before is not None and before[1] != previous:
        raise _RefusedError("the change before the range is not the one the first row follows")
    sequence_expected = first_sequence
    last_row: tuple[int, bytes] | None = None
    for listed in files:
        path = directory / Path(str(listed["name"])).name
        if not path.is_file():
            raise _RefusedError(f"{path.name} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != listed["sha256"]:
            raise _RefusedError(f"{path.name}: SHA-256 differs from the manifest's")
        rows_in_file = 0
        for row in _rows(path, str(fmt)):
            rows_in_file += 1
            sequence = int(row["chain_sequence"])
            if sequence != sequence_expected:
                raise _RefusedError(
                    f"sequence {sequence} where {sequence_expected} was expected (missing, extra or reordered row)"
                )
            if bytes.fromhex(row["chain_previous_hash"]) != previous:
                raise _RefusedError(f"sequence {sequence}: previous_hash is not the previous row's hash")
            if not timestamp_from <= int(row["engine_timestamp"]) < timestamp_to:
                raise _RefusedError(f"sequence {sequence}: engine timestamp outside the manifest's range")
            data = row_leaf_input(row)
            if hashlib.sha256(data).hexdigest() != row["chain_hash"]:
                raise _RefusedError(f"sequence {sequence}: hash does not match the row's contents (altered row)")
            leaf = leaf_hash(data)
            proof = proofs.get(sequence)
            is_first = sequence == first_sequence
            if proof is None and (every_row or is_first):
                raise _RefusedError(f"sequence {sequence}: no inclusion proof in the evidence")
            if proof is not None:
                verify_inclusion(sequence - 1, checkpoint.tree_size, leaf, proof, checkpoint.root_hash)
                report.rows_proved += 1
            previous = bytes.fromhex(row["chain_hash"])
            sequence_expected += 1
            report.rows_checked += 1
            last_row = (sequence, leaf)
        if rows_in_file != int(listed["rows"]):
            raise _RefusedError(f"{path.name}: {rows_in_file} rows, the manifest says {listed['rows']}")
    if last_row is None or report.rows_checked != row_count:
        raise _RefusedError(f"{report.rows_checked} rows where the manifest says {row_count} (truncated export)")
    if last_row[0] not in proofs:
        raise _RefusedError(f"sequence {last_row[0]}: the last row has no inclusion proof in the evidence")
    _check_end(boundaries.get("after"), checkpoint, last_row[0], previous, timestamp_to, report)


def _leaf_fields(data: bytes) -> tuple[bytes, int, int]:
    """previous_hash, sequence and engine timestamp of a leaf input."""
    if len(data) < 32 + len(_DOMAIN) + _FIXED.size + 128 + _SIZE.size or data[32 : 32 + len(_DOMAIN)] != _DOMAIN:
        raise _RefusedError("boundary leaf input is not a version 1 change")
    sequence, engine_timestamp, _ = _FIXED.unpack_from(data, 32 + len(_DOMAIN))
    return data[:32], sequence, engine_timestamp


def _check_boundary(
    value: object, checkpoint: Checkpoint, sequence_expected: int | None, timestamp_from: int, timestamp_to: int
) -> tuple[int, bytes, bytes] | None:
    """A boundary change (its leaf input and inclusion proof); returns its sequence, chain hash and
    previous hash.
    Before the range (sequence_expected None): its timestamp must be < timestamp_from."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _RefusedError("malformed boundary")
    try:
        data = base64.b64decode(str(value["leaf_input"]), validate=True)
        hashes = [base64.b64decode(str(h), validate=True) for h in value["hashes"]]
    except (KeyError, TypeError, binascii.Error) as error:
        raise _RefusedError(f"malformed boundary: {error}") from error
    previous_hash, sequence, engine_timestamp = _leaf_fields(data)
    if sequence_expected is None and engine_timestamp >= timestamp_from:
        raise _RefusedError(f"the change before the range (sequence {sequence}) is inside it")
    if sequence_expected is not None and (sequence != sequence_expected or engine_timestamp < timestamp_to):
        raise _RefusedError(
            f"the change after the range is not sequence {sequence_expected} outside it (rows cut at the end)"
        )
    verify_inclusion(sequence - 1, checkpoint.tree_size, leaf_hash(data), hashes, checkpoint.root_hash)
    return sequence, hashlib.sha256(data).digest(), previous_hash


def _check_end(  # noqa: PLR0913  The walk's state at its end; private.
    value: object,
    checkpoint: Checkpoint,
    last_sequence: int,
    last_hash: bytes | None,
    timestamp_to: int,
    report: BundleReport,
) -> None:
    """After the last row: the next change, outside the range, or the end of the signed tree."""
    if value is None:
        if last_sequence != checkpoint.tree_size:
            raise _RefusedError(f"no proof of the change after sequence {last_sequence} (rows cut at the end)")
        report.complete_through = min(timestamp_to, checkpoint.timestamp_last + 1)
        return
    after = _check_boundary(value, checkpoint, last_sequence + 1, 0, timestamp_to)
    assert after is not None
    if last_hash is not None and after[2] != last_hash:
        raise _RefusedError("the change after the range does not follow the last row")
    report.complete_through = timestamp_to


def verify_bundle(directory: Path, key: VerifierKey | Sequence[VerifierKey]) -> BundleReport:
    """Verifies an export bundle offline with the public key alone; reads files, writes nothing."""
    report = BundleReport()
    try:
        _verify(directory, [key] if isinstance(key, VerifierKey) else list(key), report)
    except (_RefusedError, NoteError, ProofError) as error:
        report.problems.append(str(error))
    except (KeyError, ValueError, TypeError, struct.error) as error:
        report.problems.append(f"malformed bundle: {type(error).__name__}: {error}")
    return report
