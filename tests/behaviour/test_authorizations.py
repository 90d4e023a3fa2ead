"""Two-phase transactions through both edges: authorize (a hold), capture fully or partly, void, and the
refusals of resolving an authorization twice."""

from __future__ import annotations

import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from tests.behaviour._clients import Code, Rpc
from tests.behaviour.conftest import Tenant, credit, transfer

pytestmark = pytest.mark.asyncio(loop_scope="package")


def capture(key: str, authorization_id: str, amount: str = "") -> pb.CaptureTransactionRequest:
    return pb.CaptureTransactionRequest(idempotency_key=key, authorization_id=authorization_id, amount=amount)


def void(key: str, authorization_id: str) -> pb.VoidTransactionRequest:
    return pb.VoidTransactionRequest(idempotency_key=key, authorization_id=authorization_id)


async def test_a_hold_is_captured_partly_then_cannot_be_voided(tenant: Tenant) -> None:
    alice, shop = await tenant.account("alice"), await tenant.account("shop")
    await tenant.post("fund", credit(alice, 1_000))
    hold = await tenant.post("auth-1", transfer(alice, shop, 300), authorize_only=True)
    assert hold["status"] == "TRANSACTION_STATUS_AUTHORIZED" and hold["authorization_id"] == ""
    balance = await tenant.balance(alice)
    assert (balance["available"], balance["pending_debits"], balance["posted"]) == ("700", "300", "1000")
    assert (await tenant.balance(shop))["pending_credits"] == "300"

    captured = await tenant.call(Rpc.CAPTURE_TRANSACTION, capture("cap-1", hold["transaction_id"], "200"))
    assert captured["status"] == "TRANSACTION_STATUS_POSTED" and captured["authorization_id"] == hold["transaction_id"]
    assert captured["legs"][0]["amount"] == "200" and captured["idempotency_key"] == "cap-1"
    assert (await tenant.available(alice), await tenant.available(shop)) == (800, 200), "the rest is released"
    retried = await tenant.call(Rpc.CAPTURE_TRANSACTION, capture("cap-1", hold["transaction_id"], "200"))
    assert retried["deduplicated"] is True and retried["transaction_id"] == captured["transaction_id"]
    late = await tenant.refused(Rpc.VOID_TRANSACTION, void("void-1", hold["transaction_id"]))
    assert (late.code, late.reason) == (Code.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_CAPTURED")
    again = await tenant.refused(Rpc.CAPTURE_TRANSACTION, capture("cap-2", hold["transaction_id"]))
    assert (again.code, again.reason) == (Code.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_CAPTURED")
    assert (await tenant.available(alice), await tenant.available(shop)) == (800, 200)


async def test_a_voided_hold_releases_the_money_and_cannot_be_captured(tenant: Tenant) -> None:
    alice, shop = await tenant.account("alice"), await tenant.account("shop")
    await tenant.post("fund", credit(alice, 1_000))
    hold = await tenant.post("auth-1", transfer(alice, shop, 100), authorize_only=True)
    assert await tenant.available(alice) == 900
    voided = await tenant.call(Rpc.VOID_TRANSACTION, void("void-1", hold["transaction_id"]))
    assert voided["status"] == "TRANSACTION_STATUS_VOIDED" and voided["authorization_id"] == hold["transaction_id"]
    balance = await tenant.balance(alice)
    assert (balance["available"], balance["pending_debits"], balance["posted"]) == ("1000", "0", "1000")
    after = await tenant.refused(Rpc.CAPTURE_TRANSACTION, capture("cap-1", hold["transaction_id"]))
    assert (after.code, after.reason) == (Code.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_VOIDED")
    assert (await tenant.available(alice), await tenant.available(shop)) == (1_000, 0)


async def test_a_full_capture_and_capture_refusals(tenant: Tenant) -> None:
    alice, shop = await tenant.account("alice"), await tenant.account("shop")
    await tenant.post("fund", credit(alice, 1_000))
    hold = await tenant.post("auth-1", transfer(alice, shop, 400), authorize_only=True)
    over = await tenant.refused(Rpc.CAPTURE_TRANSACTION, capture("cap-over", hold["transaction_id"], "401"))
    assert (over.code, over.reason) == (Code.INVALID_ARGUMENT, "CAPTURE_EXCEEDS_AUTHORIZATION")
    full = await tenant.call(Rpc.CAPTURE_TRANSACTION, capture("cap-full", hold["transaction_id"]))
    assert full["status"] == "TRANSACTION_STATUS_POSTED" and full["legs"][0]["amount"] == "400"
    assert (await tenant.available(alice), await tenant.available(shop)) == (600, 400)

    posted = await tenant.post("plain", transfer(alice, shop, 1))
    not_hold = await tenant.refused(Rpc.CAPTURE_TRANSACTION, capture("cap-plain", posted["transaction_id"]))
    assert (not_hold.code, not_hold.reason) == (Code.FAILED_PRECONDITION, "NOT_AN_AUTHORIZATION")
    missing = await tenant.refused(Rpc.CAPTURE_TRANSACTION, capture("cap-x", "0" * 32))
    assert (missing.code, missing.reason) == (Code.NOT_FOUND, "AUTHORIZATION_NOT_FOUND")
    missing_void = await tenant.refused(Rpc.VOID_TRANSACTION, void("void-x", "0" * 32))
    assert (missing_void.code, missing_void.reason) == (Code.NOT_FOUND, "AUTHORIZATION_NOT_FOUND")
