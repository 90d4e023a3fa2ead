"""python -m ledger_audit_verifier (--export DIR | --proof FILE) --public-key FILE: exit 0 when verified."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ledger_audit_verifier._bundle import verify_bundle
from ledger_audit_verifier._merkle import ProofError
from ledger_audit_verifier._note import NoteError, parse_keys
from ledger_audit_verifier._proofs import verify_proof_document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger_audit_verifier", description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--export", help="an export bundle directory")
    target.add_argument("--proof", help="a proof document (JSON)")
    parser.add_argument(
        "--public-key", required=True, help="verifier key lines (one per signing key) or an Ed25519 public key PEM"
    )
    parser.add_argument("--key-name", default="", help="key name, when --public-key is a PEM file")
    args = parser.parse_args(argv)
    try:
        key = parse_keys(Path(args.public_key).read_text(), name=args.key_name)
    except (OSError, NoteError) as error:
        print(json.dumps({"ok": False, "problems": [f"public key: {error}"]}))
        return 2
    if args.export:
        report = verify_bundle(Path(args.export), key)
        print(json.dumps({"ok": report.ok, "rows_checked": report.rows_checked, "rows_proved": report.rows_proved,
                          "tree_size": report.tree_size, "root_hash": report.root_hash, "key_id": report.key_id,
                          "problems": report.problems}))  # fmt: skip
        return 0 if report.ok else 1
    try:
        proved = verify_proof_document(json.loads(Path(args.proof).read_text()), key)
    except (ProofError, NoteError, ValueError) as error:
        print(json.dumps({"ok": False, "problems": [str(error)]}))
        return 1
    print(json.dumps({"ok": True, "proved": proved}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
