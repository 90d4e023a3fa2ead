"""The write path's counters in a service's /metrics: what scripts/bench_api.py notes for each single-
transaction row, and what its test reads from a real service (shared here: tests and scripts never import
each other)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENGINE_COUNTER_SERIES", "EngineCounters"]

ENGINE_COUNTER_SERIES = {
    'ledger_engine_batch_size_count{operation="create_transfers"}': "batches",
    'ledger_engine_batch_size_sum{operation="create_transfers"}': "transfers",
    'ledger_engine_batch_duration_seconds_sum{operation="create_transfers"}': "batch_seconds",
    "ledger_journal_fsync_seconds_count": "appends",
    "ledger_journal_fsync_seconds_sum": "append_seconds",
}
"""The /metrics series a row's engine note is computed from (the embedded engine's; a TigerBeetle backend has
no journal series and its note leaves the append out)."""


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """Why a row's single writes cost what they do, from the server's own counters: how many transfers an
    engine batch carried (every batch pays the same hand-offs and fdatasyncs) and how long a journal append
    took (write + fdatasync of the record, then of its header copy, with the GIL waits between them), within
    the batch's round trip (from the event loop to the engine's thread and back)."""

    batches: float = 0.0
    transfers: float = 0.0
    batch_seconds: float = 0.0
    appends: float = 0.0
    append_seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> EngineCounters:
        found: dict[str, float] = {}
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            field_name = ENGINE_COUNTER_SERIES.get(series)
            if field_name is not None:
                found[field_name] = float(value)
        return cls(**found)

    def note(self, before: EngineCounters) -> str:
        """This row's share (the counters now minus `before`), as a note."""
        batches = self.batches - before.batches
        if batches <= 0:
            return "engine: no batch"
        note = f"engine: {(self.transfers - before.transfers) / batches:,.1f} transfers/batch"
        note += f", round trip {(self.batch_seconds - before.batch_seconds) / batches * 1e3:.2f} ms mean"
        appends = self.appends - before.appends
        if appends > 0:
            note += f", append {(self.append_seconds - before.append_seconds) / appends * 1e3:.2f} ms mean"
        return note
