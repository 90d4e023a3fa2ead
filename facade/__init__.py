"""Ledger service facade: gRPC/HTTP/Kafka edges over a TigerBeetle-semantics ledger engine."""
