"""ISO 20022 camt.053 (BkToCstmrStmt), the end-of-day statement banks send: each booked `Ntry` becomes
a line. Parsed with defusedxml: a DTD, entity or external reference in a statement is refused, so an
entity-expansion bomb or an external entity never reaches the parser's expansion machinery.

Namespaces differ between versions (camt.053.001.02 ... .13); elements are matched by local name."""

from __future__ import annotations

import datetime
from xml.etree import ElementTree

import defusedxml
import defusedxml.ElementTree as SafeElementTree

from projections.statements._lines import (
    STATEMENT_LINES_MAX,
    TEXT_CHARS_MAX,
    Direction,
    StatementError,
    StatementLine,
    minor_units,
)

__all__ = ["parse_camt053"]

_NOT_PROVIDED = "NOTPROVIDED"
"""What camt.053 writes for an absent EndToEndId: not a reference."""
_TX_DETAILS_MAX = 1_000
"""Most TxDtls read per entry (batch bookings): their references only."""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _child(element: ElementTree.Element, *path: str) -> ElementTree.Element | None:
    """The first descendant along `path` of local names."""
    current: ElementTree.Element | None = element
    for name in path:
        if current is None:
            return None
        current = next((c for c in current if _local(c.tag) == name), None)
    return current


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [c for c in element if _local(c.tag) == name]


def _text(element: ElementTree.Element, *path: str) -> str:
    found = _child(element, *path)
    return (found.text or "").strip()[:TEXT_CHARS_MAX] if found is not None else ""


def _date(element: ElementTree.Element, name: str, line_number: int) -> datetime.date | None:
    holder = _child(element, name)
    if holder is None:
        return None
    text = _text(holder, "Dt") or _text(holder, "DtTm")
    try:
        return datetime.date.fromisoformat(text[:10])
    except ValueError:
        raise StatementError(f"entry {line_number}: {name} {text!r} is not a date") from None


def parse_camt053(data: bytes, *, currency: str, scale: int) -> list[StatementLine]:
    """The booked entries of every Stmt in the document, in document order. Pending (PDNG) and
    informational (INFO) entries are not on the account yet: skipped."""
    assert currency and 0 <= scale <= 18
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as error:
        raise StatementError(f"the camt.053 statement is refused: {type(error).__name__} (DTDs and entities)") from None
    except ElementTree.ParseError as error:
        raise StatementError(f"the camt.053 statement is not well-formed XML: {error}") from None
    statement_root = root if _local(root.tag) == "BkToCstmrStmt" else _child(root, "BkToCstmrStmt")
    if statement_root is None:
        raise StatementError("not a camt.053 statement: no BkToCstmrStmt element")
    lines: list[StatementLine] = []
    for statement in _children(statement_root, "Stmt"):
        for entry in _children(statement, "Ntry"):
            number = len(lines) + 1
            if number > STATEMENT_LINES_MAX:
                raise StatementError(f"the statement has more than {STATEMENT_LINES_MAX} entries")
            line = _line(entry, number, currency=currency, scale=scale)
            if line is not None:
                lines.append(line)
    return lines


def _line(entry: ElementTree.Element, number: int, *, currency: str, scale: int) -> StatementLine | None:
    status = _text(entry, "Sts", "Cd") or _text(entry, "Sts")
    if status and status != "BOOK":
        return None
    amount_element = _child(entry, "Amt")
    if amount_element is None:
        raise StatementError(f"entry {number}: no Amt")
    entry_currency = amount_element.get("Ccy", "")
    if entry_currency != currency:
        raise StatementError(f"entry {number}: currency {entry_currency!r}, the account's is {currency}")
    try:
        amount = minor_units(amount_element.text or "", scale)
    except StatementError as error:
        raise StatementError(f"entry {number}: {error}") from None
    if amount <= 0:
        raise StatementError(f"entry {number}: Amt must be positive (CdtDbtInd carries the direction)")
    indicator = _text(entry, "CdtDbtInd")
    if indicator not in ("CRDT", "DBIT"):
        raise StatementError(f"entry {number}: CdtDbtInd {indicator!r} is neither CRDT nor DBIT")
    booking_date = _date(entry, "BookgDt", number) or _date(entry, "ValDt", number)
    if booking_date is None:
        raise StatementError(f"entry {number}: no BookgDt or ValDt")
    end_to_end_ids: list[str] = []
    descriptions: list[str] = []
    details = _child(entry, "NtryDtls")
    for transaction in _children(details, "TxDtls")[:_TX_DETAILS_MAX] if details is not None else []:
        end_to_end = _text(transaction, "Refs", "EndToEndId")
        if end_to_end and end_to_end != _NOT_PROVIDED:
            end_to_end_ids.append(end_to_end)
        remittance = _child(transaction, "RmtInf")
        if remittance is not None:
            descriptions.extend((u.text or "").strip() for u in _children(remittance, "Ustrd"))
    return StatementLine(
        line_number=number,
        booking_date=booking_date,
        value_date=_date(entry, "ValDt", number),
        amount=amount,
        direction=Direction.CREDIT if indicator == "CRDT" else Direction.DEBIT,
        currency=currency,
        reference=_text(entry, "NtryRef") or _text(entry, "AcctSvcrRef"),
        # A batch booking carries several; the first is the line's, all are in the description.
        end_to_end_id=end_to_end_ids[0] if end_to_end_ids else "",
        description=" ".join(d for d in [*descriptions, *end_to_end_ids[1:]] if d)[:TEXT_CHARS_MAX]
        or _text(entry, "AddtlNtryInf"),
        reversal=_text(entry, "RvslInd").lower() == "true",
        batch_references=tuple(end_to_end_ids) if len(end_to_end_ids) > 1 else (),
    )
