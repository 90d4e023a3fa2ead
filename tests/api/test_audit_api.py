"""ledger.v1.History audit evidence over loopback gRPC: the running service feeds its Merkle tree from
the engine's change feed and seals checkpoints; checkpoints and inclusion/consistency proofs come back
over the API and verify with the stand-alone verifier and the public key alone. Scope ledger.audit."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as hrpc
from facade.audit.keys import KeyRing
from facade.auth import SCOPE_AUDIT, SCOPE_READ, SCOPE_WRITE
from facade.settings import AuditSettings
from ledger_audit_verifier import VerifierKey, parse_checkpoint, verify_consistency, verify_inclusion
from tests.api.conftest import Api, credit, make_settings, transfer

WAIT_SECONDS = 30.0


async def open_audited(tmp_path: Path, audit: AuditSettings) -> Api:
    import grpc as grpc_module

    from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
    from facade.app import start

    settings = make_settings(tmp_path, history=True, http_port=0).model_copy(update={"audit": audit})
    server = await start(settings)
    channel = grpc_module.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Api(settings, server, channel, rpc.LedgerStub(channel))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_audited(tmp_path, AuditSettings(checkpoint_entries=2, self_audit_interval_seconds=0.1))
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()


async def test_quiet_tail_is_sealed_by_time(tmp_path: Path) -> None:
    """Fewer changes than checkpoint_entries, then nothing: the interval seals them anyway."""
    api = await open_audited(tmp_path, AuditSettings(checkpoint_entries=1000, checkpoint_interval_seconds=0.2))
    try:
        alice = await api.account("alice")
        posted = await api.post("t1", credit(alice, 3))
        checkpoint = await sealed_through(api, posted.committed_at_ns)
        assert checkpoint.tree_size == 1
    finally:
        await api.channel.close()
        await api.server.stop()


def reason(error: grpc.aio.AioRpcError) -> str:
    info = error_info(error)
    assert info is not None
    return str(info.reason)


def history(api: Api) -> Any:
    return hrpc.HistoryStub(api.channel)


def public_key(api: Api) -> VerifierKey:
    """What an auditor gets from us out of band (`ledger audit keys`)."""
    keys = KeyRing(api.settings.engine.data_dir.parent / "audit", api.settings.audit.origin).verifier_keys()
    assert len(keys) == 1
    return keys[0]


async def sealed_through(api: Api, timestamp: int) -> hpb.SignedCheckpoint:
    """Waits until a checkpoint covers the change committed at `timestamp` (the read model too)."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        try:
            checkpoint: hpb.SignedCheckpoint = await history(api).GetCheckpoint(
                hpb.GetCheckpointRequest(), metadata=api.auth()
            )
            totals = await history(api).GetDailyTotals(hpb.GetDailyTotalsRequest(), metadata=api.auth())
            if checkpoint.timestamp_last >= timestamp and totals.projected_until >= timestamp:
                return checkpoint
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no checkpoint yet.
                raise
        assert asyncio.get_running_loop().time() < deadline, "no checkpoint sealed"
        await asyncio.sleep(0.05)


async def test_checkpoints_and_proofs_verify_offline(api: Api) -> None:
    alice, bob = await api.account("alice"), await api.account("bob")
    first = await api.post("a1", credit(alice, 10_000))
    await api.post("a2", transfer(alice, bob, 2_500))
    old = await sealed_through(api, first.committed_at_ns)
    last = await api.post("a3", transfer(alice, bob, 100))
    await api.post("a4", transfer(bob, alice, 7))
    new = await sealed_through(api, last.committed_at_ns)
    key = public_key(api)
    audit_only = api.auth(scopes=frozenset({SCOPE_AUDIT}))

    checkpoint = parse_checkpoint(new.note.encode(), key)  # Signed by the service's key.
    assert (checkpoint.tree_size, checkpoint.root_hash, checkpoint.key_id) == (new.tree_size, new.root_hash, key.key_id)

    proof = await history(api).GetInclusionProof(
        hpb.GetInclusionProofRequest(transaction_id=last.transaction_id), metadata=audit_only
    )
    assert len(proof.proofs) == 1
    signed = parse_checkpoint(proof.checkpoint.note.encode(), key)
    leaf = proof.proofs[0]
    verify_inclusion(leaf.leaf_index, signed.tree_size, leaf.leaf_hash, list(leaf.hashes), signed.root_hash)

    by_sequence = await history(api).GetInclusionProof(
        hpb.GetInclusionProofRequest(sequence=1, tree_size=old.tree_size), metadata=audit_only
    )
    older = parse_checkpoint(by_sequence.checkpoint.note.encode(), key)
    assert older.tree_size == old.tree_size
    item = by_sequence.proofs[0]
    verify_inclusion(0, older.tree_size, item.leaf_hash, list(item.hashes), older.root_hash)

    consistency = await history(api).GetConsistencyProof(
        hpb.GetConsistencyProofRequest(old_size=old.tree_size), metadata=audit_only
    )
    a = parse_checkpoint(consistency.old_checkpoint.note.encode(), key)
    b = parse_checkpoint(consistency.new_checkpoint.note.encode(), key)
    assert b.tree_size >= new.tree_size > a.tree_size
    verify_consistency(a.tree_size, b.tree_size, list(consistency.hashes), a.root_hash, b.root_hash)
    assert b.previous_hash != bytes(32)  # Not the first: checkpoints chain, each naming the previous body's hash.

    # Every checkpoint is in the read model too, verbatim.
    from projections.audit_checkpoints import list_checkpoints

    assert api.server.read_model is not None
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    stored = await api.server.read_model.query(list_checkpoints)
    while new.tree_size not in [row.tree_size for row in stored]:
        # Stored right after the seal that GetCheckpoint already shows.
        assert asyncio.get_running_loop().time() < deadline, "checkpoint not stored in the read model"
        await asyncio.sleep(0.05)
        stored = await api.server.read_model.query(list_checkpoints)
    for row in stored:
        assert parse_checkpoint(row.note.encode(), key).tree_size == row.tree_size


