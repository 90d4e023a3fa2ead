"""The JSON gateway against the proto descriptors: every unary ledger.v1.Ledger and ledger.v1.History RPC
has a route (its operation carries `x-grpc-method` = the full gRPC method path), the route's path, query
and body parameters are the request message's fields, and its response schema is the response message,
field by field and recursively, with the gateway's JSON forms of the proto types:

    string, bytes (base64)            string
    bool                              boolean
    32-bit integers                   integer
    64-bit integers                   string (decimal: beyond 2^53 a JSON number rounds) or integer
    enum                              string, its values among the enum's value names
    message                           object with the message's fields
    repeated / map<string, V>         array of / object whose additionalProperties are V

The schema is the served one (GET /openapi.json, i.e. app.openapi()) of the behaviour suite's server,
which has the read model and audit evidence on, so every route exists. A failure lists every difference.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor

from facade.api.gen.ledger.v1 import history_pb2, ledger_pb2
from tests.behaviour._clients import Rpc
from tests.behaviour.conftest import Server

SERVICES: tuple[ServiceDescriptor, ...] = (
    ledger_pb2.DESCRIPTOR.services_by_name["Ledger"],
    history_pb2.DESCRIPTOR.services_by_name["History"],
)
SCHEMA_DEPTH_MAX = 16
"""Deeper than any ledger.v1 message nests: a bound on the recursive comparison."""
HTTP_METHODS = ("get", "post", "put", "patch", "delete")

HTTP_ONLY_PARAMETERS: Mapping[tuple[str, str], str] = {
    ("/ledger.v1.Ledger/ListAccountEntries", "order"): "asc|desc, the gateway's older spelling of `descending`",
}
"""Route parameters that are no message field, each with why it may stay."""
QUERY_MAP_PARAMETERS: Mapping[str, str] = {
    "label": "labels",  # A map over a query string: `label=key=value`, repeated (all must match).
    "account_label": "account_labels",  # ListAccounts: the accounts' own labels, as `label`.
}
"""Query parameters that carry a map field of a flattened filter message: parameter → map field name."""
FIELD_FORMS: Mapping[str, str] = {
    "ledger.v1.ItemError.code": "string",  # A google.rpc.Code number: its name, as in every HTTP error body.
}
"""Fields whose JSON type differs from the table above on purpose: field full name → JSON type."""

_INTEGER_32 = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
}
_INTEGER_64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
_SCALAR_TYPES: Mapping[int, frozenset[str]] = {
    FieldDescriptor.TYPE_STRING: frozenset({"string"}),
    FieldDescriptor.TYPE_BYTES: frozenset({"string"}),
    FieldDescriptor.TYPE_BOOL: frozenset({"boolean"}),
    FieldDescriptor.TYPE_ENUM: frozenset({"string"}),
    FieldDescriptor.TYPE_FLOAT: frozenset({"number"}),
    FieldDescriptor.TYPE_DOUBLE: frozenset({"number"}),
    **{kind: frozenset({"integer"}) for kind in _INTEGER_32},
    **{kind: frozenset({"string", "integer"}) for kind in _INTEGER_64},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.method.upper()} {self.path}"


class Schemas:
    """The document's component schemas, and the comparison of one schema with one message."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components: dict[str, Any] = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Follows $ref, a one-branch allOf, and `anyOf [X, null]` (an optional field) to the schema itself."""
        for _ in range(SCHEMA_DEPTH_MAX):
            if "$ref" in schema:
                schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
            elif len(schema.get("allOf", ())) == 1:
                schema = schema["allOf"][0]
            elif "anyOf" in schema:
                branches = [branch for branch in schema["anyOf"] if branch.get("type") != "null"]
                if len(branches) != 1:
                    return schema
                schema = branches[0]
            else:
                return schema
        raise AssertionError(f"schema references nest deeper than {SCHEMA_DEPTH_MAX}")

    def message(self, descriptor: Descriptor, schema: dict[str, Any], where: str, depth: int = 0) -> Iterator[str]:
        """The differences between `descriptor`'s fields and an object schema's properties."""
        assert depth <= SCHEMA_DEPTH_MAX, where
        schema = self.resolve(schema)
        if schema.get("type") != "object" or "properties" not in schema:
            yield f"{where}: {descriptor.full_name} is an object schema with properties, got {_brief(schema)}"
            return
        properties: dict[str, Any] = schema["properties"]
        for name in sorted(set(properties) - set(descriptor.fields_by_name)):
            yield f"{where}.{name}: not a field of {descriptor.full_name}"
        for field in descriptor.fields:
            if field.name not in properties:
                yield f"{where}.{field.name}: field of {descriptor.full_name} missing from the schema"
            else:
                yield from self.field(field, properties[field.name], f"{where}.{field.name}", depth)

    def field(self, field: FieldDescriptor, schema: dict[str, Any], where: str, depth: int) -> Iterator[str]:
        schema = self.resolve(schema)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if schema.get("type") != "object" or not isinstance(schema.get("additionalProperties"), dict):
                yield f"{where}: a map is an object with additionalProperties, got {_brief(schema)}"
                return
            yield from self.value(entry.fields_by_name["value"], schema["additionalProperties"], where + "{}", depth)
        elif field.is_repeated:
            if schema.get("type") != "array" or "items" not in schema:
                yield f"{where}: a repeated field is an array, got {_brief(schema)}"
                return
            yield from self.value(field, schema["items"], where + "[]", depth)
        else:
            yield from self.value(field, schema, where, depth)

    def value(self, field: FieldDescriptor, schema: dict[str, Any], where: str, depth: int) -> Iterator[str]:
        """One value of `field` (an element, for a repeated or map field) against its schema."""
        schema = self.resolve(schema)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            yield from self.message(field.message_type, schema, where, depth + 1)
            return
        forced = FIELD_FORMS.get(field.full_name)
        expected = frozenset({forced}) if forced else _SCALAR_TYPES[field.type]
        if schema.get("type") not in expected:
            yield f"{where}: {_proto_type(field)} is JSON {' or '.join(sorted(expected))}, got {_brief(schema)}"
            return
        if field.enum_type is not None and "enum" in schema:
            names = {value.name for value in field.enum_type.values}
            for value in sorted(set(schema["enum"]) - names):
                yield f"{where}: {value!r} is not a value of {field.enum_type.full_name}"


