"""ClickHouse's Native format at the protocol revision an HTTP client asks for (`client_protocol_version`).

chDB writes Native as revision 0 (what a ClickHouse server writes to a client that names no revision):
per block the column and row counts, then per column its name, its type and its data. A server asked for
revision N > 0 (clickhouse-go sends its TCP protocol revision on every HTTP request and decodes the answer
at that revision) adds, per block, the BlockInfo fields, and from revision 54454 on, per column, a byte
saying whether the column has a custom (sparse) serialization. chDB cannot be told the revision (it is
not a setting, only an HTTP handler's parameter), so `at_revision` rewrites chDB's bytes: it walks each
column's data by its type, to find where the next column starts, and copies it unchanged.

Types walked: every fixed-width type, String, FixedString, Nullable, Array, Map, Tuple (named or not),
LowCardinality (its state prefix, the key version, comes first for the whole column, then per block its
index type, its additional keys and its indexes); anything else (JSON, Dynamic, Variant,
AggregateFunction, ...) is refused with a clear NativeFormatError.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["REVISION_CUSTOM_SERIALIZATION", "NativeFormatError", "at_revision"]

REVISION_CUSTOM_SERIALIZATION = 54454
"""DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION: from this revision on, each column carries the byte."""
BLOCKS_MAX = 1_000_000
"""A bound on the blocks of one result (chDB writes ~65k rows per block; results are at most 256 MiB)."""
TYPE_DEPTH_MAX = 32
"""Nesting of Array/Map/Tuple/Nullable walked; deeper is refused."""
VARINT_BYTES_MAX = 10
_BLOCK_INFO = bytes([1, 0, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0])
"""Field 1 is_overflows = false, field 2 bucket_num = -1, field 0: the end (as a server writes it)."""
_NO_CUSTOM_SERIALIZATION = b"\x00"

_WIDTHS = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "DateTime", "Date32", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}
_INTERVAL = re.compile(r"Interval[A-Za-z]+")
_NAMED_ELEMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*|`[^`]*`)\s+(.+)", re.DOTALL)


class NativeFormatError(ValueError):
    """The result holds a type this endpoint cannot write at the client's revision, or chDB's bytes do not
    parse (never expected: a defect, reported to the client as an error rather than as wrong bytes)."""


@dataclass
class _Reader:
    data: bytes
    position: int = 0

    def take(self, count: int) -> None:
        if count < 0 or self.position + count > len(self.data):
            raise NativeFormatError("truncated Native data")
        self.position += count

    def varint(self) -> int:
        value = 0
        for shift in range(0, 7 * VARINT_BYTES_MAX, 7):
            if self.position >= len(self.data):
                raise NativeFormatError("truncated Native data")
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise NativeFormatError("varint too long")

    def string(self) -> str:
        length = self.varint()
        start = self.position
        self.take(length)
        return self.data[start : self.position].decode("utf-8", errors="replace")

    def uint64_at(self, position: int) -> int:
        if position < 0 or position + 8 > len(self.data):
            raise NativeFormatError("truncated Native data")
        return int.from_bytes(self.data[position : position + 8], "little")


def _arguments(text: str) -> Iterator[str]:
    """The top-level, comma-separated arguments of a type's parentheses (quotes and nesting respected)."""
    depth, start, quote, i = 0, 0, "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            yield text[start:i].strip()
            start = i + 1
        i += 1
    if text[start:].strip():
        yield text[start:].strip()


def _split(kind: str) -> tuple[str, list[str]]:
    kind = kind.strip()
    name, parenthesis, rest = kind.partition("(")
    if not parenthesis:
        return name, []
    if not rest.endswith(")"):
        raise NativeFormatError(f"cannot parse type {kind!r}")
    return name.strip(), list(_arguments(rest[:-1]))


def _decimal_width(arguments: list[str]) -> int:
    precision = int(arguments[0])
    return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32


def _element(element: str) -> str:
    """A tuple element's type, without its name (`a UInt8` → `UInt8`)."""
    named = _NAMED_ELEMENT.fullmatch(element)
    return named.group(2) if named is not None and "(" not in named.group(1) else element


def _nested(name: str, arguments: list[str]) -> list[str]:
    return [_element(element) for element in arguments] if name == "Tuple" else arguments


