"""Change capture: the engine's committed changes, in commit order, as confirmed-entry events."""
