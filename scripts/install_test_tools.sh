#!/usr/bin/env bash
# Tools the tests use as a user would, from Debian's packages (test-only; the service needs none of them):
#   kcat               reads the entries topic as JSON, as platform engineers do
#   protobuf-compiler  `protoc --decode` with the descriptor set the package ships
#   chromium           a real headless browser renders /docs (Swagger UI) offline (tests/http/test_docs_offline.py)
set -euo pipefail
missing=()
command -v kcat >/dev/null || missing+=(kcat)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