def _prefix(reader: _Reader, kind: str, depth: int = 0) -> None:
    """Moves past the column's state prefixes: one key version (UInt64) per LowCardinality in the type,
    depth first, as ClickHouse writes them before the data."""
    if depth > TYPE_DEPTH_MAX:
        raise NativeFormatError(f"type nests deeper than {TYPE_DEPTH_MAX}: {kind[:64]!r}")
    name, arguments = _split(kind)
    if name == "LowCardinality":
        reader.take(8)
    elif name in ("Array", "Map", "Tuple", "Nullable"):
        for element in _nested(name, arguments):
            _prefix(reader, element, depth + 1)


_LOW_CARDINALITY_ADDITIONAL_KEYS = 1 << 9
_LOW_CARDINALITY_INDEX_WIDTHS = (1, 2, 4, 8)


def _low_cardinality(reader: _Reader, dictionary: str, rows: int, depth: int) -> None:
    flags = reader.uint64_at(reader.position)
    reader.take(8)
    if flags & 0xFF >= len(_LOW_CARDINALITY_INDEX_WIDTHS):
        raise NativeFormatError("unknown LowCardinality index type")
    if flags & _LOW_CARDINALITY_ADDITIONAL_KEYS:
        keys = reader.uint64_at(reader.position)
        reader.take(8)
        name, arguments = _split(dictionary)
        _walk(reader, arguments[0] if name == "Nullable" else dictionary, keys, depth + 1)
    indexes = reader.uint64_at(reader.position)
    reader.take(8)
    if indexes != rows:
        raise NativeFormatError("LowCardinality indexes do not match the rows")
    reader.take(indexes * _LOW_CARDINALITY_INDEX_WIDTHS[flags & 0xFF])


def _walk(reader: _Reader, kind: str, rows: int, depth: int = 0) -> None:
    """Moves `reader` past `rows` values of `kind` (revision-independent column data)."""
    if depth > TYPE_DEPTH_MAX:
        raise NativeFormatError(f"type nests deeper than {TYPE_DEPTH_MAX}: {kind[:64]!r}")
    name, arguments = _split(kind)
    if name in _WIDTHS or _INTERVAL.fullmatch(name):
        reader.take(rows * _WIDTHS.get(name, 8))
    elif name == "Decimal":
        reader.take(rows * _decimal_width(arguments))
    elif name == "FixedString":
        reader.take(rows * int(arguments[0]))
    elif name == "String":
        for _ in range(rows):
            reader.take(reader.varint())
    elif name == "Nullable":
        reader.take(rows)  # The null map, one byte per row.
        _walk(reader, arguments[0], rows, depth + 1)
    elif name in ("Array", "Map"):
        start = reader.position
        reader.take(rows * 8)  # Offsets (UInt64, cumulative): the last one is the nested row count.
        nested = reader.uint64_at(start + (rows - 1) * 8) if rows else 0
        for element in arguments:  # Array: its element; Map: its keys, then its values.
            _walk(reader, element, nested, depth + 1)
    elif name == "Tuple":
        for element in _nested(name, arguments):
            _walk(reader, element, rows, depth + 1)
    elif name == "LowCardinality":
        if rows:
            _low_cardinality(reader, arguments[0], rows, depth)
    else:
        raise NativeFormatError(
            f"type {kind[:64]} is not served in Native at a client protocol revision; cast it or use another format"
        )


def at_revision(payload: bytes, revision: int) -> bytes:
    """chDB's revision-0 Native `payload` as a server writes it for a client at `revision`."""
    assert revision >= 0
    if revision == 0:
        return payload
    reader = _Reader(payload)
    out = bytearray()
    for _ in range(BLOCKS_MAX):
        if reader.position == len(payload):
            break
        columns, rows = reader.varint(), reader.varint()
        out += _BLOCK_INFO + payload[reader.position - _varint_length(columns, rows) : reader.position]
        for _ in range(columns):
            start = reader.position
            reader.string()
            kind = reader.string()
            out += payload[start : reader.position]
            if revision >= REVISION_CUSTOM_SERIALIZATION:
                out += _NO_CUSTOM_SERIALIZATION
            start = reader.position
            if rows:  # Zero rows are zero bytes of data, prefixes included.
                _prefix(reader, kind)
                _walk(reader, kind, rows)
            out += payload[start : reader.position]
    else:
        raise NativeFormatError(f"more than {BLOCKS_MAX} blocks")
    assert reader.position == len(payload)
    return bytes(out)


def _varint_length(*values: int) -> int:
    return sum(max(1, (value.bit_length() + 6) // 7) for value in values)
