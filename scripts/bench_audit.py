"""Audit evidence at scale: a Merkle tree of N leaves (default 10 million) on disk.

Leaves are generated 32-byte hashes (random bytes), not hashes of real ledger entries: the tree, the
storage, the sealing and the proofs do not depend on what was hashed, and hashing 10 million real
entries would measure the change capture instead. Reports:

- build: leaves appended per second (leaf hashes written + every complete subtree root),
- seal: one signed checkpoint over the whole tree (root from stored subtree roots + Ed25519 + fsync),
- inclusion and consistency proof generation and verification (stand-alone verifier), p50 and p99,
- storage bytes per entry (all level files / N).

    .venv/bin/python scripts/bench_audit.py [--leaves 10000000] [--proofs 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from facade.audit.log import AuditLog
from facade.audit.merkle import APPEND_LEAVES_MAX
from facade.settings import AuditSettings
from ledger_audit_verifier import verify_consistency, verify_inclusion
from ledger_events import checkpoint as heads
from ledger_events.chain import Link
from ledger_testkit.stats import percentile

GOAL_PROOF_MS = 5.0
GOAL_VERIFY_MS = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=10_000_000)
    parser.add_argument("--proofs", type=int, default=1000)
    parser.add_argument("--keep", help="build in this directory and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    directory = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-audit-"))
    rng = random.Random(13)
    try:
        log = AuditLog(AuditSettings(data_dir=directory))
        tree = log.tree
        started = time.perf_counter()
        with tree.lock():
            while tree.size < args.leaves:
                count = min(APPEND_LEAVES_MAX, args.leaves - tree.size)
                block = rng.randbytes(32 * count)
                tree.append(tree.size, [block[i : i + 32] for i in range(0, len(block), 32)])
        build_seconds = time.perf_counter() - started
        # The head is what the change capture writes after its leaves; here, after the generated ones.
        heads.save(directory / "tree" / "head.json", heads.Checkpoint(time.time_ns(), Link(tree.size, b"", b"")))
        first_size = tree.size - 1 - rng.randrange(tree.size // 2)
        heads.save(directory / "tree" / "head.json", heads.Checkpoint(1, Link(first_size, b"", b"")))
        log.seal()  # An older checkpoint, for consistency proofs.
        heads.save(directory / "tree" / "head.json", heads.Checkpoint(2, Link(tree.size, b"", b"")))
        started = time.perf_counter()
        sealed = log.seal()
        seal_ms = (time.perf_counter() - started) * 1000
        key = log.keys.active().verifier
        assert sealed.tree_size == args.leaves
        root = sealed.checkpoint.root_hash

        prove_ms: list[float] = []
        verify_ms: list[float] = []
        hashes_per_proof: list[int] = []
        for _ in range(args.proofs):
            index = rng.randrange(args.leaves)
            started = time.perf_counter()
            proof = tree.inclusion_proof(index, args.leaves)
            leaf = tree.leaf(index)
            prove_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            verify_inclusion(index, args.leaves, leaf, proof, root)
            verify_ms.append((time.perf_counter() - started) * 1000)
            hashes_per_proof.append(len(proof))
        consistency_ms: list[float] = []
        consistency_verify_ms: list[float] = []
        old_root = tree.root(first_size)
        for _ in range(min(args.proofs, 200)):
            size_old = rng.randrange(1, args.leaves)
            old_root = tree.root(size_old)
            started = time.perf_counter()
            proof = tree.consistency_proof(size_old, args.leaves)
            consistency_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            verify_consistency(size_old, args.leaves, proof, old_root, root)
            consistency_verify_ms.append((time.perf_counter() - started) * 1000)
        stored = sum(path.stat().st_size for path in (directory / "tree").glob("level-*.bin"))
        log.close()
        report = {
            "leaves": args.leaves,
            "leaves_are": "generated 32-byte hashes, not real ledger entries",
            "build_seconds": round(build_seconds, 1),
            "build_leaves_per_second": round(args.leaves / build_seconds),
            "seal_ms": round(seal_ms, 3),
            "inclusion_proof_ms_p50": round(statistics.median(prove_ms), 4),
            "inclusion_proof_ms_p99": round(percentile(prove_ms, 0.99), 4),
            "inclusion_verify_ms_p50": round(statistics.median(verify_ms), 4),
            "inclusion_verify_ms_p99": round(percentile(verify_ms, 0.99), 4),
            "inclusion_proof_hashes_max": max(hashes_per_proof),
            "consistency_proof_ms_p50": round(statistics.median(consistency_ms), 4),
            "consistency_proof_ms_p99": round(percentile(consistency_ms, 0.99), 4),
            "consistency_verify_ms_p50": round(statistics.median(consistency_verify_ms), 4),
            "storage_bytes_per_entry": round(stored / args.leaves, 2),
            "key_id": key.key_id,
            "goal_proof_ms": GOAL_PROOF_MS,
            "goal_verify_ms": GOAL_VERIFY_MS,
            "cpus": os.cpu_count(),
        }
        for name, value in report.items():
            print(f"{name:32s} {value}")
        met = percentile(prove_ms, 0.99) < GOAL_PROOF_MS and percentile(verify_ms, 0.99) < GOAL_VERIFY_MS
        print("goals (p99 proof < 5 ms, p99 verify < 1 ms):", "met" if met else "NOT met")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
