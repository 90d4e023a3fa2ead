"""The TigerBeetle backend: a thin adapter over the official Python client (`tigerbeetle` 0.17).

One `ClientAsync` is shared by every caller: the client batches concurrent requests itself. Requests
never time out inside the client (TigerBeetle retries until the cluster answers); callers bound them
with their own deadlines.

The client's packet path. Every public method of the client is a one-line call to
`ClientAsync._submit(operation, events, event C type, result C type)`, which hands the events to
tb_client (the C library) and converts each result back. This adapter calls that path directly, for
two reasons, and it is the one private seam used here (the client is pinned to 0.17.x, the seam is
checked when the engine is opened, and tests/engine runs every operation against a real cluster):
- `get_change_events`: the client has the wire code (`Operation.GET_CHANGE_EVENTS`) but no method.
  TigerBeetle's own operation (the one its `tigerbeetle amqp` CDC job reads) gives every transfer,
  post, void and expiry with both accounts' balances as of the change, in the embedded engine's
  shape; the 64-byte filter and 384-byte event layouts are `tigerbeetle.zig`'s.
- `create_*` and `lookup_*`: events go out in TigerBeetle's 128-byte layouts as `codec.py` encodes
  them (and lookups come back through `codec.py`), instead of the client's per-event Python
  conversion (`CTransfer.from_param`: twelve range checks and six u128 splits per transfer), which
  cost ~17 us per transfer against ~2 us this way (scripts/bench_tigerbeetle_client.py). As a side
  effect `Account.reserved` reaches TigerBeetle (which answers reserved_field) instead of being
  dropped by the client.
Queries stay on the client's public methods.

Request size. A replica accepts requests up to its `--limit-request` (1 MiB by default: 8189
transfers; a `--development` replica 32 KiB: 253 transfers, 2031 ids), and the client refuses a
larger request before sending it (`TooMuchDataError`). The adapter therefore splits `create_*` and
`lookup_*` work into requests that fit: it starts from the configured limit and learns the cluster's
real one from those refusals (nothing was sent, so retrying smaller is safe). Splits fall only
between linked chains, so a chain is never cut across requests (one larger than a request is refused
with TooMuchDataError), and a chunk never starts with an event whose `imported` flag differs from the
batch's first event (TigerBeetle decides a batch's mode by its first event). Chunks go out one after
another, so results keep event order and timestamps keep increasing; unlike one request, the events
of different chunks do not get consecutive timestamps, and a failure after the first chunk leaves the
earlier chunks committed (as a client retrying a batch would: `exists` then proves them).

Errors. Client failures are translated here, never leaked: TooMuchDataError (a query limit above
what one reply holds, a chain above what one request holds) → types.TooMuchDataError; closed,
evicted, release too low/high, or any other client failure → EngineUnavailableError. An evicted
client is replaced by a fresh one for the next call.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import tigerbeetle as tb

from facade.engine.codec import decode_accounts, decode_transfers, encode_accounts, encode_transfers
from facade.engine.protocol import EngineUnavailableError
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFlags,
    ChangeEvent,
    ChangeEventsFilter,
    ChangeEventType,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    FieldRangeError,
    QueryFilter,
    TooMuchDataError,
    Transfer,
    TransferFlags,
    validate_accounts,
    validate_ids,
    validate_transfers,
)

__all__ = [
    "CHANGE_EVENTS_LIMIT_MAX",
    "LIMIT_REQUEST_BYTES_DEFAULT",
    "LIMIT_REQUEST_BYTES_MIN",
    "TigerBeetleEngine",
]

# TigerBeetle's message limits (constants.zig, vsr/multi_batch.zig, tigerbeetle/cli.zig).
MESSAGE_HEADER_SIZE = 256
MESSAGE_SIZE_MAX = 1024 * 1024
MESSAGE_BODY_SIZE_MAX = MESSAGE_SIZE_MAX - MESSAGE_HEADER_SIZE
LIMIT_REQUEST_BYTES_DEFAULT = MESSAGE_SIZE_MAX
"""A replica's `--limit-request` unless set (production default; `--development` uses 32 KiB)."""
LIMIT_REQUEST_BYTES_MIN = 4096
"""The smallest `--limit-request` a replica starts with: every cluster accepts requests this large."""
REQUEST_BODY_SIZE_FLOOR = LIMIT_REQUEST_BYTES_MIN - MESSAGE_HEADER_SIZE
"""A request body every cluster accepts: a refusal of one this small is not the cluster's limit."""
MULTI_BATCH_TRAILER_SIZE_UNPADDED = 4
"""One trailer item and the postamble (u16 each), padded up to a whole event in the request."""
EVENT_SIZE_ACCOUNT = 128
EVENT_SIZE_TRANSFER = 128
EVENT_SIZE_ID = 16
CHANGE_EVENT_SIZE = 384
CHANGE_EVENTS_LIMIT_MAX = MESSAGE_BODY_SIZE_MAX // CHANGE_EVENT_SIZE
"""Most change events one reply holds (2730); get_change_events is not multi-batch, so no trailer.
A larger `limit` is lowered to this: the change feed promises at most `limit` events, not exactly."""
REQUEST_REFUSALS_MAX = 32
"""Bounds the learn-and-retry loop of one call: each refusal at least halves the unknown range of
the request limit (1 MiB), so 32 refusals mean the client refuses requests every cluster accepts."""

