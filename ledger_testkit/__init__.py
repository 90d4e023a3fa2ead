"""What the tests and the benchmark scripts share, so neither imports the other: real parts started on
loopback (a KRaft Kafka broker or cluster, a throwaway PostgreSQL cluster), free ports, percentiles.

Not shipped with the service (the wheel holds facade, projections, ledger_events and the verifier).
"""
