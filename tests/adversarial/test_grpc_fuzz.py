"""A hypothesis fuzz over every request message of ledger.v1.Ledger and ledger.v1.History, on loopback.

Bodies of three kinds, sent through a generic channel call with identity serializers: messages generated
from the descriptors (every field, nested messages, repeated fields, maps, unknown enum numbers; strings
from arbitrary Unicode, decimal-looking text and ids that exist), such messages with bytes overwritten
and their tail cut, and raw random bytes. Every answer must be OK or a deliberate status: never UNKNOWN,
INTERNAL, DATA_LOSS or UNIMPLEMENTED, never a Python exception's or a database's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from facade.api.gen.ledger.v1 import history_pb2, ledger_pb2
from tests.adversarial.conftest import Served

EXAMPLES_PER_METHOD_MAX = 25
"""Per method and kind (generated message, raw bytes): bounded so the suite stays quick."""
CALL_TIMEOUT_SECONDS = 30.0
"""A bound on each call, so a hang fails the test instead of stalling it."""
NESTING_MAX = 3
REPEATED_MAX = 3
STREAM_MESSAGES_MAX = 3
FORBIDDEN = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED}
)
LEAK_MARKERS = ("Traceback", "Exception", "Error(", "sqlite", "ClickHouse", "DB::", 'File "', "Unexpected <class")
SERVICES = (
    ledger_pb2.DESCRIPTOR.services_by_name["Ledger"],
    history_pb2.DESCRIPTOR.services_by_name["History"],
)
U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1


@dataclass
class Tally:
    calls: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _text(known: list[str]) -> st.SearchStrategy[str]:
    """Protobuf strings hold valid Unicode only (no surrogates); the rest of the code space is fair game."""
    return st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=24),
        st.integers(0, U128_MAX + 1).map(str),
        st.sampled_from(["", "0", "-1", "01", "1e3", " 1", "USD", "usd", "\\", "'", '"', "\0", "a\\nb"]),
        st.sampled_from(known),
    )


def _scalar(kind: FieldDescriptor, known: list[str]) -> st.SearchStrategy[Any]:
    t = FieldDescriptor
    if kind.type == t.TYPE_STRING:
        return _text(known)
    if kind.type == t.TYPE_BYTES:
        return st.binary(max_size=24)
    if kind.type == t.TYPE_BOOL:
        return st.booleans()
    if kind.type == t.TYPE_ENUM:
        return st.integers(-2, 5)  # proto3 enums are open: unknown numbers must be refused, not crash.
    if kind.type in (t.TYPE_UINT64, t.TYPE_FIXED64):
        return st.integers(0, U64_MAX)
    if kind.type in (t.TYPE_UINT32, t.TYPE_FIXED32):
        return st.integers(0, (1 << 32) - 1)
    if kind.type in (t.TYPE_INT64, t.TYPE_SINT64, t.TYPE_SFIXED64):
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if kind.type in (t.TYPE_INT32, t.TYPE_SINT32, t.TYPE_SFIXED32):
        return st.integers(-(1 << 31), (1 << 31) - 1)
    if kind.type in (t.TYPE_DOUBLE, t.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    raise AssertionError(f"unhandled field type {kind.type} of {kind.full_name}")


def _fill(message: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        kind = message.DESCRIPTOR.fields_by_name[name]
        if kind.message_type is not None and kind.message_type.GetOptions().map_entry:
            getattr(message, name).update(value)
        elif kind.is_repeated:
            target = getattr(message, name)
            if kind.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif kind.message_type is not None:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def messages(descriptor: Descriptor, known: list[str], depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor` with any subset of fields set, from the descriptor alone."""
    assert depth <= NESTING_MAX
    message_class = GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for kind in descriptor.fields:
        if kind.message_type is not None and kind.message_type.GetOptions().map_entry:
            key = kind.message_type.fields_by_name["key"]
            value = kind.message_type.fields_by_name["value"]
            fields[kind.name] = st.dictionaries(_scalar(key, known), _scalar(value, known), max_size=REPEATED_MAX)
            continue
        if kind.message_type is not None:
            if depth == NESTING_MAX:
                continue
            single: st.SearchStrategy[Any] = messages(kind.message_type, known, depth + 1)
        else:
            single = _scalar(kind, known)
        if kind.is_repeated:
            fields[kind.name] = st.lists(single, max_size=REPEATED_MAX)
        else:
            fields[kind.name] = single
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _fill(message_class(), values))


def _mutated(body: bytes, overwrites: list[tuple[int, int]], keep: int) -> bytes:
    """`body` with some bytes overwritten and its tail cut: nearly valid, the hardest bytes to parse."""
    if not body:
        return body
    damaged = bytearray(body)
    for position, value in overwrites:
        damaged[position % len(damaged)] = value
    return bytes(damaged[: max(1, keep % (len(damaged) + 1))])


