"""The domain mapping on its own: ids, canonical decimals, and the canonical body that carries a
transaction through the metadata store and back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facade.domain.accounts import Currencies
from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.ids import account_id, transaction_id, transfer_id
from facade.domain.transactions import (
    Kind,
    Leg,
    Metadata,
    PostRequest,
    ResolveRequest,
    TransactionType,
    decode_transaction,
    map_post,
    map_resolution,
    parse_body_summary,
)
from facade.domain.validation import (
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LABEL_LENGTH_MAX,
    LABELS_COUNT_MAX,
    LEGS_MAX,
    parse_amount,
    parse_id,
)
from facade.engine.types import AMOUNT_MAX, U128_MAX, TransferFlags
from facade.settings import ApiSettings

CURRENCIES = Currencies(dict(ApiSettings().currencies))
ALICE, BOB = "11111111111111111111", "22222222222222222222"


def reason(error: pytest.ExceptionInfo[LedgerError]) -> str:
    return error.value.reason


def test_ids_are_unambiguous_and_never_reserved() -> None:
    # Without length prefixes these pairs would hash the same input.
    assert transaction_id("a", "bc") != transaction_id("ab", "c")
    assert transfer_id("a", "b1", 0) != transfer_id("a", "b", 10)
    assert account_id("a", "bc") != account_id("ab", "c")
    # Kinds are personalised: the same text never makes a transaction id and an account id alike.
    assert transaction_id("a", "b") != account_id("a", "b")
    ids = {transfer_id("client", "key", leg) for leg in range(LEGS_MAX)}
    assert len(ids) == LEGS_MAX and not ids & {0, U128_MAX}


@pytest.mark.parametrize("text", ["", "0", "-1", "+1", "01", "1.5", "1e3", " 1", "²", "1" * 40, str(AMOUNT_MAX)])
def test_amounts_must_be_canonical_positive_decimals(text: str) -> None:
    with pytest.raises(LedgerError) as error:
        parse_amount(text)
    assert error.value.kind == ErrorKind.INVALID and reason(error) == "INVALID_AMOUNT"


@pytest.mark.parametrize("text", ["1", "9", "10", str(AMOUNT_MAX - 1)])
def test_amounts_in_range(text: str) -> None:
    assert parse_amount(text) == int(text)


@pytest.mark.parametrize("text", ["", "0", "007", "x", "٣", str(U128_MAX)])
def test_ids_must_be_canonical(text: str) -> None:
    with pytest.raises(LedgerError) as error:
        parse_id(text, "account_id")
    assert reason(error) == "INVALID_ID"


def test_legs_become_one_linked_chain_with_documented_fields() -> None:
    metadata = Metadata(source="pos", correlation_id="o-1", occurred_at_ns=42)
    legs = [
        Leg(TransactionType.CREDIT, account_id=ALICE, amount="100", currency="USD"),
        Leg(TransactionType.TRANSFER, from_account_id=ALICE, to_account_id=BOB, amount="60", currency="USD"),
        Leg(TransactionType.DEBIT, account_id=BOB, amount="10", currency="USD"),
    ]
    mapped = map_post("client", PostRequest("key", legs, metadata), currencies=CURRENCIES)
    assert [t.flags & TransferFlags.LINKED for t in mapped.transfers] == [TransferFlags.LINKED] * 2 + [0]
    assert [t.code for t in mapped.transfers] == [1, 3, 2]
    assert {t.user_data_128 for t in mapped.transfers} == {mapped.transaction_id}
    assert {t.user_data_64 for t in mapped.transfers} == {42}
    assert all(t.ledger == 840 and t.user_data_32 != 0 for t in mapped.transfers)
    assert [t.id for t in mapped.transfers] == [transfer_id("client", "key", i) for i in range(3)]


def test_mixed_currencies_are_rejected() -> None:
    legs = [
        Leg(TransactionType.CREDIT, account_id=ALICE, amount="1", currency="USD"),
        Leg(TransactionType.CREDIT, account_id=BOB, amount="1", currency="EUR"),
    ]
    with pytest.raises(LedgerError) as error:
        map_post("client", PostRequest("key", legs, Metadata()), currencies=CURRENCIES)
    assert reason(error) == "CURRENCY_MISMATCH"


def test_resolutions_reference_the_authorized_legs() -> None:
    legs = [Leg(TransactionType.TRANSFER, from_account_id=ALICE, to_account_id=BOB, amount="300", currency="USD")]
    hold = map_post(
        "client", PostRequest("auth", legs, Metadata(), authorize_only=True, timeout_seconds=60), currencies=CURRENCIES
    )
    assert hold.transfers[0].flags == TransferFlags.PENDING and hold.transfers[0].timeout == 60
    capture = map_resolution("client", ResolveRequest("cap", True, "200", Metadata()), authorization=hold)
    assert capture.kind == Kind.CAPTURE and capture.authorization_id == hold.transaction_id
    [post] = capture.transfers
    assert (post.pending_id, post.amount, post.code, post.flags) == (
        hold.transfers[0].id,
        200,
        0,
        TransferFlags.POST_PENDING_TRANSFER,
    )
    [void] = map_resolution("client", ResolveRequest("void", False, "", Metadata()), authorization=hold).transfers
    assert (void.amount, void.flags) == (0, TransferFlags.VOID_PENDING_TRANSFER)
    assert decode_transaction("client", "cap", capture.body) == capture


texts = st.text(max_size=24)
# Valid keys: 1..128 UTF-8 bytes (a code point may take 4).
idempotency_keys = st.text(min_size=1, max_size=IDEMPOTENCY_KEY_LENGTH_MAX).filter(
    lambda key: len(key.encode()) <= IDEMPOTENCY_KEY_LENGTH_MAX
)
metadata_strategy = st.builds(
    Metadata,
    source=texts,
    correlation_id=texts,
    description=texts,
    labels=st.dictionaries(
        st.text(max_size=LABEL_LENGTH_MAX // 4), st.text(max_size=LABEL_LENGTH_MAX // 4), max_size=LABELS_COUNT_MAX
    ),
    occurred_at_ns=st.integers(0, 2**64 - 1),
)
amounts = st.integers(1, AMOUNT_MAX - 1).map(str)


@given(metadata=metadata_strategy, amounts=st.lists(amounts, min_size=1, max_size=LEGS_MAX), key=idempotency_keys)
def test_the_body_is_canonical_json_and_rebuilds_the_exact_transaction(
    metadata: Metadata, amounts: list[str], key: str
) -> None:
    legs = [
        Leg(TransactionType.TRANSFER, from_account_id=ALICE, to_account_id=BOB, amount=a, currency="JPY")
        for a in amounts
    ]
    mapped = map_post("client", PostRequest(key[:128], legs, metadata), currencies=CURRENCIES)
    # The hand-written encoder is byte-for-byte the compact json.dumps of the same value.
    assert mapped.body == json.dumps(json.loads(mapped.body), separators=(",", ":"))
    assert decode_transaction("client", key[:128], mapped.body) == mapped
    summary = parse_body_summary(mapped.body, len(legs) - 1)
    assert (summary.transaction_type, summary.currency, summary.metadata) == ("transfer", "JPY", metadata)


def test_the_fingerprint_covers_the_whole_payload() -> None:
    def fingerprint(amount: str = "5", description: str = "", labels: dict[str, str] | None = None) -> bytes:
        leg = Leg(TransactionType.CREDIT, account_id=ALICE, amount=amount, currency="USD")
        metadata = Metadata(description=description, labels=labels or {})
        return map_post("client", PostRequest("key", [leg], metadata), currencies=CURRENCIES).fingerprint

    assert fingerprint() == fingerprint()
    assert fingerprint(labels={"a": "1", "b": "2"}) == fingerprint(labels={"b": "2", "a": "1"})
    assert len({fingerprint(), fingerprint("6"), fingerprint(description="x"), fingerprint(labels={"a": ""})}) == 4


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        (
            Leg(type=TransactionType.TRANSFER, from_account_id=ALICE, to_account_id="0", amount="1"),
            "to_account_id",
            "INVALID_ID",
        ),
        (
            Leg(type=TransactionType.TRANSFER, from_account_id="01", to_account_id=BOB, amount="1"),
            "from_account_id",
            "INVALID_ID",
        ),
        (Leg(type=TransactionType.CREDIT, account_id="x", amount="1"), "account_id", "INVALID_ID"),
        (Leg(type=TransactionType.DEBIT, account_id=ALICE, amount="-1"), "amount", "INVALID_AMOUNT"),
    ],
)
def test_a_bad_leg_names_its_own_index_and_field(bad: Leg, field: str, reason: str) -> None:
    good = Leg(type=TransactionType.CREDIT, account_id=ALICE, amount="5", currency="USD")
    for index in (0, 2, LEGS_MAX - 1):
        legs = [good] * LEGS_MAX
        legs[index] = Leg(bad.type, bad.account_id, bad.from_account_id, bad.to_account_id, bad.amount, "USD")
        with pytest.raises(LedgerError) as raised:
            map_post("client", PostRequest("key", legs, Metadata()), currencies=CURRENCIES)
        assert (raised.value.reason, raised.value.metadata) == (reason, {"field": f"legs[{index}].{field}"})
