"""The event contract: what change capture publishes and the read model consumes, in one bottom package.

- `gen/ledger/v1/entries_pb2`: the generated `ledger.v1.LedgerEntry` messages (proto/ledger/v1/entries.proto);
- `chain`: the audit hash chain (canonical bytes, links) over every committed change;
- `entries`: schema version, event ids, engine change kinds, the canonical metadata bytes of an entry;
- `checkpoint`: a position in the stream (last change + chain head), stored atomically;
- `records`: how ledger.v1 messages travel as Kafka records (value encodings, CloudEvents headers).

It imports nothing of the service (`facade`) or the read model (`projections`): both import it, and
neither needs the other to agree on an event (`lint-imports`, contracts in pyproject.toml).
"""
