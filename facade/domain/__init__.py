"""The ledger domain: transactions, accounts and their mapping onto the engine."""
