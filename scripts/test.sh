#!/usr/bin/env bash
# The test command (README, .ci/run): set up, lint, type-check, then the whole suite against real parts
# (gRPC over loopback, a real Kafka broker, chDB, real files and fsync).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/install_compose.sh  # `docker compose config` for tests/infra
bash scripts/install_test_tools.sh  # kcat, protoc: Kafka consumers that are not project code; chromium: /docs
bash scripts/install_postgres.sh >/dev/null  # initdb/pg_ctl: the PostgreSQL metadata store's tests
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy --strict facade projections scripts tests ledger_audit_verifier ledger_events ledger_testkit
.venv/bin/lint-imports  # the import contracts in pyproject.toml ([tool.importlinter])
.venv/bin/python -m pytest -q "$@"
