"""Checkpoint signing keys: Ed25519, generated on first use under the audit data dir, rotatable.

`keys/<key id>.pem` holds each private key (PKCS#8 PEM, mode 0600, directory 0700); `keys/active`
names the one that signs. Rotation adds a key and makes it active; old keys stay so `ledger audit
keys` still lists their public keys and old checkpoints stay verifiable. A configured key file
(settings.audit.signing_key_file) signs instead and is listed with the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from ledger_audit_verifier import VerifierKey

__all__ = ["KEYS_MAX", "KeyRing", "SigningKey"]

KEYS_MAX = 1024
"""Keys kept in a key ring: rotation beyond this is refused (prune deliberately, not silently)."""
_ACTIVE = "active"


@dataclass(slots=True, frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey
    verifier: VerifierKey

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def _signing_key(name: str, private_key: Ed25519PrivateKey) -> SigningKey:
    return SigningKey(private_key, VerifierKey(name, private_key.public_key().public_bytes_raw()))


def _load(path: Path, name: str) -> SigningKey:
    loaded = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return _signing_key(name, loaded)


class KeyRing:
    def __init__(self, directory: Path, name: str, key_file: Path | None = None) -> None:
        self.directory = directory / "keys"
        self.name = name
        self.key_file = key_file

    def _write_private(self, key: SigningKey) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        path = self.directory / f"{key.verifier.key_id}.pem"
        data = key.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        # O_EXCL with 0600 from the start: the key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _set_active(self, key_id: str) -> None:
        temporary = self.directory / f"{_ACTIVE}.tmp"
        temporary.write_text(key_id + "\n")
        os.replace(temporary, self.directory / _ACTIVE)

    def rotate(self) -> SigningKey:
        """A new key that signs from now on; the old ones stay listed."""
        if len(self.stored()) >= KEYS_MAX:
            raise ValueError(f"key ring holds {KEYS_MAX} keys already")
        key = _signing_key(self.name, Ed25519PrivateKey.generate())
        self._write_private(key)
        self._set_active(key.verifier.key_id)
        return key

    def stored(self) -> list[SigningKey]:
        if not self.directory.is_dir():
            return []
        return [_load(path, self.name) for path in sorted(self.directory.glob("*.pem"))[:KEYS_MAX]]

    def active(self) -> SigningKey:
        """The signing key: the configured key file, else the active stored key (generated if none)."""
        if self.key_file is not None:
            return _load(self.key_file, self.name)
        active = self.directory / _ACTIVE
        if not active.exists():
            return self.rotate()
        return _load(self.directory / f"{active.read_text().strip()}.pem", self.name)

    def verifier_keys(self) -> list[VerifierKey]:
        """Every public key: stored ones and the configured key file's."""
        keys = [key.verifier for key in self.stored()]
        if self.key_file is not None:
            configured = _load(self.key_file, self.name).verifier
            if configured not in keys:
                keys.append(configured)
        return keys

    def verifier(self, key_id: str) -> VerifierKey:
        for key in self.verifier_keys():
            if key.key_id == key_id:
                return key
        raise KeyError(f"no key {key_id} in the key ring")
