"""Kafka edges: the confirmed-entry publisher and the command ingestion consumer (real brokers only)."""