_LINKED = 1  # Bit 0 of both AccountFlags and TransferFlags.
assert AccountFlags.LINKED == _LINKED and TransferFlags.LINKED == _LINKED

_T = TypeVar("_T")
_R = TypeVar("_R")


def _trailer_size(event_size: int) -> int:
    return -(-MULTI_BATCH_TRAILER_SIZE_UNPADDED // event_size) * event_size


def _request_body_size(event_count: int, event_size: int) -> int:
    return event_count * event_size + _trailer_size(event_size)


class _RequestLimit:
    """The cluster's request body limit in bytes, as configured and as learned from refusals.

    `accepted_max` is the largest request body the cluster took; `refused_min` the smallest the
    client refused (None: none yet). While they are apart, requests are sized halfway between them
    (a binary search that converges within a dozen calls, most of them local refusals)."""

    def __init__(self, limit_request_bytes: int) -> None:
        assert LIMIT_REQUEST_BYTES_MIN <= limit_request_bytes <= MESSAGE_SIZE_MAX
        self.body_size_configured = limit_request_bytes - MESSAGE_HEADER_SIZE
        self.accepted_max = REQUEST_BODY_SIZE_FLOOR
        self.refused_min: int | None = None

    def body_size(self) -> int:
        if self.refused_min is None:
            return max(self.body_size_configured, self.accepted_max)
        assert self.accepted_max < self.refused_min
        return (self.accepted_max + self.refused_min) // 2

    def events_max(self, event_size: int) -> int:
        count = min(BATCH_EVENTS_MAX, (self.body_size() - _trailer_size(event_size)) // event_size)
        assert 0 < count <= BATCH_EVENTS_MAX
        return count

    def events_possible(self, event_size: int) -> int:
        """Most events a request may hold without having been refused: larger ones surely are."""
        if self.refused_min is None:
            return BATCH_EVENTS_MAX
        count = min(BATCH_EVENTS_MAX, (self.refused_min - 1 - _trailer_size(event_size)) // event_size)
        assert count >= self.events_max(event_size)
        return count

    def accepted(self, event_count: int, event_size: int) -> None:
        size = _request_body_size(event_count, event_size)
        self.accepted_max = max(self.accepted_max, size)
        if self.refused_min is not None and self.refused_min <= size:
            self.refused_min = None  # The cluster's limit grew (a restart with a larger one).

    def refused(self, event_count: int, event_size: int) -> None:
        size = _request_body_size(event_count, event_size)
        assert size > REQUEST_BODY_SIZE_FLOOR
        if size <= self.accepted_max:
            # The cluster's limit shrank (a restart with a smaller one): forget what it took.
            self.accepted_max = REQUEST_BODY_SIZE_FLOOR
        self.refused_min = size if self.refused_min is None else min(self.refused_min, size)
        assert self.accepted_max < self.refused_min


def _chunk_end(flags: Sequence[int], start: int, *, count_max: int, count_possible: int, imported_mask: int) -> int:
    """The end (exclusive) of the next request's events from `start`: as many whole linked chains
    as fit in `count_max` events, never starting the next request with an event whose imported flag
    differs from the batch's first event. When not even one such run fits in `count_max` but it may
    fit the cluster (`count_possible`: not yet refused), that run alone. Else TooMuchDataError."""
    count = len(flags)
    assert 0 <= start < count and 0 < count_max <= count_possible
    if count - start <= count_max:
        return count
    imported_first = flags[0] & imported_mask
    for end in range(start + count_max, start, -1):
        if not flags[end - 1] & _LINKED and flags[end] & imported_mask == imported_first:
            return end
    for end in range(start + count_max + 1, min(count, start + count_possible) + 1):
        if end == count or (not flags[end - 1] & _LINKED and flags[end] & imported_mask == imported_first):
            return end
    raise TooMuchDataError(
        f"events {start}..: a linked chain (or a run that must stay with the batch's first event's "
        f"imported mode) is longer than the {count_possible} events one request to this cluster holds"
    )


def _to_account(a: Any) -> Account:
    return Account(
        id=a.id,
        debits_pending=a.debits_pending,
        debits_posted=a.debits_posted,
        credits_pending=a.credits_pending,
        credits_posted=a.credits_posted,
        user_data_128=a.user_data_128,
        user_data_64=a.user_data_64,
        user_data_32=a.user_data_32,
        ledger=a.ledger,
        code=a.code,
        flags=int(a.flags),
        timestamp=a.timestamp,
    )


def _to_transfer(t: Any) -> Transfer:
    return Transfer(
        id=t.id,
        debit_account_id=t.debit_account_id,
        credit_account_id=t.credit_account_id,
        amount=t.amount,
        pending_id=t.pending_id,
        user_data_128=t.user_data_128,
        user_data_64=t.user_data_64,
        user_data_32=t.user_data_32,
        timeout=t.timeout,
        ledger=t.ledger,
        code=t.code,
        flags=int(t.flags),
        timestamp=t.timestamp,
    )


def _account_filter(f: AccountFilter) -> Any:
    return tb.AccountFilter(
        account_id=f.account_id,
        user_data_128=f.user_data_128,
        user_data_64=f.user_data_64,
        user_data_32=f.user_data_32,
        code=f.code,
        timestamp_min=f.timestamp_min,
        timestamp_max=f.timestamp_max,
        limit=f.limit,
        flags=tb.AccountFilterFlags(int(f.flags)),
    )


def _query_filter(f: QueryFilter) -> Any:
    return tb.QueryFilter(
        user_data_128=f.user_data_128,
        user_data_64=f.user_data_64,
        user_data_32=f.user_data_32,
        ledger=f.ledger,
        code=f.code,
        timestamp_min=f.timestamp_min,
        timestamp_max=f.timestamp_max,
        limit=f.limit,
        flags=tb.QueryFilterFlags(int(f.flags)),
    )


# tigerbeetle.zig ChangeEventsFilter (64 bytes) and ChangeEvent (384 bytes), little-endian; u128 as
# (low u64, high u64).
_CHANGE_EVENTS_FILTER = struct.Struct("<QQI44x")
_CREATE_RESULT = struct.Struct("<QI4x")
_ACCOUNT_STATUS = {status.value: status for status in CreateAccountStatus}
_TRANSFER_STATUS = {status.value: status for status in CreateTransferStatus}
_CHANGE_EVENT = struct.Struct("<8Q Q I I H H I B 39x 12Q Q I H H 12Q Q I H H 4Q")
assert _CHANGE_EVENTS_FILTER.size == 64 and _CHANGE_EVENT.size == CHANGE_EVENT_SIZE


class _CChangeEventsFilter(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_uint8 * _CHANGE_EVENTS_FILTER.size)]

    @classmethod
    def from_param(cls, f: ChangeEventsFilter) -> _CChangeEventsFilter:
        return cls.from_buffer_copy(_CHANGE_EVENTS_FILTER.pack(f.timestamp_min, f.timestamp_max, f.limit))


class _CChangeEvent(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_uint8 * CHANGE_EVENT_SIZE)]

    def to_python(self) -> ChangeEvent:
        return _decode_change_event(bytes(self))


def _decode_change_event(raw: bytes) -> ChangeEvent:
    (
        id_lo, id_hi, amount_lo, amount_hi, pending_lo, pending_hi, ud128_lo, ud128_hi,
        ud64, ud32, timeout, code, flags, ledger, type_,
        dr_lo, dr_hi, dr_dp_lo, dr_dp_hi, dr_dpo_lo, dr_dpo_hi, dr_cp_lo, dr_cp_hi, dr_cpo_lo, dr_cpo_hi,
        dr_ud128_lo, dr_ud128_hi, dr_ud64, dr_ud32, dr_code, dr_flags,
        cr_lo, cr_hi, cr_dp_lo, cr_dp_hi, cr_dpo_lo, cr_dpo_hi, cr_cp_lo, cr_cp_hi, cr_cpo_lo, cr_cpo_hi,
        cr_ud128_lo, cr_ud128_hi, cr_ud64, cr_ud32, cr_code, cr_flags,
        timestamp, transfer_timestamp, dr_timestamp, cr_timestamp,
    ) = _CHANGE_EVENT.unpack(raw)  # fmt: skip
    debit_account_id = dr_lo | dr_hi << 64
    credit_account_id = cr_lo | cr_hi << 64
    transfer = Transfer(
        id=id_lo | id_hi << 64,
        debit_account_id=debit_account_id,
        credit_account_id=credit_account_id,
        amount=amount_lo | amount_hi << 64,
        pending_id=pending_lo | pending_hi << 64,
        user_data_128=ud128_lo | ud128_hi << 64,
        user_data_64=ud64,
        user_data_32=ud32,
        timeout=timeout,
        ledger=ledger,
        code=code,
        flags=flags,
        timestamp=transfer_timestamp,
    )
    debit_account = Account(
        id=debit_account_id,
        debits_pending=dr_dp_lo | dr_dp_hi << 64,
        debits_posted=dr_dpo_lo | dr_dpo_hi << 64,
        credits_pending=dr_cp_lo | dr_cp_hi << 64,
        credits_posted=dr_cpo_lo | dr_cpo_hi << 64,
        user_data_128=dr_ud128_lo | dr_ud128_hi << 64,
        user_data_64=dr_ud64,
        user_data_32=dr_ud32,
        ledger=ledger,
        code=dr_code,
        flags=dr_flags,
        timestamp=dr_timestamp,
    )
    credit_account = Account(
        id=credit_account_id,
        debits_pending=cr_dp_lo | cr_dp_hi << 64,
        debits_posted=cr_dpo_lo | cr_dpo_hi << 64,
        credits_pending=cr_cp_lo | cr_cp_hi << 64,
        credits_posted=cr_cpo_lo | cr_cpo_hi << 64,
        user_data_128=cr_ud128_lo | cr_ud128_hi << 64,
        user_data_64=cr_ud64,
        user_data_32=cr_ud32,
        ledger=ledger,
        code=cr_code,
        flags=cr_flags,
        timestamp=cr_timestamp,
    )
    return ChangeEvent(timestamp, ChangeEventType(type_), transfer, debit_account, credit_account)


class _CEvent(ctypes.Structure):
    """One Account or Transfer in TigerBeetle's 128-byte layout, as codec.py encodes and decodes it."""

    _fields_ = [("raw", ctypes.c_uint8 * EVENT_SIZE_TRANSFER)]

    @classmethod
    def from_param(cls, event: memoryview) -> _CEvent:
        return cls.from_buffer_copy(event)

    def to_python(self) -> bytes:
        return bytes(self)


class _CId(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_uint8 * EVENT_SIZE_ID)]

    @classmethod
    def from_param(cls, value: int) -> _CId:
        return cls.from_buffer_copy(value.to_bytes(EVENT_SIZE_ID, "little"))


