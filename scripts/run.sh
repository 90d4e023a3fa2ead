#!/usr/bin/env bash
# Sets up and runs the service on its embedded defaults (embedded engine under ./data).
#   bash scripts/run.sh                 the service alone (Kafka off)
#   bash scripts/run.sh --with-kafka    also a local Kafka broker (data/kafka), the service's topics
#                                       provisioned, change capture and command ingestion on
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ "${1:-}" != "--with-kafka" ]; then
    exec .venv/bin/ledger serve "$@"
fi
shift
if bootstrap=$(.venv/bin/python scripts/kafka_broker.py address 2>/dev/null); then
    echo "using the Kafka broker already running at $bootstrap" >&2
else
    bootstrap=$(.venv/bin/python scripts/kafka_broker.py start)
    trap '.venv/bin/python scripts/kafka_broker.py stop' EXIT
    echo "Kafka broker started at $bootstrap (stopped when the service stops)" >&2
fi
export LEDGER_KAFKA__BOOTSTRAP_SERVERS="$bootstrap"
.venv/bin/ledger serve "$@"
