"""Entries as consumers outside the project read them: kcat over proto3 JSON values, and `protoc --decode`
with the descriptor set `ledger kafka schema` writes; CloudEvents headers on every record."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from facade.changes.poller import ChangeCapture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, Transfer
from facade.kafka.entries_publisher import KafkaEntryPublisher
from facade.settings import KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_events.records import RecordDecodeError, ValueEncoding, decode_value, encode_value
from ledger_testkit.kafka_broker import KafkaCluster
from ledger_testkit.service import ledger_executable
from tests.kafka_fixtures import create_topics, unique_topic

pytestmark = pytest.mark.kafka
TRANSFERS = 5
AMOUNT = 1234567890123456789012345  # Beyond u64: must survive both encodings exactly.
KCAT_TIMEOUT_SECONDS = 60


async def publish_entries(tmp_path: Path, settings: KafkaSettings) -> None:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    try:
        await engine.create_accounts([Account(id=i, ledger=840, code=1) for i in (1, 2)])
        await engine.create_transfers(
            [Transfer(id=100 + i, debit_account_id=1, credit_account_id=2, amount=AMOUNT, ledger=840, code=1)
             for i in range(TRANSFERS)]
        )  # fmt: skip
        capture = ChangeCapture(engine, KafkaEntryPublisher(settings), tmp_path / "capture.json")
        assert await capture.run_once() == TRANSFERS
    finally:
        await engine.close()


def kcat(*args: str) -> subprocess.CompletedProcess[bytes]:
    kcat_path = shutil.which("kcat")
    assert kcat_path, "kcat is installed by scripts/install_test_tools.sh"
    return subprocess.run([kcat_path, *args], capture_output=True, timeout=KCAT_TIMEOUT_SECONDS, check=True)


async def test_kcat_reads_json_entries_with_cloudevents_headers(kafka_cluster: KafkaCluster, tmp_path: Path) -> None:
    topic = unique_topic("ledger.entries.json")
    create_topics(kafka_cluster.bootstrap_servers, [topic], partitions=1)
    settings = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers, entries_topic=topic,
                             entries_encoding="json")  # fmt: skip
    await publish_entries(tmp_path, settings)
    out = kcat("-C", "-b", kafka_cluster.bootstrap_servers, "-t", topic, "-o", "beginning", "-e", "-q",
               "-c", str(2 * TRANSFERS), "-f", "%h\t%s\n").stdout.decode()  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 2 * TRANSFERS
    for line in lines:
        header_text, value = line.split("\t", 1)
        headers = dict(pair.split("=", 1) for pair in header_text.split(","))
        entry = json.loads(value)
        assert entry["amount"] == str(AMOUNT)  # u128 as a decimal string: exact in any JSON reader.
        assert entry["ledger"] == 840 and entry["side"] in ("DEBIT", "CREDIT")
        assert headers["ce_specversion"] == "1.0" and headers["ce_type"] == "ledger.v1.LedgerEntry"
        assert headers["ce_id"] == entry["event_id"]
        assert headers["content-type"] == "application/json"
        assert headers["ce_dataschema"] == "urn:ledger:schema:ledger.v1.LedgerEntry:v1"
        assert headers["ce_time"].endswith("Z") and len(headers["ce_time"]) == len("2026-01-01T00:00:00.000000000Z")
    assert {json.loads(line.split("\t", 1)[1])["account_id"] for line in lines} == {"1", "2"}


async def test_protoc_decodes_protobuf_entries_with_the_shipped_descriptor_set(
    kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    topic = unique_topic("ledger.entries.pb")
    create_topics(kafka_cluster.bootstrap_servers, [topic], partitions=1)
    await publish_entries(
        tmp_path, KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers, entries_topic=topic)
    )
    ledger = ledger_executable()
    descriptors = tmp_path / "ledger_v1.binpb"
    subprocess.run([ledger, "kafka", "schema", "--out", str(descriptors)], check=True, timeout=60)
    value = kcat("-C", "-b", kafka_cluster.bootstrap_servers, "-t", topic, "-o", "beginning", "-e", "-q",
                 "-c", "1", "-f", "%s").stdout  # fmt: skip
    protoc = shutil.which("protoc")
    assert protoc, "protoc is installed by scripts/install_test_tools.sh"
    decoded = subprocess.run(
        [protoc, "--decode=ledger.v1.LedgerEntry", f"--descriptor_set_in={descriptors}"],
        input=value, capture_output=True, check=True, timeout=60,
    ).stdout.decode()  # fmt: skip
    assert f'amount: "{AMOUNT}"' in decoded
    assert "side: DEBIT" in decoded and 'account_id: "1"' in decoded and "ledger: 840" in decoded
    assert "change: SINGLE_PHASE" in decoded


def test_both_encodings_round_trip_and_refuse_garbage() -> None:
    entry = entries_pb2.LedgerEntry(event_id="9:C", amount=str(2**128 - 1), engine_timestamp=2**64 - 1)
    entry.chain.hash = bytes(range(32))
    for encoding in ValueEncoding:
        value = encode_value(entry, encoding)
        assert decode_value(entries_pb2.LedgerEntry, value, encoding.content_type) == entry
    assert decode_value(entries_pb2.LedgerEntry, entry.SerializeToString(), None) == entry  # No header: protobuf.
    with pytest.raises(RecordDecodeError, match=r"not a proto3 JSON ledger\.v1\.LedgerEntry"):
        decode_value(entries_pb2.LedgerEntry, b'{"amount": 5, "nope": 1}', "application/json")
    with pytest.raises(RecordDecodeError, match=r"not a protobuf ledger\.v1\.LedgerEntry"):
        decode_value(entries_pb2.LedgerEntry, b"\xff\xff\xff", "application/x-protobuf")
    with pytest.raises(RecordDecodeError, match="unsupported content-type"):
        decode_value(entries_pb2.LedgerEntry, b"", "text/csv")


def test_confluent_framed_values_decode_without_the_registry() -> None:
    """Confluent's wire format (magic 0, big-endian schema id, zig-zag varint message-index path, payload),
    as its serializers write it with a registry: [0] as the single byte 0, or an explicit path."""
    entry = entries_pb2.LedgerEntry(event_id="7:D", amount="42")
    payload = entry.SerializeToString()
    schema_id = (1234).to_bytes(4, "big")
    shorthand = b"\x00" + schema_id + b"\x00" + payload  # Path [0]: the first message of the schema.
    explicit = b"\x00" + schema_id + b"\x02\x00" + payload  # Path of length 1 (zig-zag 1 = 0x02): [0].
    for value in (shorthand, explicit):
        assert decode_value(entries_pb2.LedgerEntry, value, "application/x-protobuf") == entry
    with pytest.raises(RecordDecodeError):
        decode_value(entries_pb2.LedgerEntry, b"\x00\x00\x00", "application/x-protobuf")
