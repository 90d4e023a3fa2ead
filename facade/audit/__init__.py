"""Audit evidence: a Merkle tree over every change, signed checkpoints, proofs, and the self-audit."""
