"""`python scripts/kafka_broker.py fetch|start|address|stop ...`: the local KRaft broker; the code lives in
ledger_testkit/kafka_broker.py (shared by the tests and the benchmarks). Any Python runs it: the project
root goes on the path first, and without confluent_kafka it re-executes itself with the project's .venv."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ledger_testkit.kafka_broker import main

    main()
