"""Runs a writer process (it prints "acked <batch>" per acknowledged batch) for a random time, then
SIGKILLs it: what the engine's crash-loop tests share."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import time

import pytest

__all__ = ["acked_until_killed"]

READ_BYTES_MAX = 65536
POLL_SECONDS = 0.01


def acked_until_killed(
    command: list[str], rng: random.Random, *, round_seconds_max: float, ack_wait_seconds_max: float
) -> list[int]:
    """Starts `command`, waits for its first ack (start-up includes replaying the journal), lets it run a
    random extra time up to `round_seconds_max`, SIGKILLs it; returns the acked batches in the order their
    answers arrived (acks still in the pipe at the kill were answered before it: they count too)."""
    assert command
    assert round_seconds_max > 0 and ack_wait_seconds_max > 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    acked: list[int] = []
    buffer = b""
    deadline_first = time.monotonic() + ack_wait_seconds_max
    kill_at: float | None = None
    while kill_at is None or time.monotonic() < kill_at:
        assert time.monotonic() < deadline_first or acked, "writer acknowledged nothing"
        ready, _, _ = select.select([process.stdout], [], [], POLL_SECONDS)
        if ready:
            chunk = os.read(process.stdout.fileno(), READ_BYTES_MAX)
            if not chunk:
                _, stderr = process.communicate()
                pytest.fail(f"writer exited: {stderr.decode()}")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            acked += [int(line.split()[1]) for line in lines]
            if acked and kill_at is None:
                kill_at = time.monotonic() + rng.uniform(0.0, round_seconds_max)
    process.send_signal(signal.SIGKILL)
    remaining, _ = process.communicate()
    buffer += remaining
    acked += [int(line.split()[1]) for line in buffer.split(b"\n") if line.startswith(b"acked")]
    assert process.returncode == -signal.SIGKILL
    return acked
