"""The operations layer: one function per RPC of ledger.v1.Ledger (facade.operations.ledger) and
ledger.v1.History (facade.operations.history), each taking the service, the caller, the typed request and
a deadline. Every edge (gRPC, the JSON gateway, Kafka ingestion) delegates here; facade.operations.convert
is the one converter between the API's messages and the domain's views."""
