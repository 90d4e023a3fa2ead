#!/usr/bin/env bash
# Sets up everything the service and its tests need, from scratch and idempotently:
# a virtualenv with the project and its dev tools, and the Apache Kafka broker jars (Maven Central).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
if [ -f scripts/kafka_broker.py ]; then
    .venv/bin/python scripts/kafka_broker.py fetch
fi
