"""`ledger audit keys | checkpoint | prove | consistency`: signing keys, on-demand checkpoints and proofs.

Proofs are printed (or written with --out) as JSON documents that `python -m ledger_audit_verifier
--proof FILE --public-key KEY` checks offline (layout: ledger_audit_verifier/_proofs.py, docs/audit.md).
These commands open the audit data dir (settings.audit.data_dir); only `prove --transaction/--event`
opens the read model, to find the changes' sequences.
"""

from __future__ import annotations

import argparse
import base64
import json
from typing import Any

from facade.audit.log import AuditLog, SealedCheckpoint, open_audit_log
from facade.settings import Settings
from projections._cli_input import CliInputError
from projections.audit_evidence import PROVE_CHANGES_MAX

__all__ = ["register_evidence_commands"]


def _emit(document: object, out: str | None) -> None:
    text = json.dumps(document, ensure_ascii=False)
    if out:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    print(text)


def _checkpoint_at(audit: AuditLog, tree_size: int | None) -> SealedCheckpoint:
    if tree_size is not None:
        try:
            return audit.at_size(tree_size)
        except KeyError as error:
            raise CliInputError(f"--tree-size: {error.args[0]}") from None
    latest = audit.latest()
    if latest is None:
        raise SystemExit("no checkpoint yet: run `ledger audit checkpoint` (or let the service seal one)")
    return latest


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    audit = open_audit_log(settings)
    try:
        if args.rotate:
            audit.keys.rotate()
        active = audit.keys.active().verifier.key_id
        for key in audit.keys.verifier_keys():
            if args.verifier_keys:
                print(key.text())  # A key file for `audit verify --public-key`: every key, old ones too.
            else:
                _emit({"key_id": key.key_id, "verifier_key": key.text(), "active": key.key_id == active}, None)
    finally:
        audit.close()
    return 0


def _checkpoint(settings: Settings, args: argparse.Namespace) -> int:
    del args
    audit = open_audit_log(settings)
    try:
        sealed = audit.seal()
    finally:
        audit.close()
    checkpoint = sealed.checkpoint
    _emit(
        {
            "tree_size": checkpoint.tree_size,
            "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
            "timestamp_last": checkpoint.timestamp_last,
            "key_id": checkpoint.key_id,
            "note": sealed.note,
        },
        None,
    )
    return 0


def _sequences(settings: Settings, args: argparse.Namespace) -> list[int]:
    if args.sequence is not None:
        return [args.sequence]
    from projections.audit_evidence import sequences_of_event, sequences_of_transaction
    from projections.client import open_client

    client = open_client(settings.clickhouse)
    try:
        if args.transaction is not None:
            found = sequences_of_transaction(client, args.transaction)
        else:
            try:
                found = sequences_of_event(client, args.event)
            except ValueError as error:
                raise CliInputError(f"--event: {error}") from None
    finally:
        client.close()
    if not found:
        raise CliInputError("no such change in the read model")
    if len(found) > PROVE_CHANGES_MAX:
        raise CliInputError(f"more than {PROVE_CHANGES_MAX} changes: prove them by --sequence")
    return found


def _prove(settings: Settings, args: argparse.Namespace) -> int:
    sequences = _sequences(settings, args)
    audit = open_audit_log(settings)
    try:
        sealed = _checkpoint_at(audit, args.tree_size)
        for sequence in sequences:
            if not 1 <= sequence <= sealed.tree_size:
                raise CliInputError(f"change {sequence} is not in the checkpoint of size {sealed.tree_size}")
            proof = audit.tree.inclusion_proof(sequence - 1, sealed.tree_size)
            document = {
                "type": "inclusion",
                "checkpoint": sealed.note,
                "sequence": sequence,
                "leaf_index": sequence - 1,
                "leaf_hash": base64.b64encode(audit.tree.leaf(sequence - 1)).decode(),
                "hashes": [base64.b64encode(h).decode() for h in proof],
            }
            _emit(document, args.out)
    finally:
        audit.close()
    return 0


def _consistency(settings: Settings, args: argparse.Namespace) -> int:
    audit = open_audit_log(settings)
    try:
        old = audit.at_size(args.old)
        new = _checkpoint_at(audit, args.new)
        proof = audit.tree.consistency_proof(old.tree_size, new.tree_size)
    except (KeyError, ValueError) as error:
        raise CliInputError(str(error.args[0]) if error.args else str(error)) from None
    finally:
        audit.close()
    document = {
        "type": "consistency",
        "old_checkpoint": old.note,
        "new_checkpoint": new.note,
        "hashes": [base64.b64encode(h).decode() for h in proof],
    }
    _emit(document, args.out)
    return 0


def register_evidence_commands(audit_commands: Any) -> None:
    """Adds keys, checkpoint, prove and consistency to the `audit` subcommands."""
    keys = audit_commands.add_parser("keys", help="list the checkpoint signing keys (public halves)")
    keys.add_argument("--rotate", action="store_true", help="generate a new signing key first")
    keys.add_argument("--verifier-keys", action="store_true", help="print only the key lines (a --public-key file)")
    keys.set_defaults(projections_run=_keys)
    checkpoint = audit_commands.add_parser("checkpoint", help="seal a signed checkpoint now")
    checkpoint.set_defaults(projections_run=_checkpoint)
    prove = audit_commands.add_parser("prove", help="inclusion proof of a change in a signed checkpoint")
    which = prove.add_mutually_exclusive_group(required=True)
    which.add_argument("--sequence", type=int, help="the change's chain sequence")
    which.add_argument("--transaction", help="a transaction id (every change it made)")
    which.add_argument("--event", help="an entry event id (<engine timestamp>:D or :C)")
    prove.add_argument("--tree-size", type=int, help="the checkpoint (default: the latest)")
    prove.add_argument("--out", help="also write the proof document to this file")
    prove.set_defaults(projections_run=_prove)
    consistency = audit_commands.add_parser("consistency", help="proof that a checkpoint extends an older one")
    consistency.add_argument("--old", type=int, required=True, help="tree size of the older checkpoint")
    consistency.add_argument("--new", type=int, help="tree size of the newer checkpoint (default: the latest)")
    consistency.add_argument("--out", help="also write the proof document to this file")
    consistency.set_defaults(projections_run=_consistency)
