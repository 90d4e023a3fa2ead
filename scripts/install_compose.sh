#!/usr/bin/env bash
# Installs the real `docker compose` CLI plugin (used to validate infra/ with `docker compose config`;
# no Docker engine is needed for that). Debian ships only Compose v1, so build Compose v2 from its Go
# module, pinned, as the main module (its go.mod has exclude/replace directives `go install` rejects).
set -euo pipefail
COMPOSE_VERSION=v2.40.3
plugin="$HOME/.docker/cli-plugins/docker-compose"
if docker compose version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
    exit 0
fi
command -v go >/dev/null || { echo "install_compose.sh: Go is required" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dir=$(go mod download -json "github.com/docker/compose/v2@${COMPOSE_VERSION}" \
    | python3 -c "import json, sys; print(json.load(sys.stdin)['Dir'])")
cp -r "$dir" "$work/src"
chmod -R u+w "$work/src"
(cd "$work/src" && go build -trimpath \
    -ldflags "-X github.com/docker/compose/v2/internal.Version=${COMPOSE_VERSION}" \
    -o "$work/docker-compose" ./cmd)
mkdir -p "$(dirname "$plugin")"
mv "$work/docker-compose" "$plugin"
docker compose version
