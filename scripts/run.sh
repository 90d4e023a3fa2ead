#!/usr/bin/env bash
# Sets up and runs the service on its embedded defaults (embedded engine under ./data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/ledger serve "$@"
