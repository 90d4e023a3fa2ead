"""Shared by the tests that run the real `ledger serve` as a subprocess on the embedded engine (its default
front processes, tracing through them): the environment of a throwaway service and its front processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facade.api.gen.ledger.v1 import ledger_pb2 as pb

__all__ = ["FRONT_COMMAND_MARK", "credit_new_account", "fronts_of", "serve_env"]

FRONT_COMMAND_MARK = b"facade.front_process"
"""On a front process's command line (facade.fronts spawns `python -m facade.front_process`)."""


def serve_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a `ledger serve` on the embedded engine under `tmp_path`: gRPC on a free port (its
    "serving" log line, JSON, names it), no JSON gateway, metrics port or read model; `settings` on top
    (LEDGER_* and OTEL_* names). LEDGER_API__FRONT_PROCESSES is left out unless given: ledger serve's own
    default applies."""
    inherited = {key: value for key, value in os.environ.items() if key != "LEDGER_API__FRONT_PROCESSES"}
    return inherited | {
        "LEDGER_API__PORT": "0",
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_ENGINE__DATA_DIR": str(tmp_path / "engine"),
        "LEDGER_API__METADATA_DB": str(tmp_path / "metadata.sqlite3"),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_OBSERVABILITY__LOG_JSON": "true",
        **settings,
    }


def fronts_of(pid: int) -> list[int]:
    """The live front processes whose parent is `pid`."""
    fronts = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and FRONT_COMMAND_MARK in command:
            fronts.append(int(entry.name))
    return fronts


def credit_new_account(
    stub: Any, metadata: tuple[tuple[str, str], ...], *, idempotency_key: str, amount: str = "250"
) -> tuple[Any, Any]:
    """Opens a USD account (no overdraft) and credits it with `amount`: (the account, the posted transaction)."""
    auth = tuple(pair for pair in metadata if pair[0] == "authorization")
    account = stub.CreateAccount(
        pb.CreateAccountRequest(currency="USD", external_reference="a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT),
        metadata=auth,
    )
    credit = pb.PostTransactionRequest(
        idempotency_key=idempotency_key,
        legs=[pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=account.account_id, amount=amount, currency="USD")],
    )
    return account, stub.PostTransaction(credit, metadata=metadata)
