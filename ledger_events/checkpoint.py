"""A change-capture checkpoint: the last published change and the chain head, stored atomically.

Written after every published batch: temp file, fsync, rename over the old one, fsync the directory.
A crash leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ledger_events.chain import GENESIS, Link


@dataclass(slots=True, frozen=True)
class Checkpoint:
    timestamp_last: int
    """Engine timestamp of the last change published; the next poll starts after it."""
    link: Link
    """Chain head after that change."""


START = Checkpoint(timestamp_last=0, link=GENESIS)


def load(path: Path) -> Checkpoint:
    if not path.exists():
        return START
    data = json.loads(path.read_text())
    return Checkpoint(
        timestamp_last=int(data["timestamp_last"]),
        link=Link(
            sequence=int(data["sequence"]),
            previous_hash=bytes.fromhex(data["previous_hash"]),
            hash=bytes.fromhex(data["hash"]),
        ),
    )


def save(path: Path, checkpoint: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    data = json.dumps(
        {
            "timestamp_last": checkpoint.timestamp_last,
            "sequence": checkpoint.link.sequence,
            "previous_hash": checkpoint.link.previous_hash.hex(),
            "hash": checkpoint.link.hash.hex(),
        }
    ).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
