"""The core imports no transport: the domain (errors, times, mapping), the operations layer, the service,
the group commit, the engines, the metadata stores and the auth core load without grpc, fastapi, starlette
or confluent_kafka (checked in a fresh interpreter, so nothing else this test process imported counts)."""

from __future__ import annotations

import json
import subprocess
import sys

CORE_MODULES = (
    "facade.domain.errors",
    "facade.domain.times",
    "facade.domain.ids",
    "facade.domain.validation",
    "facade.domain.accounts",
    "facade.domain.transactions",
    "facade.operations.convert",
    "facade.operations.ledger",
    "facade.operations.history",
    "facade.operations.unexpected",
    "facade.service",
    "facade.batcher",
    "facade.engine.embedded",
    "facade.engine.tigerbeetle",
    "facade.metadata_store",
    "facade.metadata",
    "facade.auth",
)
TRANSPORTS = ("grpc", "fastapi", "starlette", "confluent_kafka")


def test_the_core_loads_without_any_transport() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True).stdout)
    assert "facade" in loaded, "the check must have imported the core"
    assert not set(TRANSPORTS) & set(loaded), sorted(set(TRANSPORTS) & set(loaded))
