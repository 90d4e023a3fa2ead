"""The gRPC edge: a thin servicer over LedgerService, errors as google.rpc.Status details."""
