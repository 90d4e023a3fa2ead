"""Value serializers for the service's Kafka producers: the plain encodings of ledger_events/records.py,
or confluent-kafka's own ProtobufSerializer when a Confluent-compatible Schema Registry is configured
(`kafka.schema_registry_url`): it registers each message's schema under `<topic>-value` and writes
Confluent's wire format, which Confluent's deserializers, Kafka Connect's ProtobufConverter and
ClickHouse's `ProtobufSingle`/Confluent formats read. See encoding.py for why this path is untested here.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from facade.settings import KafkaSettings
from ledger_events.records import ValueEncoding, encode_value

__all__ = ["ValueSerializer", "value_serializer"]

ValueSerializer = Callable[[Message], bytes]


def value_serializer(
    settings: KafkaSettings, *, message_type: type[Message], topic: str, encoding: ValueEncoding
) -> ValueSerializer:
    if not settings.schema_registry_url or encoding is not ValueEncoding.PROTOBUF:

        def plain(message: Message) -> bytes:
            return encode_value(message, encoding)

        return plain
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = SchemaRegistryClient({"url": settings.schema_registry_url})
    serializer = ProtobufSerializer(message_type, client, {"use.deprecated.format": False})
    context = SerializationContext(topic, MessageField.VALUE)

    def registered(message: Message) -> bytes:
        value: bytes = serializer(message, context)
        return value

    return registered
