"""A histogram counted in other processes (the front processes, facade.fronts) and exported on this one's
/metrics, merged into the same family as this process's own samples.

Why deltas over the relay connection and not prometheus_client's multiprocess mode: that mode changes every
metric of the engine's process (values in mmap'd files per process, a mode for each gauge, a directory to
set before the first import and to wipe at each start) for the sake of one histogram the fronts count. A
front instead sends, every FRONT_METRICS_INTERVAL_SECONDS, what its request histogram gained since its last
report (one small frame a second at most, only the series that moved: facade.front_process); the engine's
process adds it to its totals here. Deltas, not a front's own totals, so a restarted front (its counts back
at zero) never makes the exported counters go backwards. A report lost with a broken connection is lost:
those calls are missing from /metrics, never counted twice.

The merged family is registered in place of the local histogram (facade.observability.metrics), so one
family carries both: Prometheus rejects a family exposed twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "FORWARDED_SERIES_MAX",
    "FRONT_METRICS_INTERVAL_SECONDS",
    "DeltaError",
    "ForwardedHistogram",
    "HistogramDelta",
    "HistogramSnapshot",
    "decode_delta",
    "delta",
    "encode_delta",
    "snapshot",
]

FRONT_METRICS_INTERVAL_SECONDS = 1.0
"""How often a front reports its request histogram's gain (a scrape interval is 10-60 s)."""
FORWARDED_SERIES_MAX = 4096
"""Series (label sets) held from the fronts: labels are bounded sets (edge, RPC name, status code), so
more is a broken front; its report is refused whole."""
LABEL_BYTES_MAX = 128
_le_label: Callable[[float], str] = floatToGoString  # As prometheus_client writes `le` (it is untyped).

LabelKey = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeriesDelta:
    """What one series gained: its cumulative bucket counts (in bound order, +Inf last) and its sum."""

    labels: LabelKey
    buckets: tuple[int, ...]
    sum_seconds: float


HistogramDelta = tuple[SeriesDelta, ...]
HistogramSnapshot = dict[LabelKey, tuple[tuple[int, ...], float]]


class DeltaError(ValueError):
    """A report that is not one (shape, sizes, negative counts): the peer is broken."""


def snapshot(histogram: Histogram) -> HistogramSnapshot:
    """Every series of `histogram` now: cumulative bucket counts (bound order) and sum (public API only)."""
    buckets: dict[LabelKey, list[tuple[float, int]]] = {}
    sums: dict[LabelKey, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = dict(sample.labels)
                bound = float(labels.pop("le"))
                buckets.setdefault(tuple(labels.values()), []).append((bound, int(sample.value)))
            elif sample.name.endswith("_sum"):
                sums[tuple(sample.labels.values())] = sample.value
    taken: HistogramSnapshot = {}
    for key, counts in buckets.items():
        counts.sort()
        taken[key] = (tuple(count for _, count in counts), sums.get(key, 0.0))
    assert len(taken) == len(buckets)
    return taken


def delta(before: HistogramSnapshot, after: HistogramSnapshot) -> HistogramDelta:
    """The series that moved from `before` to `after` (a histogram only grows), with what they gained."""
    moved: list[SeriesDelta] = []
    for key, (counts, total) in after.items():
        old_counts, old_total = before.get(key, ((0,) * len(counts), 0.0))
        assert len(old_counts) == len(counts)
        gained = tuple(new - old for new, old in zip(counts, old_counts, strict=True))
        if gained[-1] > 0:
            moved.append(SeriesDelta(key, gained, total - old_total))
    assert all(min(series.buckets) >= 0 for series in moved)
    return tuple(moved)


def encode_delta(gained: HistogramDelta) -> bytes:
    """JSON (struct-free but not code: a peer's bytes are parsed, never executed)."""
    return json.dumps([[list(s.labels), list(s.buckets), s.sum_seconds] for s in gained]).encode()


def decode_delta(body: bytes, *, labels_count: int, buckets_count: int) -> HistogramDelta:
    """DeltaError for anything but a list of (labels_count labels, buckets_count counts, a sum)."""
    try:
        rows = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise DeltaError(f"not JSON: {error}") from error
    if not isinstance(rows, list) or len(rows) > FORWARDED_SERIES_MAX:
        raise DeltaError("not a bounded list of series")
    decoded: list[SeriesDelta] = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3):
            raise DeltaError("a series is [labels, buckets, sum]")
        labels, buckets, total = row
        if not (
            isinstance(labels, list)
            and len(labels) == labels_count
            and all(isinstance(label, str) and len(label) <= LABEL_BYTES_MAX for label in labels)
        ):
            raise DeltaError("labels")
        if not (
            isinstance(buckets, list)
            and len(buckets) == buckets_count
            and all(type(count) is int and count >= 0 for count in buckets)
            and buckets == sorted(buckets)
        ):
            raise DeltaError("bucket counts")
        if not (isinstance(total, int | float) and math.isfinite(total) and total >= 0):
            raise DeltaError("sum")
        decoded.append(SeriesDelta(tuple(labels), tuple(buckets), float(total)))
    assert len(decoded) == len(rows)
    return tuple(decoded)


