"""The service as its users run it: the `ledger` command of this virtualenv."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["ledger_executable"]


def ledger_executable() -> str:
    """The `ledger` console script installed beside this interpreter (else the one on PATH)."""
    return shutil.which("ledger", path=str(Path(sys.executable).parent)) or "ledger"