class _CCreateResult(ctypes.Structure):
    """CreateAccountResult / CreateTransferResult: timestamp u64, status u32, reserved u32."""

    _fields_ = [("raw", ctypes.c_uint8 * _CREATE_RESULT.size)]

    def to_python(self) -> bytes:
        return bytes(self)


def _events(data: bytes, event_size: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[offset : offset + event_size] for offset in range(0, len(data), event_size)]


async def _create(client: Any, operation: Any, events: list[memoryview]) -> list[tuple[int, int]]:
    raw: list[bytes] = await client._submit(operation, events, _CEvent, _CCreateResult)
    return list(_CREATE_RESULT.iter_unpack(b"".join(raw)))


async def _create_accounts(client: Any, events: list[memoryview]) -> list[tuple[int, int]]:
    return await _create(client, tb.Operation.CREATE_ACCOUNTS, events)


async def _create_transfers(client: Any, events: list[memoryview]) -> list[tuple[int, int]]:
    return await _create(client, tb.Operation.CREATE_TRANSFERS, events)


async def _lookup_accounts(client: Any, ids: list[int]) -> list[bytes]:
    found: list[bytes] = await client._submit(tb.Operation.LOOKUP_ACCOUNTS, ids, _CId, _CEvent)
    return found


async def _lookup_transfers(client: Any, ids: list[int]) -> list[bytes]:
    found: list[bytes] = await client._submit(tb.Operation.LOOKUP_TRANSFERS, ids, _CId, _CEvent)
    return found


