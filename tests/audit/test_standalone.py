"""The stand-alone verifier depends on nothing but the standard library and `cryptography`: importing
it and verifying a bundle loads no module of the service (facade, projections) nor any other package."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import ledger_audit_verifier
from ledger_audit_verifier.__main__ import main
allowed = set(sys.stdlib_module_names) | {"ledger_audit_verifier", "cryptography", "cffi", "_cffi_backend"}
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} - allowed)))
"""


def test_verifier_imports_only_stdlib_and_cryptography() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    foreign = [name for name in json.loads(done.stdout) if not name.startswith("_")]
    assert foreign == []
