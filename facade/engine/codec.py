"""TigerBeetle's 128-byte wire layouts for Account and Transfer (little-endian, as in tigerbeetle.zig).

The journal stores events in exactly these layouts: a stable, language-neutral format with fixed-size
records, and encoding doubles as validation. A field wider than its TigerBeetle type cannot be packed,
so a batch that encodes is a batch TigerBeetle itself could have received.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from facade.engine.types import Account, FieldRangeError, Transfer

EVENT_SIZE = 128
_MASK64 = (1 << 64) - 1

# Six u128 fields as (lo u64, hi u64) pairs, then the narrow fields.
_ACCOUNT = struct.Struct("<12Q Q I I I H H Q")
_TRANSFER = struct.Struct("<12Q Q I I I H H Q")
assert _ACCOUNT.size == EVENT_SIZE and _TRANSFER.size == EVENT_SIZE


def encode_transfers(transfers: Sequence[Transfer]) -> bytes:
    buffer = bytearray(EVENT_SIZE * len(transfers))
    pack_into = _TRANSFER.pack_into
    m = _MASK64
    offset = 0
    try:
        for t in transfers:
            i, d, c, a, p, u = (
                t.id,
                t.debit_account_id,
                t.credit_account_id,
                t.amount,
                t.pending_id,
                t.user_data_128,
            )
            if (i | d | c | a | p | u) >> 128 or min(i, d, c, a, p, u) < 0:
                raise FieldRangeError(f"transfer {t.id}: a u128 field is out of range")
            pack_into(
                buffer,
                offset,
                i & m,
                i >> 64,
                d & m,
                d >> 64,
                c & m,
                c >> 64,
                a & m,
                a >> 64,
                p & m,
                p >> 64,
                u & m,
                u >> 64,
                t.user_data_64,
                t.user_data_32,
                t.timeout,
                t.ledger,
                t.code,
                t.flags,
                t.timestamp,
            )
            offset += EVENT_SIZE
    except (struct.error, TypeError) as error:
        raise FieldRangeError(f"transfer at byte {offset}: {error}") from error
    return bytes(buffer)


def decode_transfers(data: bytes | memoryview) -> list[Transfer]:
    assert len(data) % EVENT_SIZE == 0
    return [
        Transfer(
            i0 | i1 << 64,
            d0 | d1 << 64,
            c0 | c1 << 64,
            a0 | a1 << 64,
            p0 | p1 << 64,
            u0 | u1 << 64,
            u64,
            u32,
            timeout,
            ledger,
            code,
            flags,
            timestamp,
        )
        for (
            i0,
            i1,
            d0,
            d1,
            c0,
            c1,
            a0,
            a1,
            p0,
            p1,
            u0,
            u1,
            u64,
            u32,
            timeout,
            ledger,
            code,
            flags,
            timestamp,
        ) in _TRANSFER.iter_unpack(data)
    ]


def encode_accounts(accounts: Sequence[Account]) -> bytes:
    buffer = bytearray(EVENT_SIZE * len(accounts))
    m = _MASK64
    offset = 0
    try:
        for a in accounts:
            i, dp, dpo, cp, cpo, u = (
                a.id,
                a.debits_pending,
                a.debits_posted,
                a.credits_pending,
                a.credits_posted,
                a.user_data_128,
            )
            if (i | dp | dpo | cp | cpo | u) >> 128 or min(i, dp, dpo, cp, cpo, u) < 0:
                raise FieldRangeError(f"account {a.id}: a u128 field is out of range")
            _ACCOUNT.pack_into(
                buffer,
                offset,
                i & m,
                i >> 64,
                dp & m,
                dp >> 64,
                dpo & m,
                dpo >> 64,
                cp & m,
                cp >> 64,
                cpo & m,
                cpo >> 64,
                u & m,
                u >> 64,
                a.user_data_64,
                a.user_data_32,
                a.reserved,
                a.ledger,
                a.code,
                a.flags,
                a.timestamp,
            )
            offset += EVENT_SIZE
    except (struct.error, TypeError) as error:
        raise FieldRangeError(f"account at byte {offset}: {error}") from error
    return bytes(buffer)


def decode_accounts(data: bytes | memoryview) -> list[Account]:
    assert len(data) % EVENT_SIZE == 0
    return [
        Account(
            i0 | i1 << 64,
            dp0 | dp1 << 64,
            dpo0 | dpo1 << 64,
            cp0 | cp1 << 64,
            cpo0 | cpo1 << 64,
            u0 | u1 << 64,
            u64,
            u32,
            ledger,
            code,
            flags,
            timestamp,
            reserved,
        )
        for (
            i0,
            i1,
            dp0,
            dp1,
            dpo0,
            dpo1,
            cp0,
            cp1,
            cpo0,
            cpo1,
            u0,
            u1,
            u64,
            u32,
            reserved,
            ledger,
            code,
            flags,
            timestamp,
        ) in _ACCOUNT.iter_unpack(data)
    ]
