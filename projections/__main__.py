"""`python -m projections ...`: the read-model commands until the `ledger` CLI wires them in."""

from projections.cli import main

main()