async def _get_change_events(client: Any, f: ChangeEventsFilter) -> list[ChangeEvent]:
    events: list[ChangeEvent] = await client._submit(
        tb.Operation.GET_CHANGE_EVENTS, [f], _CChangeEventsFilter, _CChangeEvent
    )
    return events


def _translate(error: Exception) -> Exception:
    """A client failure as the engine's error (the seam: no client type leaks upward)."""
    if isinstance(error, tb.TooMuchDataError):
        return TooMuchDataError(f"TigerBeetle client: {error}")
    if isinstance(error, tb.IntegerOverflowError):
        return FieldRangeError(f"TigerBeetle client: {error}")
    if isinstance(error, (tb.ClientReleaseTooLowError, tb.ClientReleaseTooHighError)):
        return EngineUnavailableError(
            f"TigerBeetle cluster refuses this client's release ({error}): upgrade the client or the cluster"
        )
    if isinstance(error, tb.ClientEvictedError):
        return EngineUnavailableError(f"TigerBeetle cluster evicted the client ({error}); retry")
    if isinstance(error, tb.ClientClosedError):
        return EngineUnavailableError(f"TigerBeetle client closed ({error})")
    return EngineUnavailableError(f"TigerBeetle client failed: {type(error).__name__}: {error}")


class TigerBeetleEngine:
    name = "tigerbeetle"
    # The embedded engine's storage-fault state, for uniform liveness/readiness checks: a cluster's
    # replicas handle their own storage faults, so from here writes are never dead or paused for good.
    write_failure: str | None = None
    write_blocked: str | None = None

    def __init__(
        self, cluster_id: int, addresses: str, *, limit_request_bytes: int = LIMIT_REQUEST_BYTES_DEFAULT
    ) -> None:
        if not LIMIT_REQUEST_BYTES_MIN <= limit_request_bytes <= MESSAGE_SIZE_MAX:
            raise ValueError(
                f"limit_request_bytes={limit_request_bytes} outside TigerBeetle's "
                f"[{LIMIT_REQUEST_BYTES_MIN}, {MESSAGE_SIZE_MAX}]"
            )
        if not callable(getattr(tb.ClientAsync, "_submit", None)):
            raise EngineUnavailableError("this tigerbeetle client has no packet path for get_change_events")
        self._cluster_id = cluster_id
        self._addresses = addresses
        self._limit = _RequestLimit(limit_request_bytes)
        self._client: Any = self._client_new()
        self._closed = False

    def _client_new(self) -> Any:
        try:
            return tb.ClientAsync(cluster_id=self._cluster_id, replica_addresses=self._addresses)
        except Exception as error:  # InitError(status): bad address, out of memory, ...
            raise EngineUnavailableError(f"cannot start the TigerBeetle client: {error!r}") from error

    def _check_open(self) -> None:
        if self._closed:
            raise EngineUnavailableError("engine is closed")

    async def _call(self, request: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """`request(client, *args)`; tb.TooMuchDataError passes through (callers learn from it)."""
        self._check_open()
        client = self._client
        try:
            return await request(client, *args)
        except tb.TooMuchDataError:
            raise
        except tb.ClientEvictedError as error:
            if self._client is client and not self._closed:
                self._client = self._client_new()  # Evicted for good: the next call gets a fresh session.
                with contextlib.suppress(Exception):  # The old session is gone either way.
                    await client.close()
            raise _translate(error) from error
        except Exception as error:
            raise _translate(error) from error

    async def _query(self, request: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        try:
            return await self._call(request, *args)
        except tb.TooMuchDataError as error:
            raise _translate(error) from error

    def _refused(self, error: Exception, *, refusals: int, event_count: int, event_size: int) -> None:
        """Learns from the client's refusal of a request, or raises it translated when the cluster's
        limit cannot explain it (a request every cluster accepts, or too many refusals in one call)."""
        assert refusals > 0 and event_count > 0
        if refusals > REQUEST_REFUSALS_MAX or _request_body_size(event_count, event_size) <= REQUEST_BODY_SIZE_FLOOR:
            raise _translate(error) from error
        self._limit.refused(event_count, event_size)

    def _chunk_end(self, flags: list[int], start: int, *, event_size: int, imported_mask: int) -> int:
        return _chunk_end(
            flags,
            start,
            count_max=self._limit.events_max(event_size),
            count_possible=self._limit.events_possible(event_size),
            imported_mask=imported_mask,
        )

    async def _create_split(
        self,
        events: list[Any],
        flags: list[int],
        *,
        event_size: int,
        imported_mask: int,
        submit: Callable[[Any, list[Any]], Awaitable[list[_R]]],
    ) -> list[_R]:
        """`submit`s `events` in requests the cluster accepts, whole linked chains each, in order."""
        assert len(events) == len(flags) <= BATCH_EVENTS_MAX
        # Refuse a chain that cannot fit before anything is sent (with what is known of the limit).
        start = 0
        while start < len(events):
            start = self._chunk_end(flags, start, event_size=event_size, imported_mask=imported_mask)
        results: list[_R] = []
        start = 0
        refusals = 0
        while start < len(events):
            end = self._chunk_end(flags, start, event_size=event_size, imported_mask=imported_mask)
            chunk = events[start:end]
            try:
                chunk_results = await self._call(submit, chunk)
            except tb.TooMuchDataError as error:
                # Refused before sending: learn the limit and size the same events again.
                refusals += 1
                self._refused(error, refusals=refusals, event_count=len(chunk), event_size=event_size)
                continue
            self._limit.accepted(len(chunk), event_size)
            assert len(chunk_results) == len(chunk)
            results.extend(chunk_results)
            start = end
        assert len(results) == len(events)
        return results

    async def _lookup_split(self, ids: list[int], submit: Callable[[Any, list[int]], Awaitable[list[_R]]]) -> list[_R]:
        found: list[_R] = []
        start = 0
        refusals = 0
        while start < len(ids):
            chunk = ids[start : start + self._limit.events_max(EVENT_SIZE_ID)]
            try:
                found.extend(await self._call(submit, chunk))
            except tb.TooMuchDataError as error:
                refusals += 1
                self._refused(error, refusals=refusals, event_count=len(chunk), event_size=EVENT_SIZE_ID)
                continue
            self._limit.accepted(len(chunk), EVENT_SIZE_ID)
            start += len(chunk)
        assert len(found) <= len(ids)
        return found

    async def create_accounts(self, accounts: Sequence[Account]) -> list[CreateAccountResult]:
        self._check_open()
        accounts = list(accounts)
        validate_accounts(accounts)
        results = await self._create_split(
            _events(encode_accounts(accounts), EVENT_SIZE_ACCOUNT),
            [int(a.flags) for a in accounts],
            event_size=EVENT_SIZE_ACCOUNT,
            imported_mask=AccountFlags.IMPORTED,
            submit=_create_accounts,
        )
        return [CreateAccountResult(timestamp, _ACCOUNT_STATUS[status]) for timestamp, status in results]

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[CreateTransferResult]:
        self._check_open()
        transfers = list(transfers)
        validate_transfers(transfers)
        results = await self._create_split(
            _events(encode_transfers(transfers), EVENT_SIZE_TRANSFER),
            [int(t.flags) for t in transfers],
            event_size=EVENT_SIZE_TRANSFER,
            imported_mask=TransferFlags.IMPORTED,
            submit=_create_transfers,
        )
        return [CreateTransferResult(timestamp, _TRANSFER_STATUS[status]) for timestamp, status in results]

    async def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        self._check_open()
        ids = list(ids)
        validate_ids(ids)
        found = await self._lookup_split(ids, _lookup_accounts)
        return decode_accounts(b"".join(found))

    async def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        self._check_open()
        ids = list(ids)
        validate_ids(ids)
        found = await self._lookup_split(ids, _lookup_transfers)
        return decode_transfers(b"".join(found))

    async def get_account_transfers(self, filter: AccountFilter) -> list[Transfer]:
        tb_filter = _account_filter(filter)
        return [_to_transfer(t) for t in await self._query(tb.ClientAsync.get_account_transfers, tb_filter)]

    async def get_account_balances(self, filter: AccountFilter) -> list[AccountBalance]:
        tb_filter = _account_filter(filter)
        balances = await self._query(tb.ClientAsync.get_account_balances, tb_filter)
        return [
            AccountBalance(b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, b.timestamp)
            for b in balances
        ]

    async def query_accounts(self, filter: QueryFilter) -> list[Account]:
        tb_filter = _query_filter(filter)
        return [_to_account(a) for a in await self._query(tb.ClientAsync.query_accounts, tb_filter)]

    async def query_transfers(self, filter: QueryFilter) -> list[Transfer]:
        tb_filter = _query_filter(filter)
        return [_to_transfer(t) for t in await self._query(tb.ClientAsync.query_transfers, tb_filter)]

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        capped = ChangeEventsFilter(
            timestamp_min=filter.timestamp_min,
            timestamp_max=filter.timestamp_max,
            limit=min(filter.limit, CHANGE_EVENTS_LIMIT_MAX),
        )
        events = await self._query(_get_change_events, capped)
        assert len(events) <= capped.limit
        assert all(a.timestamp < b.timestamp for a, b in itertools.pairwise(events))
        return events

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()
