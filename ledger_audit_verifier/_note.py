"""Signed checkpoints: a C2SP signed note (tlog-checkpoint) carrying the Merkle tree head.

Byte layout (UTF-8, every line ends with a single 0x0A; docs/audit.md has the full description):

    <origin>                               e.g. "ledger-service/audit"
    <tree size>                            decimal, no leading zeros
    <root hash>                            standard base64 of the 32-byte RFC 9162 root
    timestamp <engine timestamp>           decimal ns: the last change in the tree
    previous <checkpoint hash>             standard base64 of SHA-256(body of the previous
                                           checkpoint); 32 zero bytes for the first
    (empty line)
    — <key name> <base64(key hash[4] || Ed25519 signature[64])>

The body is the first five lines, newline included; the signature is Ed25519 over the body. The key
hash (the key id) is SHA-256(key name || 0x0A || 0x01 || public key[32])[:4], as C2SP signed-note
defines it for Ed25519. A verifier key is written "<name>+<key hash hex>+<base64(0x01 || public key)>".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = [
    "NOTE_BYTES_MAX",
    "Checkpoint",
    "NoteError",
    "VerifierKey",
    "checkpoint_body",
    "key_hash",
    "parse_checkpoint",
    "parse_checkpoint_any",
    "parse_keys",
]

NOTE_BYTES_MAX = 4096
"""A checkpoint note is a few hundred bytes; longer input is refused before parsing."""
SIGNATURES_MAX = 16
"""Signature lines considered per note (co-signers); more is refused."""
_ALGORITHM_ED25519 = b"\x01"
_SIGNATURE_PREFIX = "\u2014 "
_HASH_SIZE = 32


class NoteError(ValueError):
    """A checkpoint or key that is malformed, or whose signature does not verify."""


def key_hash(name: str, public_key: bytes) -> bytes:
    assert len(public_key) == 32
    return hashlib.sha256(name.encode() + b"\n" + _ALGORITHM_ED25519 + public_key).digest()[:4]


@dataclass(slots=True, frozen=True)
class VerifierKey:
    name: str
    """Key name: no "+", space or newline (C2SP signed-note)."""
    public_key: bytes
    """Raw 32-byte Ed25519 public key."""

    @property
    def key_id(self) -> str:
        return key_hash(self.name, self.public_key).hex()

    def text(self) -> str:
        encoded = base64.b64encode(_ALGORITHM_ED25519 + self.public_key).decode()
        return f"{self.name}+{self.key_id}+{encoded}"

    @classmethod
    def parse(cls, text: str, *, name: str = "") -> VerifierKey:
        """A verifier key line, or an Ed25519 public key in PEM (then `name` is the key name)."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            loaded = load_pem_public_key(text.encode())
            if not isinstance(loaded, Ed25519PublicKey):
                raise NoteError("the PEM public key is not Ed25519")
            return cls(name, loaded.public_bytes_raw())
        parts = text.split("+", 2)  # The name holds no "+"; base64 may.
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key id hex>+<base64 key>")
        name, key_id, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error as error:
            raise NoteError(f"verifier key: {error}") from error
        if len(raw) != 33 or raw[:1] != _ALGORITHM_ED25519:
            raise NoteError("verifier key is not an Ed25519 key")
        key = cls(name, raw[1:])
        if key.key_id != key_id.lower():
            raise NoteError("verifier key id does not match its key")
        return key


KEYS_PER_FILE_MAX = 1024
"""Verifier keys read from one key file (every key ever rotated in); more is refused."""


def parse_keys(text: str, *, name: str = "") -> list[VerifierKey]:
    """A key file: one verifier key per line (as `ledger audit keys --verifier-keys` writes), or a PEM key."""
    if text.lstrip().startswith("-----BEGIN"):
        return [VerifierKey.parse(text, name=name)]
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or len(lines) > KEYS_PER_FILE_MAX:
        raise NoteError(f"a key file holds 1 to {KEYS_PER_FILE_MAX} verifier keys")
    return [VerifierKey.parse(line) for line in lines]