def _identity(data: bytes) -> bytes:
    return data


def _call(channel: grpc.Channel, method: MethodDescriptor, bodies: list[bytes], token: str) -> grpc.StatusCode:
    """Sends `bodies` (one for a unary method) and drains the answer; the final status code."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, request_serializer=_identity, response_deserializer=_identity)
            for _ in stream(iter(bodies), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS):
                pass
        elif method.server_streaming:
            answers = channel.unary_stream(path, request_serializer=_identity, response_deserializer=_identity)
            for _ in answers(bodies[0], metadata=metadata, timeout=CALL_TIMEOUT_SECONDS):
                pass
        else:
            unary = channel.unary_unary(path, request_serializer=_identity, response_deserializer=_identity)
            unary(bodies[0], metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        details: str = error.details() or ""
        assert code not in FORBIDDEN, f"{path}: {code.name}: {details}"
        assert not any(marker.lower() in details.lower() for marker in LEAK_MARKERS), f"{path}: {details}"
        return code
    return grpc.StatusCode.OK


def _methods() -> Iterator[MethodDescriptor]:
    for service in SERVICES:
        yield from service.methods


def _seed(channel: grpc.Channel, token: str) -> list[str]:
    """An account with money and an authorization: ids that exist, for the strings to draw from."""
    metadata = (("authorization", f"Bearer {token}"),)
    create = channel.unary_unary(
        "/ledger.v1.Ledger/CreateAccount",
        request_serializer=ledger_pb2.CreateAccountRequest.SerializeToString,
        response_deserializer=ledger_pb2.Account.FromString,
    )
    account = create(
        ledger_pb2.CreateAccountRequest(
            currency="USD", external_reference="fuzz-1", type=ledger_pb2.ACCOUNT_TYPE_NO_OVERDRAFT
        ),
        metadata=metadata,
    )
    post = channel.unary_unary(
        "/ledger.v1.Ledger/PostTransaction",
        request_serializer=ledger_pb2.PostTransactionRequest.SerializeToString,
        response_deserializer=ledger_pb2.Transaction.FromString,
    )
    leg = ledger_pb2.Leg(type=ledger_pb2.LEG_TYPE_CREDIT, account_id=account.account_id, amount="500", currency="USD")
    held = post(
        ledger_pb2.PostTransactionRequest(
            idempotency_key="fuzz-h", legs=[leg], authorize_only=True,
            metadata=ledger_pb2.TransactionMetadata(correlation_id="fuzz-c"),
        ),
        metadata=metadata,
    )  # fmt: skip
    return [account.account_id, held.transaction_id, "fuzz-h", "fuzz-c"]


def _fuzz(
    channel: grpc.Channel, method: MethodDescriptor, bodies: st.SearchStrategy[list[bytes]], token: str, tally: Tally
) -> None:
    """Sends generated bodies to `method`; a forbidden status raises (after shrinking)."""

    @settings(
        max_examples=EXAMPLES_PER_METHOD_MAX,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(sent=bodies)
    def run(sent: list[bytes]) -> None:
        tally.calls += 1
        code = _call(channel, method, sent, token)
        tally.codes[code.name] = tally.codes.get(code.name, 0) + 1

    run()


def test_every_request_message_gets_a_deliberate_status(served: Served) -> None:
    tally = Tally()
    token = served.token("fuzz-client")
    with grpc.insecure_channel(served.grpc_target) as channel:
        known = _seed(channel, token)
        for method in _methods():
            generated = messages(method.input_type, known).map(lambda m: m.SerializeToString())
            damage = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)
            mutated = st.builds(_mutated, generated, damage, st.integers(0, 1 << 16))
            for kind, bodies in (
                ("message", st.lists(generated, min_size=1, max_size=STREAM_MESSAGES_MAX)),
                ("mutated", st.lists(mutated, min_size=1, max_size=STREAM_MESSAGES_MAX)),
                ("bytes", st.lists(st.binary(max_size=64), min_size=1, max_size=STREAM_MESSAGES_MAX)),
            ):
                try:
                    _fuzz(channel, method, bodies, token, tally)
                except AssertionError as error:
                    tally.failures.append(f"{method.full_name} [{kind}]: {error}")

    methods = sum(1 for _ in _methods())
    codes = sorted(tally.codes.items())
    print(f"\ngrpc fuzz: {methods} methods, {tally.calls} calls, {len(tally.failures)} failures, {codes}")
    assert tally.failures == [], "\n".join(tally.failures)
    assert tally.calls >= methods * 3
