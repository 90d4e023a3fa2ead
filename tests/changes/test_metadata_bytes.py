"""The chain hashes metadata_bytes: its direct assembly must equal the canonical JSON of the metadata
mapping (its definition, which the verifier and the read-model rows use) for any metadata at all."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_events.entries import metadata_bytes, metadata_bytes_generic
from ledger_events.gen.ledger.v1 import entries_pb2

EXAMPLES = 400
# Any Unicode a protobuf string can hold (no lone surrogates): quotes, backslashes, controls, non-ASCII.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        dict.fromkeys(
            (
                "transaction_id",
                "idempotency_key",
                "client_id",
                "transaction_type",
                "source",
                "correlation_id",
                "description",
                "currency",
            ),
            TEXT,
        )
    ),
    labels=st.dictionaries(TEXT, TEXT, max_size=6),
    leg_index=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_the_direct_assembly_is_the_canonical_json(
    fields: dict[str, str], labels: dict[str, str], leg_index: int
) -> None:
    metadata = entries_pb2.EntryMetadata(**fields, labels=labels, leg_index=leg_index)
    assert metadata_bytes(metadata) == metadata_bytes_generic(metadata)


def test_edge_values() -> None:
    tricky = '"\\\n\t\x00\x1f\x7f é ☃ 𝄞 </script>'
    metadata = entries_pb2.EntryMetadata(
        transaction_id=tricky, description=tricky, labels={tricky: tricky, "": "", "b": "a", "a": "b"}
    )
    assert metadata_bytes(metadata) == metadata_bytes_generic(metadata)
    assert metadata_bytes(entries_pb2.EntryMetadata()) == metadata_bytes_generic(entries_pb2.EntryMetadata())
    assert metadata_bytes(None) == metadata_bytes_generic(None) == b""