def _proto_type(field: FieldDescriptor) -> str:
    if field.enum_type is not None:
        return field.enum_type.full_name
    names = {value: name for name, value in vars(FieldDescriptor).items() if name.startswith("TYPE_")}
    return names[field.type].removeprefix("TYPE_").lower()


def _brief(schema: dict[str, Any]) -> str:
    return str({key: schema[key] for key in ("type", "$ref", "anyOf", "enum") if key in schema} or schema)[:160]


def _operations(document: dict[str, Any]) -> dict[str, list[Operation]]:
    """Operations by their x-grpc-method."""
    found: dict[str, list[Operation]] = {}
    for path, item in document["paths"].items():
        for method in HTTP_METHODS:
            spec = item.get(method)
            if spec is not None and "x-grpc-method" in spec:
                found.setdefault(spec["x-grpc-method"], []).append(Operation(method, path, spec))
    return found


def _request_parameters(schemas: Schemas, operation: Operation) -> dict[str, dict[str, Any]]:
    """Path and query parameters and the JSON body's properties: name → schema."""
    parameters = {
        p["name"]: p.get("schema", {}) for p in operation.spec.get("parameters", ()) if p["in"] in ("path", "query")
    }
    content = operation.spec.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        body = schemas.resolve(content["application/json"]["schema"])
        for name, schema in body.get("properties", {}).items():
            assert name not in parameters, f"{operation.name}: {name} both a parameter and in the body"
            parameters[name] = schema
    return parameters


def _response_schema(operation: Operation) -> dict[str, Any] | None:
    responses = operation.spec.get("responses", {})
    for status in ("200", "201"):
        content = responses.get(status, {}).get("content", {})
        if "application/json" in content:
            schema: dict[str, Any] = content["application/json"]["schema"]
            return schema
    return None


def _is_map(field: FieldDescriptor | None) -> bool:
    return field is not None and field.message_type is not None and field.message_type.GetOptions().map_entry


def _flattened_field(request: Descriptor, name: str) -> tuple[FieldDescriptor, FieldDescriptor] | None:
    """The (message field, its sub-field) a flattened query parameter stands for, if any."""
    for parent in request.fields:
        if parent.message_type is None or parent.message_type.GetOptions().map_entry:
            continue
        child = parent.message_type.fields_by_name.get(QUERY_MAP_PARAMETERS.get(name, name))
        if child is not None:
            return parent, child
    return None


