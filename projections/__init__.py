"""ClickHouse read model: history, as-of balances, reconciliation and audit exports."""