class ForwardedHistogram(Collector):
    """`local` (this process's histogram, not registered itself) exported with the fronts' gains added."""

    def __init__(self, local: Histogram, bounds: tuple[float, ...], label_names: tuple[str, ...]) -> None:
        assert bounds and bounds == tuple(sorted(bounds))
        assert label_names
        self._local = local
        self._bounds = (*bounds, math.inf)
        self._label_names = label_names
        self._totals: dict[LabelKey, tuple[list[int], list[float]]] = {}

    @property
    def buckets_count(self) -> int:
        return len(self._bounds)

    @property
    def labels_count(self) -> int:
        return len(self._label_names)

    def add(self, gained: HistogramDelta) -> bool:
        """Adds a front's report; False (nothing added) when it would hold more than FORWARDED_SERIES_MAX."""
        fresh = {series.labels for series in gained} - self._totals.keys()
        if len(self._totals) + len(fresh) > FORWARDED_SERIES_MAX:
            return False
        for series in gained:
            assert len(series.buckets) == len(self._bounds)
            counts, total = self._totals.setdefault(series.labels, ([0] * len(self._bounds), [0.0]))
            for index, count in enumerate(series.buckets):
                counts[index] += count
            total[0] += series.sum_seconds
        assert len(self._totals) <= FORWARDED_SERIES_MAX
        return True

    def collect(self) -> Iterator[Metric]:
        [family] = self._local.collect()
        merged = Metric(family.name, family.documentation, family.type, family.unit)
        seen: set[LabelKey] = set()
        for sample in family.samples:
            labels = dict(sample.labels)
            le = labels.pop("le", None)
            key = tuple(labels[name] for name in self._label_names)
            remote = self._totals.get(key)
            value = sample.value
            if remote is not None:
                seen.add(key)
                counts, total = remote
                if sample.name.endswith("_bucket") and le is not None:
                    value += counts[self._bounds.index(float(le))]
                elif sample.name.endswith("_count"):
                    value += counts[-1]
                elif sample.name.endswith("_sum"):
                    value += total[0]
            merged.add_sample(sample.name, sample.labels, value, sample.timestamp, sample.exemplar)
        for key, (counts, total) in self._totals.items():
            if key in seen:
                continue
            labels = dict(zip(self._label_names, key, strict=True))
            for bound, count in zip(self._bounds, counts, strict=True):
                merged.add_sample(f"{family.name}_bucket", {**labels, "le": _le_label(bound)}, count)
            merged.add_sample(f"{family.name}_count", labels, counts[-1])
            merged.add_sample(f"{family.name}_sum", labels, total[0])
        yield merged
