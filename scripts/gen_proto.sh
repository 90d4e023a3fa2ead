#!/usr/bin/env bash
# Regenerates the Python protobuf/gRPC code (and mypy stubs) for the API's .proto files under proto/ into
# facade/api/gen/, and the event contract (entries.proto: messages only) into ledger_events/gen/, the
# bottom package change capture and the read model share. The generated code is committed, so installing
# the service needs no protoc.
set -euo pipefail
cd "$(dirname "$0")/.."
out=facade/api/gen
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$out"
events=ledger_events/gen
event_protos=(proto/ledger/v1/entries.proto)
mkdir -p "$events"
mapfile -t protos < <(find proto -name '*.proto' | sort)
mapfile -t api_protos < <(find proto -name '*.proto' ! -name entries.proto | sort)
.venv/bin/python -m grpc_tools.protoc -I proto \
    --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" \
    "${api_protos[@]}"
.venv/bin/python -m grpc_tools.protoc -I proto --python_out="$events" --mypy_out="$events" "${event_protos[@]}"
# The descriptor set consumers decode Kafka values with (`ledger kafka schema`, `protoc --decode`).
.venv/bin/python -m grpc_tools.protoc -I proto --include_imports --descriptor_set_out="$out/ledger_v1.binpb" \
    "${protos[@]}"
# Make every generated directory a package.
find "$out" "$events" -type d -exec sh -c 'test -f "$1/__init__.py" || : > "$1/__init__.py"' _ {} \;
# protoc writes imports relative to proto/ ("from ledger.v1 import x_pb2"); make them package-absolute.
find "$out" -name '*.py' -o -name '*.pyi' | xargs sed -i -E 's/^(from|import) ledger\.v1/\1 facade.api.gen.ledger.v1/'
find "$events" -name '*.py' -o -name '*.pyi' | xargs sed -i -E 's/^(from|import) ledger\.v1/\1 ledger_events.gen.ledger.v1/'