async def test_scope_and_bad_requests(api: Api) -> None:
    alice = await api.account("alice")
    await api.post("b1", credit(alice, 5))
    posted = await api.post("b2", credit(alice, 6))  # Two changes: the tree seals every 2.
    await sealed_through(api, posted.committed_at_ns)
    stub = history(api)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.GetCheckpoint(
            hpb.GetCheckpointRequest(), metadata=api.auth(scopes=frozenset({SCOPE_READ, SCOPE_WRITE}))
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetInclusionProof(hpb.GetInclusionProofRequest(transaction_id="no-such"), metadata=api.auth())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(missing.value) == "CHANGE_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as beyond:
        await stub.GetInclusionProof(hpb.GetInclusionProofRequest(sequence=10_000), metadata=api.auth())
    assert reason(beyond.value) == "NOT_IN_CHECKPOINT"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.GetConsistencyProof(hpb.GetConsistencyProofRequest(old_size=999), metadata=api.auth())
    assert reason(unknown.value) == "CHECKPOINT_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as no_target:
        await stub.GetInclusionProof(hpb.GetInclusionProofRequest(), metadata=api.auth())
    assert no_target.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_json_gateway_routes(api: Api) -> None:
    """The same evidence under /v1/audit, proto3 JSON (u64 decimal strings, base64 hashes)."""
    import httpx

    alice, bob = await api.account("alice"), await api.account("bob")
    await api.post("c1", credit(alice, 900))
    posted = await api.post("c2", transfer(alice, bob, 90))
    await sealed_through(api, posted.committed_at_ns)
    key = public_key(api)
    base = f"http://127.0.0.1:{api.server.http_port}/v1/audit"
    audit_only = dict(api.auth(scopes=frozenset({SCOPE_AUDIT})))
    async with httpx.AsyncClient() as client:
        checkpoint = (await client.get(f"{base}/checkpoint", headers=audit_only)).json()
        signed = parse_checkpoint(checkpoint["note"].encode(), key)
        assert checkpoint["tree_size"] == str(signed.tree_size)
        answer = await client.get(
            f"{base}/inclusion-proof", params={"transaction_id": posted.transaction_id}, headers=audit_only
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        tree = parse_checkpoint(body["checkpoint"]["note"].encode(), key)
        (leaf,) = body["proofs"]
        hashes = [base64.b64decode(h) for h in leaf["hashes"]]
        verify_inclusion(
            int(leaf["leaf_index"]), tree.tree_size, base64.b64decode(leaf["leaf_hash"]), hashes, tree.root_hash
        )
        consistency = await client.get(
            f"{base}/consistency-proof", params={"old_size": str(signed.tree_size)}, headers=audit_only
        )
        assert consistency.status_code == 200 and consistency.json()["hashes"] == []  # Same checkpoint.
        denied = await client.get(f"{base}/checkpoint", headers=dict(api.auth(scopes=frozenset({SCOPE_READ}))))
        assert denied.status_code == 403
        unknown = await client.get(f"{base}/checkpoint", params={"size": "1"}, headers=audit_only)
        assert (unknown.status_code, unknown.json()["reason"]) == (400, "UNKNOWN_QUERY_PARAMETER")
        missing = await client.get(f"{base}/checkpoint", params={"tree_size": "77"}, headers=audit_only)
        assert (missing.status_code, missing.json()["reason"]) == (404, "CHECKPOINT_NOT_FOUND")


async def test_the_self_audit_fold_runs_in_the_read_models_process_and_matches_the_signed_root(
    api: Api,
) -> None:
    """The self-audit folds the read model's chain where the rows are (the read model's own process),
    and what comes back is the signed tree: same size, same root. A function that could not travel by
    name (a closure) is refused before it is sent."""
    from facade.audit.self_audit import ChainFold, fold_chain

    alice, bob = await api.account("alice"), await api.account("bob")
    await api.post("f1", credit(alice, 1_000))
    for n in range(4):
        last = await api.post(f"f-pay-{n}", transfer(alice, bob, 10))
    checkpoint = await sealed_through(api, last.committed_at_ns)
    read_model = api.server.read_model
    assert read_model is not None and read_model.process is not None and read_model.process.pid is not None
    fold, failure = await read_model.query_in_model(fold_chain, ChainFold(), checkpoint.tree_size)
    assert failure is None
    assert fold.frontier.size == checkpoint.tree_size >= 5
    assert fold.frontier.root() == checkpoint.root_hash
    # Folding on from where it stopped: nothing more to fold up to the same size.
    again, failure = await read_model.query_in_model(fold_chain, fold, checkpoint.tree_size)
    assert failure is None and again.frontier.root() == checkpoint.root_hash

    def local(client: object) -> object:
        return client

    with pytest.raises(AssertionError):
        await read_model.query_in_model(local)
