"""How the service's Kafka records look: value encodings and the header convention.

Values are `ledger.v1` protobuf messages, encoded per topic as chosen in settings:
- `protobuf` (default): the binary wire format. Decode with the descriptor set the package ships
  (`ledger kafka schema --out ledger_v1.binpb`, then `protoc --decode=ledger.v1.LedgerEntry
  --descriptor_set_in=ledger_v1.binpb`), or with code generated from `proto/ledger/v1/*.proto`.
- `json`: proto3 JSON (field names as in the .proto, u64 as decimal strings, bytes as base64, every
  field present), what kcat, Kafka Connect's JsonConverter (schemas.enable=false) and ClickHouse's Kafka
  engine (JSONEachRow) read directly.

Headers follow the CloudEvents 1.0 Kafka protocol binding, binary content mode, so standard tooling
recognises them without knowing this service:

    ce_specversion  1.0
    ce_id           the record's stable identity (an entry's event id: replays carry the same one)
    ce_source       the service that wrote it (`urn:ledger-service:<service name>`)
    ce_type         the message's full name (`ledger.v1.LedgerEntry`)
    ce_time         RFC 3339 UTC of the engine timestamp the record describes
    ce_dataschema   `urn:ledger:schema:<full name>:v<schema version>`
    content-type    application/x-protobuf | application/json
    traceparent     W3C trace context, where the record continues a traced request (results)

Decoding goes by `content-type` (protobuf when absent, as records written before these headers).

With a Confluent-compatible Schema Registry configured (`kafka.schema_registry_url`), protobuf values
are written by confluent-kafka's own `ProtobufSerializer` (schemas registered under
`<topic>-value`), in Confluent's wire format: magic byte 0, the 4-byte schema id, the message-index
path, then the protobuf bytes. Decoding recognises that framing by its magic byte (a protobuf message
can never start with 0x00: field number 0 does not exist) and reads it without the registry. This
project's machines reach no registry that could run a Schema Registry (Confluent's is not on Maven
Central, Karapace not on PyPI), so the serializer path is not exercised by the tests; the framing
decoder is, with Confluent's documented layout.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

__all__ = [
    "CONTENT_TYPE_HEADER",
    "SCHEMA_VERSION",
    "Header",
    "RecordDecodeError",
    "ValueEncoding",
    "cloud_event_headers",
    "decode_value",
    "encode_value",
    "header_value",
]

SCHEMA_VERSION = 1
"""Bumped with an incompatible change of the ledger.v1 messages (then they move to ledger.v2)."""
CONTENT_TYPE_HEADER = "content-type"
RFC3339_DIGITS = 9

Header = tuple[str, str | bytes | None]
_M = TypeVar("_M", bound=Message)


class ValueEncoding(enum.StrEnum):
    PROTOBUF = "protobuf"
    JSON = "json"

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self]


_CONTENT_TYPES = {ValueEncoding.PROTOBUF: "application/x-protobuf", ValueEncoding.JSON: "application/json"}
_ENCODINGS = {content_type: encoding for encoding, content_type in _CONTENT_TYPES.items()}


class RecordDecodeError(ValueError):
    """A record value that is not the expected message in the encoding its headers name."""


def encode_value(message: Message, encoding: ValueEncoding) -> bytes:
    if encoding is ValueEncoding.PROTOBUF:
        return message.SerializeToString()
    text = json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=None
    )
    return text.encode()


def decode_value(message_type: type[_M], value: bytes | None, content_type: str | None) -> _M:
    """Decodes by the record's content type; raises RecordDecodeError with a reason (never the library's
    exception text as the only clue)."""
    encoding = ValueEncoding.PROTOBUF if content_type is None else _ENCODINGS.get(content_type.split(";")[0].strip())
    name = message_type.DESCRIPTOR.full_name
    if encoding is None:
        raise RecordDecodeError(f"unsupported content-type {content_type!r} (expected one of {sorted(_ENCODINGS)})")
    if encoding is ValueEncoding.PROTOBUF:
        try:
            return message_type.FromString(_unframe(value or b""))
        except DecodeError:
            raise RecordDecodeError(f"not a protobuf {name}") from None
    message = message_type()
    try:
        json_format.Parse(value or b"", message)
    except (json_format.ParseError, UnicodeDecodeError):
        raise RecordDecodeError(f"not a proto3 JSON {name}") from None
    return message


CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_SIZE = 5
"""Magic byte + big-endian u32 schema id, before the message-index path."""
MESSAGE_INDEXES_MAX = 64


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """A zig-zag varint (Confluent's message-index encoding) at `offset`: (value, next offset)."""
    shift = result = 0
    for index in range(offset, min(len(data), offset + 10)):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), index + 1
        shift += 7
    raise DecodeError("truncated varint in the Confluent message-index path")


def _unframe(value: bytes) -> bytes:
    """The protobuf bytes of a value, without Confluent's framing when it has one."""
    if not value or value[0] != CONFLUENT_MAGIC:
        return value
    if len(value) < CONFLUENT_HEADER_SIZE + 1:
        raise DecodeError("truncated Confluent framing")
    count, offset = _read_varint(value, CONFLUENT_HEADER_SIZE)
    if count < 0 or count > MESSAGE_INDEXES_MAX:
        raise DecodeError("bad Confluent message-index count")
    # Count 0 is the shorthand for [0]: the first message type of the schema (ours: one per file).
    for _ in range(count):
        _, offset = _read_varint(value, offset)
    return value[offset:]


def cloud_event_headers(
    message: Message, *, event_id: str, time_ns: int, source: str, encoding: ValueEncoding
) -> list[Header]:
    assert event_id and time_ns >= 0
    full_name = message.DESCRIPTOR.full_name
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    time_text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"
    assert len(time_text) == len("2026-01-01T00:00:00.Z") + RFC3339_DIGITS
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", f"urn:ledger-service:{source}".encode()),
        ("ce_type", full_name.encode()),
        ("ce_time", time_text.encode()),
        ("ce_dataschema", f"urn:ledger:schema:{full_name}:v{SCHEMA_VERSION}".encode()),
        (CONTENT_TYPE_HEADER, encoding.content_type.encode()),
    ]


def header_value(headers: list[Header] | dict[str, str | bytes | None] | None, name: str) -> str | None:
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    for key, value in pairs:
        if key == name and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None
