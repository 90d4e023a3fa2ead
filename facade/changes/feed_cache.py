"""The engine's change feed, read once for the service's change captures.

`ledger serve` runs up to three change captures over the same feed (the audit tree every 0.1 s, the read
model every 0.3 s, Kafka every 10 ms), and each read the same changes from the engine again: on the
embedded engine every read builds a copy of each transfer and of both accounts as of the change, on the
engine's thread that the writes need too (~1.5 µs of the service's CPU per change and reader on a quiet
host, 3-7 µs by py-spy under bench_api.py's load), and the read model's capture was the second reader of
every change. Committed changes never
change and come in timestamp order, so what one capture read is the others' answer too: they find it here.

What is kept is one contiguous run of the feed, `_events`: exactly the changes with timestamps from
`_timestamp_from` through the last one's (a read from `t` that returned changes proves that no change lies
between `t` and the first of them). A read that starts inside the run (or just after it) is answered from it,
and what the run lacks is read from the engine after the run's last change and appended, so the run only
grows forward. A read from elsewhere (a capture far behind, catching up from an old checkpoint) goes to the
engine; it replaces the run only when it starts after it (the feed moved on), so a lagging capture never
evicts what the others are about to read. Only the newest CHANGES_MAX changes are kept, oldest dropped first.
The events are shared between the captures: they only read them (as each did its own copy before).

Reads take turns (one lock): a capture's read-ahead runs while the others poll, and two readers asking for the
same new changes at once would otherwise both go to the engine (whose one thread serializes them anyway). The
second now waits for the first and finds its answer in the run.
"""

from __future__ import annotations

import asyncio
import bisect
from typing import Protocol

from facade.engine.types import QUERY_LIMIT_MAX, ChangeEvent, ChangeEventsFilter

__all__ = ["CHANGES_MAX", "ChangeFeed", "ChangeFeedCache"]

CHANGES_MAX = 16_384
"""Changes kept: ~1.6 s at 10,000 tx/s, more than the captures' poll intervals apart (0.01-0.5 s) and two of
a backlog's largest reads (8189). ~1 KB of objects a change, so ~16 MB at most: the heap's growth counts
towards the service's next full garbage collection (facade.runtime.YoungOnlyCollection), so no more than
the captures need. Captures further apart than this each read the engine, as they did before."""


class ChangeFeed(Protocol):
    """What change capture needs of an engine: its change feed (facade.engine.protocol.Engine has it)."""

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]: ...


def _timestamp(event: ChangeEvent) -> int:
    return event.timestamp


class ChangeFeedCache:
    """A ChangeFeed in front of the engine's, for several change captures reading the same changes."""

    def __init__(self, engine: ChangeFeed, changes_max: int = CHANGES_MAX) -> None:
        assert changes_max > 0
        self._engine = engine
        self._changes_max = changes_max
        self._events: list[ChangeEvent] = []
        """The run: every change with a timestamp in [_timestamp_from, _events[-1].timestamp], in order."""
        self._timestamp_from = 0
        self._turn = asyncio.Lock()
        """Held across a read, the engine's answer included: see the module's docstring."""
        self.changes_read = 0
        """Changes read from the engine."""
        self.changes_cached = 0
        """Changes answered from the run (each one a change the engine did not have to copy again)."""

    async def get_change_events(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        """The engine's answer to `filter`: the first `limit` changes from `timestamp_min` on (a backend
        may answer fewer, as the engine may: TigerBeetle caps a reply); other filters go to the engine."""
        if filter.timestamp_max != 0 or filter.timestamp_min <= 0 or filter.limit <= 0:
            return await self._engine.get_change_events(filter)
        async with self._turn:
            return await self._answer(filter)

    async def _answer(self, filter: ChangeEventsFilter) -> list[ChangeEvent]:
        """`get_change_events` for a read from a timestamp on, in its turn."""
        assert self._turn.locked()
        # A larger limit is capped, as the engine caps it (and as TigerBeetle's reply size caps it further).
        timestamp_min, limit = filter.timestamp_min, min(filter.limit, QUERY_LIMIT_MAX)
        events = self._events
        if not events or not self._timestamp_from <= timestamp_min <= events[-1].timestamp + 1:
            return await self._read(timestamp_min, limit)
        start = bisect.bisect_left(events, timestamp_min, key=_timestamp)
        cached = events[start : start + limit]
        self.changes_cached += len(cached)
        if len(cached) == limit:
            return cached
        # The rest follows the run: read after its last change, appended.
        after = events[-1].timestamp + 1
        fresh = await self._read(after, limit - len(cached))
        assert not (cached and fresh) or fresh[0].timestamp > cached[-1].timestamp
        answer = cached + fresh
        assert len(answer) <= limit
        return answer

    async def _read(self, timestamp_min: int, limit: int) -> list[ChangeEvent]:
        """Reads from the engine; the answer joins the run when it follows it, or replaces a run it starts after."""
        assert timestamp_min > 0 and limit > 0
        assert self._turn.locked()
        fresh = await self._engine.get_change_events(ChangeEventsFilter(timestamp_min=timestamp_min, limit=limit))
        self.changes_read += len(fresh)
        if not fresh:
            return fresh
        assert fresh[0].timestamp >= timestamp_min
        events = self._events
        if events and timestamp_min == events[-1].timestamp + 1:
            events.extend(fresh)
        elif not events or timestamp_min > events[-1].timestamp + 1:
            self._events, self._timestamp_from = list(fresh), timestamp_min
        # Else the read started before the run's end (a capture behind it): the run stays as it is.
        excess = len(self._events) - self._changes_max
        if excess > 0:
            del self._events[:excess]
            self._timestamp_from = self._events[0].timestamp
        assert len(self._events) <= self._changes_max
        assert not self._events or self._timestamp_from <= self._events[0].timestamp
        return fresh
