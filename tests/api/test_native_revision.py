"""facade.api._native against chDB's own Native output: every type the walker knows is consumed exactly
(the rewritten result is the original plus the BlockInfo per block and one byte per column), the
handshake query's bytes are what a server writes at a revision, and a type it does not know is refused."""

from __future__ import annotations

import chdb
import pytest

from facade.api._native import REVISION_CUSTOM_SERIALIZATION, NativeFormatError, at_revision

CLIENT_REVISION = 54460
BLOCK_INFO_BYTES = 8

TYPED = (
    "SELECT number, toString(number) AS s, map('k', toString(number), 'q''\\\\', '') AS m, [number, 1] AS a, "
    "if(number % 2, NULL, number) AS n, (number, 'x') AS t, CAST((1, 'y') AS Tuple(a UInt8, b String)) AS nt, "
    "toDecimal64(number, 3) AS d, toDecimal128(number, 20) AS d128, toDateTime64(number, 9, 'UTC') AS dt, "
    "toUInt128(number) AS u, toInt256(number) AS i, toFixedString('ab', 2) AS f, "
    "toLowCardinality(toString(number % 300)) AS lc, CAST('a' AS Enum8('a' = 1, 'b,(' = 2)) AS e, "
    "toUUID('00000000-0000-0000-0000-000000000001') AS uu, [toLowCardinality('q')] AS alc, "
    "toLowCardinality(toNullable('z')) AS lcn, toDate(number) AS day, [[number]] AS nested, "
    "map('a', [1, 2]) AS ma FROM numbers(100000)"
)


def native(sql: str) -> bytes:
    return bytes(chdb.query(sql, "Native").bytes())  # type: ignore[no-untyped-call]  # chdb ships no hints.


def test_every_known_type_is_walked_exactly() -> None:
    payload = native(TYPED)
    columns = 21
    assert payload[0] == columns  # The first block's column count (one varint byte).
    rewritten = at_revision(payload, CLIENT_REVISION)  # Raises (or asserts) unless every byte is consumed.
    blocks = (len(rewritten) - len(payload)) // (BLOCK_INFO_BYTES + columns)
    assert blocks >= 1 and len(rewritten) == len(payload) + blocks * (BLOCK_INFO_BYTES + columns)
    assert at_revision(payload, 0) == payload
    assert len(at_revision(payload, REVISION_CUSTOM_SERIALIZATION - 1)) == len(payload) + blocks * BLOCK_INFO_BYTES


def test_the_handshake_as_a_server_writes_it() -> None:
    rewritten = at_revision(native("SELECT 'vm' AS n, toUInt32(54515) AS r"), CLIENT_REVISION)
    assert rewritten == (
        b"\x01\x00\x02\xff\xff\xff\xff\x00"  # BlockInfo: is_overflows = 0, bucket_num = -1, end.
        b"\x02\x01"  # Two columns, one row.
        b"\x01n\x06String\x00\x02vm"  # Name, type, no custom serialization, data.
        b"\x01r\x06UInt32\x00\xf3\xd4\x00\x00"
    )
    assert at_revision(b"", CLIENT_REVISION) == b""  # No rows, no block: an empty body.


@pytest.mark.parametrize("sql", ["SELECT CAST(1 AS Variant(UInt8, String)) AS v", "SELECT sumState(1) AS s"])
def test_an_unknown_type_is_refused(sql: str) -> None:
    with pytest.raises(NativeFormatError, match="not served in Native"):
        at_revision(native(sql), CLIENT_REVISION)