def parse_checkpoint_any(note: bytes, keys: list[VerifierKey]) -> Checkpoint:
    """parse_checkpoint with whichever of `keys` signed the note (rotated keys: old checkpoints verify)."""
    assert keys
    error: NoteError | None = None
    for key in keys:
        try:
            return parse_checkpoint(note, key)
        except NoteError as refused:
            error = refused
    assert error is not None
    raise error


@dataclass(slots=True, frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    timestamp_last: int
    """Engine timestamp (ns) of the last change in the tree."""
    previous_hash: bytes
    """SHA-256 of the previous checkpoint's body (32 zero bytes for the first)."""
    key_name: str
    key_id: str
    """Hex of the 4-byte key hash that signed it."""
    signature: bytes
    body: bytes

    @property
    def checkpoint_hash(self) -> bytes:
        return hashlib.sha256(self.body).digest()


def checkpoint_body(
    *, origin: str, tree_size: int, root_hash: bytes, timestamp_last: int, previous_hash: bytes
) -> bytes:
    assert origin and "\n" not in origin
    assert tree_size >= 0 and timestamp_last >= 0
    assert len(root_hash) == _HASH_SIZE and len(previous_hash) == _HASH_SIZE
    return (
        f"{origin}\n{tree_size}\n{base64.b64encode(root_hash).decode()}\n"
        f"timestamp {timestamp_last}\nprevious {base64.b64encode(previous_hash).decode()}\n"
    ).encode()


def _decimal(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise NoteError(f"checkpoint {what} {text!r} is not a decimal number")
    return int(text)


def _hash(text: str, what: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise NoteError(f"checkpoint {what}: {error}") from error
    if len(value) != _HASH_SIZE:
        raise NoteError(f"checkpoint {what} is not 32 bytes")
    return value


def parse_checkpoint(note: bytes, key: VerifierKey) -> Checkpoint:
    """Parses a signed checkpoint and verifies its signature by `key`; raises NoteError otherwise."""
    if len(note) > NOTE_BYTES_MAX:
        raise NoteError(f"checkpoint longer than {NOTE_BYTES_MAX} bytes")
    try:
        text = note.decode()
    except UnicodeDecodeError as error:
        raise NoteError("checkpoint is not UTF-8") from error
    body_text, separator, signatures = text.partition("\n\n")
    if not separator or not signatures.endswith("\n"):
        raise NoteError("checkpoint has no signature block")
    lines = body_text.split("\n")
    if len(lines) != 5 or not lines[3].startswith("timestamp ") or not lines[4].startswith("previous "):
        raise NoteError("checkpoint body is not origin, size, root, timestamp, previous")
    body = (body_text + "\n").encode()
    signature_lines = signatures[:-1].split("\n")
    if len(signature_lines) > SIGNATURES_MAX:
        raise NoteError("too many signature lines")
    wanted = key_hash(key.name, key.public_key)
    for line in signature_lines:
        if not line.startswith(_SIGNATURE_PREFIX):
            raise NoteError("malformed signature line")
        name, _, encoded = line[len(_SIGNATURE_PREFIX) :].rpartition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error as error:
            raise NoteError(f"signature: {error}") from error
        if len(raw) != 68 or name != key.name or raw[:4] != wanted:
            continue  # Another signer's line: not ours to check.
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(raw[4:], body)
        except InvalidSignature as error:
            raise NoteError(f"checkpoint signature by key {key.key_id} does not verify") from error
        return Checkpoint(
            origin=lines[0],
            tree_size=_decimal(lines[1], "tree size"),
            root_hash=_hash(lines[2], "root hash"),
            timestamp_last=_decimal(lines[3].removeprefix("timestamp "), "timestamp"),
            previous_hash=_hash(lines[4].removeprefix("previous "), "previous hash"),
            key_name=name,
            key_id=raw[:4].hex(),
            signature=raw[4:],
            body=body,
        )
    raise NoteError(f"checkpoint carries no signature by key {key.name!r} ({key.key_id})")
