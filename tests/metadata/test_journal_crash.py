"""The journal store under SIGKILL: a writer process posts transactions through the group committer
(each batch one CREATE_TRANSACTIONS record: transfers, intents and outcomes in one append) and is
killed at random points, appends included. After each kill the ledger is reopened (the index rebuilt
from the journal) and every attempted key is retried with the same request: an acknowledged commit
returns its original timestamp (deduplicated), an acknowledged failure its original reason, and an
in-doubt one resolves exactly once (the second retry agrees with the first; the money moved once)."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facade.batcher import Committed, GroupCommitter, Outcome
from facade.domain.errors import LedgerError

from ._journal_crash_writer import ALICE, BOB, open_ledger, transaction

WRITER = Path(__file__).with_name("_journal_crash_writer.py")
ROUNDS = 4
ROUND_SECONDS_MAX = 0.6
ACK_WAIT_SECONDS_MAX = 30.0
REPO = Path(__file__).resolve().parents[2]


def run_until_killed(directory: Path, first_key: int, rng: random.Random) -> tuple[int, dict[int, str]]:
    """Runs the writer until a random SIGKILL; returns the last attempted key and the acked outcomes."""
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(first_key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    lines: list[bytes] = []
    buffer = b""
    deadline = time.monotonic() + ACK_WAIT_SECONDS_MAX
    kill_at: float | None = None
    while kill_at is None or time.monotonic() < kill_at:
        assert time.monotonic() < deadline, "writer acknowledged nothing"
        ready, _, _ = select.select([process.stdout], [], [], 0.01)
        if not ready:
            continue
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            _, stderr = process.communicate()
            pytest.fail(f"writer exited: {stderr.decode()}")
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines += complete
        if kill_at is None and any(line.startswith(b"acked") for line in complete):
            kill_at = time.monotonic() + rng.uniform(0.0, ROUND_SECONDS_MAX)
    process.send_signal(signal.SIGKILL)
    remaining, _ = process.communicate()
    lines += (buffer + remaining).split(b"\n")  # Written before the kill: acknowledged too.
    assert process.returncode == -signal.SIGKILL
    attempted_last = first_key - 1
    acked: dict[int, str] = {}
    for line in lines:
        words = line.decode().split(" ", 2)
        if words[0] == "attempt":
            attempted_last = int(words[2])
        elif words[0] == "acked":
            acked[int(words[1])] = words[2]
    return attempted_last, acked


def describe(outcome: Outcome) -> str:
    return f"committed {outcome.timestamp}" if isinstance(outcome, Committed) else f"failed {outcome.to_json()}"


async def test_sigkill_mid_append_then_retries_return_the_original_outcomes(tmp_path: Path) -> None:
    rng = random.Random()
    acked: dict[int, str] = {}
    next_key = 0
    for _ in range(ROUNDS):
        attempted_last, acked_round = run_until_killed(tmp_path, next_key, rng)
        acked.update(acked_round)
        next_key = attempted_last + 1
    assert acked and next_key > 0
    engine, store = await open_ledger(tmp_path)  # The index is rebuilt from the journal here.
    committer = GroupCommitter(engine, store)
    committer.start()
    try:
        keys = list(range(next_key))
        first = [await f for f in committer.submit([transaction(k) for k in keys])]
        second = [await f for f in committer.submit([transaction(k) for k in keys])]
        committed = 0
        for key, retried, again in zip(keys, first, second, strict=True):
            assert describe(again) == describe(retried), f"key {key}: a retry changed the outcome"
            if isinstance(again, Committed):
                assert again.deduplicated
                committed += 1
            else:
                assert isinstance(again, LedgerError) and again.reason == "INSUFFICIENT_FUNDS", again
            if key in acked:
                assert describe(retried) == acked[key], f"key {key}: acked {acked[key]}, retry {describe(retried)}"
                assert isinstance(retried, LedgerError) or retried.deduplicated
        # The money moved exactly once per committed key: 5 per credit to ALICE, none for overdrafts.
        [alice, bob] = await engine.lookup_accounts([ALICE, BOB])
        assert alice.credits_posted == 5 * committed and alice.debits_posted == 0
        assert bob.debits_posted == 5 * committed
        print(f"\n{len(keys)} keys attempted over {ROUNDS} SIGKILLs, {len(acked)} acknowledged, {committed} committed")
    finally:
        await committer.close()
        await store.close()
