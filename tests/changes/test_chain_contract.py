"""The event contract (ledger_events) agrees with the engine it describes: the chain hashes the
engine's own transfer layout, and every engine change type has an entry change."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from facade.engine.codec import encode_transfers
from facade.engine.types import ChangeEventType, Transfer, TransferFlags
from ledger_events.chain import TRANSFER_SIZE, transfer_bytes
from ledger_events.entries import ENTRY_CHANGES, EngineChange, Side, event_id
from ledger_events.gen.ledger.v1 import entries_pb2

U128 = st.integers(min_value=0, max_value=2**128 - 1)


@given(
    ids=st.tuples(U128, U128, U128, U128, U128, U128),
    user_data_64=st.integers(0, 2**64 - 1),
    small=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    code=st.integers(0, 2**16 - 1),
    timestamp=st.integers(0, 2**64 - 1),
)
def test_chain_transfer_bytes_are_the_engine_layout(
    ids: tuple[int, int, int, int, int, int],
    user_data_64: int,
    small: tuple[int, int, int],
    code: int,
    timestamp: int,
) -> None:
    transfer = Transfer(
        id=ids[0],
        debit_account_id=ids[1],
        credit_account_id=ids[2],
        amount=ids[3],
        pending_id=ids[4],
        user_data_128=ids[5],
        user_data_64=user_data_64,
        user_data_32=small[0],
        timeout=small[1],
        ledger=small[2],
        code=code,
        flags=TransferFlags.PENDING | TransferFlags.LINKED,
        timestamp=timestamp,
    )
    found = transfer_bytes(transfer)
    assert len(found) == TRANSFER_SIZE
    assert found == encode_transfers([transfer])


def test_every_engine_change_type_has_an_entry_change() -> None:
    assert {int(kind) for kind in ChangeEventType} == {int(kind) for kind in EngineChange} == set(ENTRY_CHANGES)
    for kind in ChangeEventType:
        assert EngineChange(kind).name == kind.name
        assert entries_pb2.EntryChange.Name(ENTRY_CHANGES[kind]) == kind.name


def test_event_ids_name_the_side() -> None:
    assert event_id(17, Side.DEBIT) == "17:D"
    assert event_id(17, Side.CREDIT) == "17:C"