def parity_differences(document: dict[str, Any]) -> list[str]:
    """Every way the gateway's OpenAPI document differs from the ledger.v1 unary RPCs."""
    schemas, operations, differences = Schemas(document), _operations(document), []
    for service in SERVICES:
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue  # Streaming RPCs may stay gRPC-only (issue 11).
            rpc = f"/{service.full_name}/{method.name}"
            routes = operations.pop(rpc, [])
            if not routes:
                differences.append(f"{rpc}: no route carries x-grpc-method {rpc!r}")
                continue
            fields = method.input_type.fields_by_name
            covered: set[str] = set()
            for operation in routes:
                where = f"{rpc} {operation.name}"
                for name, schema in _request_parameters(schemas, operation).items():
                    if name in fields:
                        covered.add(name)
                        differences.extend(schemas.field(fields[name], schema, f"{where} request {name}", 0))
                    elif _is_map(fields.get(QUERY_MAP_PARAMETERS.get(name, ""))):
                        covered.add(QUERY_MAP_PARAMETERS[name])  # A top-level map, as `key=value` items.
                    elif (flattened := _flattened_field(method.input_type, name)) is not None:
                        # A GET route flattens a filter message into query parameters (google.api.http
                        # does the same with `filter.source`; our routes drop the prefix).
                        parent, child = flattened
                        covered.add(parent.name)
                        if child.message_type is None or not child.message_type.GetOptions().map_entry:
                            differences.extend(schemas.field(child, schema, f"{where} request {name}", 0))
                    elif (rpc, name) not in HTTP_ONLY_PARAMETERS:
                        differences.append(
                            f"{where}: parameter {name!r} is not a field of {method.input_type.full_name}"
                        )
                response = _response_schema(operation)
                if response is None:
                    differences.append(f"{where}: no JSON success response")
                else:
                    differences.extend(schemas.message(method.output_type, response, f"{where} response"))
            differences.extend(
                f"{rpc}: request field {name!r} of {method.input_type.full_name} reaches no route"
                for name in sorted(set(fields) - covered)
            )
    differences.extend(f"{rpc}: x-grpc-method names no unary ledger.v1 RPC" for rpc in sorted(operations))
    return differences


@pytest.mark.asyncio(loop_scope="package")
async def test_every_unary_rpc_has_a_route_whose_models_match_its_messages(server: Server) -> None:
    response = await server.http.get("/openapi.json")
    assert response.status_code == 200, response.text
    differences = parity_differences(response.json())
    assert not differences, "the JSON gateway differs from the proto descriptors:\n" + "\n".join(differences)


def test_the_comparison_finds_what_differs() -> None:
    """The comparison itself, on a hand-made document: a missing route, a missing and an extra field, a
    wrong type, an enum value that does not exist, and a nested message."""
    leg = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["LEG_TYPE_CREDIT", "LEG_TYPE_SIDEWAYS"]},
            "account_id": {"type": "string"},
            "from_account_id": {"type": "string"},
            "to_account_id": {"type": "string"},
            "amount": {"type": "integer"},
            "currency": {"type": "string"},
        },
    }
    balance = {"type": "object", "properties": {name: {"type": "string"} for name in ("currency", "posted", "extra")}}
    document = {
        "components": {"schemas": {"Leg": leg, "Balance": balance}},
        "paths": {
            "/balance/{account_id}": {
                "get": {
                    "x-grpc-method": "/ledger.v1.Ledger/GetBalance",
                    "parameters": [{"name": "account_id", "in": "path", "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Balance"}}}}
                    },
                }
            },
            "/echo": {
                "post": {
                    "x-grpc-method": "/ledger.v1.Ledger/PostTransaction",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "idempotency_key": {"type": "string"},
                                        "legs": {"type": "array", "items": {"$ref": "#/components/schemas/Leg"}},
                                        "surprise": {"type": "string"},
                                    },
                                }
                            }
                        }
                    },
                }
            },
        },
    }
    found = "\n".join(parity_differences(document))
    assert "/ledger.v1.Ledger/CreateAccount: no route" in found
    assert "/ledger.v1.History/Reconcile: no route" in found
    assert "response.extra: not a field of ledger.v1.Balance" in found
    assert "response.pending_debits: field of ledger.v1.Balance missing" in found
    assert "request legs[].amount: string is JSON string, got {'type': 'integer'}" in found
    assert "'LEG_TYPE_SIDEWAYS' is not a value of ledger.v1.LegType" in found
    assert "parameter 'surprise' is not a field of ledger.v1.PostTransactionRequest" in found
    assert "request field 'metadata' of ledger.v1.PostTransactionRequest reaches no route" in found
    assert "POST /echo: no JSON success response" in found
    assert "/ledger.v1.Ledger/StreamTransactions" not in found, "streaming RPCs may stay gRPC-only"


def test_the_behaviour_clients_speak_every_unary_rpc() -> None:
    """The suite's Rpc table is the services' unary RPCs, so no RPC is left out of the two clients."""
    unary = {
        f"/{service.full_name}/{method.name}"
        for service in SERVICES
        for method in service.methods
        if not (method.client_streaming or method.server_streaming)
    }
    assert {rpc.value for rpc in Rpc} == unary
