"""How many writes the service works on at once: an adaptive concurrency limit at the edges' doors.

Why a limit on writes in progress, and not only the write queue's expected wait (facade.batcher): on this
service the wait that grows under overload is mostly not in the write queue. grpc.aio accepts calls one
at a time per server (api.grpc_servers), a few loop turns each, and every turn runs what the calls in progress
have ready; a call waits in gRPC's accept queue (invisible to the server's code) until its turn. With
300 closed-loop clients and a short write queue nothing was refused and every call waited about
clients / throughput (~180 ms) before the server saw it. What bounds that wait is keeping the event loop
unsaturated: few calls in progress, the rest refused at once with a retry hint long enough that refused
callers stay away (facade.batcher.RetryPacer). Refused callers' absence is what empties the accept queue.

The limit follows latency, after Netflix's concurrency-limits (Gradient2): every window the mean latency
of the interactive writes answered in it (`short`) is compared with the latency the service gives when it
is not overloaded (`baseline`, the lowest window mean seen, drifting up slowly so a service that simply got
slower is followed); the limit is scaled by `LATENCY_TOLERANCE * baseline / short` (at most 1, at least
GRADIENT_MIN) plus a small allowance for queueing, and only grows while it is in use (a quiet service does
not inflate it). Admitted writes then see about the unloaded latency times the tolerance.

Bulk submissions (PostTransactions) are bounded separately by a count (BULK_IN_FLIGHT_MAX, one while the
interactive writes are slower than tolerated; while bulk runs, the interactive floor is lower too): one
1,000-transaction request is mapped in a worker thread that holds the GIL against the event loop for as
long as hundreds of single writes would, and the write queue's expected wait already bounds how much bulk
work waits to commit. Bulk is cut back, not shut out: it carries most of the throughput under overload.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import Enum

from facade.domain.errors import ErrorKind, LedgerError
from facade.observability import metrics
from facade.settings import BULK_IN_FLIGHT_MAX

__all__ = ["BULK_IN_FLIGHT_MAX", "Lane", "WriteLimit", "too_busy"]

LIMIT_INITIAL = 128
LIMIT_MIN = 128
"""The least interactive writes in progress while no bulk request runs. Single writes alone are served in
batches whose latency grows with the callers, yet callers that do not honour retry hints (bench_api.py's
64 closed-loop clients and its visibility probes) would only turn refusals into a storm: 16 here cut that
row's throughput to 0.4x, 64 still refused its probes' extra calls."""
LIMIT_MIN_BESIDE_BULK = 16
"""The least interactive writes in progress while bulk requests run: their mapping and commits hold the GIL
against the event loop, so single writes wait in gRPC's accept queue and fewer of them fit the latency
target; refusing (with paced hints) is what keeps that queue short. Lower floors gain nothing: server-side
latency also rises with the refusals' own work, which a smaller limit does not reduce (a floor of 4 halved
throughput in bench_overload without faster answers)."""
LIMIT_MAX = 1024
WINDOW_SECONDS = 0.1
"""How often the limit is recomputed (at least WINDOW_SAMPLES_MIN answers in the window)."""
WINDOW_SAMPLES_MIN = 8
BULK_RECENT_SECONDS = 1.0
"""How long after a bulk request was admitted the floor stays LIMIT_MIN_BESIDE_BULK: between two bulk
requests a window without one is no end of the bulk load (per window, the limit jumped 16 -> 128 -> 16)."""
INTERACTIVE_CONTENDED_MIN = 8
"""Single writes in progress at once (in a window) before slow ones cut bulk back: a probe or two waiting
behind batches (bench_api.py's visibility probes beside its batch clients) is no reason to."""
LATENCY_TOLERANCE = 2.0
"""Window mean latency the limit tolerates, as a multiple of the baseline (the goal: admitted p99 within
2x the unloaded p99, and the client also sees the accept queue and the network)."""
GRADIENT_MIN = 0.5
"""The most the limit shrinks in one window (halves): one slow window (an fsync stall) does not shut the door."""
SMOOTHING = 0.5
"""Weight of the newest window's limit: from the initial limit to the floor beside bulk requests within
about ten windows (at 0.2 it took 2-3 s, most of a short overload, while single writes starved)."""
BASELINE_DRIFT = 0.001
"""How fast the baseline rises per window when every window is slower (0.1 %, ~1 %/s): a service that got
slower for good is followed within a minute, an overload of seconds is not mistaken for it."""


class Lane(Enum):
    INTERACTIVE = "interactive"
    """A single transaction (unary PostTransaction, HTTP POST): limited adaptively."""
    BULK = "bulk"
    """A bulk submission (PostTransactions): at most BULK_IN_FLIGHT_MAX at once."""


class WriteLimit:
    """Writes in progress per lane, and the adaptive interactive limit. Single-threaded (the event loop)."""

    def __init__(
        self,
        *,
        limit_initial: float = LIMIT_INITIAL,
        bulk_max: int = BULK_IN_FLIGHT_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert LIMIT_MIN_BESIDE_BULK <= limit_initial <= LIMIT_MAX
        assert bulk_max >= 1
        self.limit = float(limit_initial)
        self.bulk_max = bulk_max
        self.bulk_limit = bulk_max
        """bulk_max, or 1 while the last window's interactive writes were slower than tolerated."""
        self.in_flight = {Lane.INTERACTIVE: 0, Lane.BULK: 0}
        self._clock = clock
        self.baseline_seconds = math.inf
        """The lowest window mean latency seen (drifting up by BASELINE_DRIFT a window)."""
        self._window_started = clock()
        self._window_seconds_sum = 0.0
        self._window_samples = 0
        self._window_in_flight_max = 0
        self._bulk_seen = -math.inf
        """When a bulk request was last admitted: within BULK_RECENT_SECONDS the floor is LIMIT_MIN_BESIDE_BULK."""
        self._window_bulk_refused = False
        self._bulk_oversubscribed = False
        """Whether a bulk request was refused in the last window: more bulk callers than the lane takes."""

    def has_room(self, lane: Lane) -> bool:
        """An empty lane always admits one (the limit is measured only from writes that run)."""
        in_flight = self.in_flight[lane]
        if in_flight == 0:
            return True
        if lane is Lane.INTERACTIVE:
            return in_flight < int(self.limit)
        # The cut-back holds only while there is contention now: single writes in progress, or more bulk
        # requests than the lane takes (then single writes starve in gRPC's accept queue, where they are
        # not counted). A window's verdict alone outlives it: bench_api.py's four batch clients, refused
        # for a second after its 64-client row, came back at once.
        contended = self.in_flight[Lane.INTERACTIVE] >= INTERACTIVE_CONTENDED_MIN or self._bulk_oversubscribed
        room = in_flight < (self.bulk_limit if contended else self.bulk_max)
        if not room:
            self._window_bulk_refused = True
        return room

    def acquire(self, lane: Lane) -> bool:
        """Counts one more write in progress on `lane`; False (nothing counted) when the lane is full."""
        if not self.has_room(lane):
            return False
        self.in_flight[lane] += 1
        if lane is Lane.INTERACTIVE:
            self._window_in_flight_max = max(self._window_in_flight_max, self.in_flight[lane])
        else:
            self._bulk_seen = self._clock()
        assert self.in_flight[lane] >= 1
        return True

    def release(self, lane: Lane, seconds: float) -> None:
        """A write acquired on `lane` was answered after `seconds` (its latency from the door)."""
        assert self.in_flight[lane] >= 1
        assert seconds >= 0.0
        self.in_flight[lane] -= 1
        if lane is Lane.INTERACTIVE:
            self._window_seconds_sum += seconds
            self._window_samples += 1
            self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_started < WINDOW_SECONDS or self._window_samples < WINDOW_SAMPLES_MIN:
            return
        short = self._window_seconds_sum / self._window_samples
        self.baseline_seconds = min(self.baseline_seconds * (1.0 + BASELINE_DRIFT), short)
        gradient = max(GRADIENT_MIN, min(1.0, LATENCY_TOLERANCE * self.baseline_seconds / max(short, 1e-9)))
        target = self.limit * gradient
        self._bulk_oversubscribed = self._window_bulk_refused
        self._window_bulk_refused = False
        contended = self._window_in_flight_max >= INTERACTIVE_CONTENDED_MIN or self._bulk_oversubscribed
        self.bulk_limit = self.bulk_max if gradient >= 1.0 or not contended else 1
        if gradient >= 1.0 and self._window_in_flight_max * 2 >= self.limit:
            target += math.sqrt(self.limit)  # In use and fast enough: room for more.
        beside_bulk = self.in_flight[Lane.BULK] > 0 or now - self._bulk_seen < BULK_RECENT_SECONDS
        floor = LIMIT_MIN_BESIDE_BULK if beside_bulk else LIMIT_MIN
        self.limit = min(float(LIMIT_MAX), max(float(floor), self.limit + SMOOTHING * (target - self.limit)))
        self._window_started = now
        self._window_seconds_sum = 0.0
        self._window_samples = 0
        self._window_in_flight_max = self.in_flight[Lane.INTERACTIVE]
        metrics.write_limit.set(self.limit)
        assert LIMIT_MIN_BESIDE_BULK <= self.limit <= LIMIT_MAX
        assert self.baseline_seconds <= short


def too_busy(lane: Lane, in_flight: int, retry_after_seconds: float) -> LedgerError:
    """The refusal of a write beyond its lane's limit: RESOURCE_EXHAUSTED / 429 with the retry hint."""
    assert retry_after_seconds > 0.0
    assert in_flight >= 1
    return LedgerError(
        ErrorKind.EXHAUSTED,
        "TOO_MANY_REQUESTS",
        f"service busy: {in_flight} {lane.value} writes in progress",
        {"retry_after_ms": str(max(1, math.ceil(retry_after_seconds * 1000)))},
    )
