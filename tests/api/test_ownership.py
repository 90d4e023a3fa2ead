"""Ownership fails closed and lives in the engine: the shipped two-façade layout (each façade with its
own metadata store, one engine) and a façade whose metadata store was lost, over real gRPC on loopback.

Two LedgerService instances share ONE embedded engine object (the engine is a single writer: one
object, one journal) and have their own SQLite metadata stores, exactly what two façade processes
over one TigerBeetle cluster see. Client A owns an account created through façade 1; client B
(read + write, no admin) must not move or read it through either façade, and A must be able to use
it through façade 2, which learns the owner from the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.auth_interceptor import AuthInterceptor
from facade.api.errors import error_info
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.api.guard import RequestGuardInterceptor
from facade.api.servicer import LedgerServicer
from facade.auth import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, Authenticator, issue_token
from facade.domain.accounts import ACCOUNT_CODE_CUSTOMER, customer_account_flags
from facade.domain.ids import account_id, transaction_id
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFilter, AccountFilterFlags, CreateAccountStatus
from facade.metadata_store import MetadataStore
from facade.service import LedgerService
from facade.settings import ApiSettings, AuthSettings

from .conftest import credit, debit, transfer

READ_WRITE = frozenset({SCOPE_READ, SCOPE_WRITE})
ADMIN = frozenset({SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE})
AUTH = AuthSettings(mode="dev")
USD = 840


@dataclass
class Facade:
    """One façade: its own metadata store and service, a real gRPC server on a loopback port."""

    store: MetadataStore
    service: LedgerService
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    stub: Any  # The generated stub's types describe synchronous channels; over grpc.aio calls are awaitable.

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(None)
        await self.service.close()
        await self.store.close()

    async def create_account(self, client: str, reference: str) -> str:
        created = await self.stub.CreateAccount(
            pb.CreateAccountRequest(
                currency="USD", external_reference=reference, owner=reference, type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
            ),
            metadata=auth(client, ADMIN),  # Creating accounts is administration; using them is not.
        )
        return str(created.account_id)

    async def post(self, client: str, key: str, *legs: pb.Leg, scopes: frozenset[str] = READ_WRITE) -> pb.Transaction:
        posted: pb.Transaction = await self.stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key=key, legs=list(legs)), metadata=auth(client, scopes)
        )
        return posted

    async def available(self, client: str, account: str, scopes: frozenset[str] = READ_WRITE) -> int:
        balance = await self.stub.GetBalance(pb.GetBalanceRequest(account_id=account), metadata=auth(client, scopes))
        return int(balance.available)


def auth(client: str, scopes: frozenset[str]) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {issue_token(AUTH, client, scopes)}"),)


async def open_facade(engine: EmbeddedEngine, store_path: Path) -> Facade:
    store = await MetadataStore.open(store_path)
    service = LedgerService(engine, store, ApiSettings(port=0, http_port=-1, metadata_db=store_path))
    await service.start()
    server = grpc.aio.server(interceptors=[AuthInterceptor(Authenticator(AUTH)), RequestGuardInterceptor()])
    rpc.add_LedgerServicer_to_server(LedgerServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return Facade(store, service, server, channel, rpc.LedgerStub(channel))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    shared = await EmbeddedEngine.open(tmp_path / "engine")
    try:
        yield shared
    finally:
        await shared.close()


async def refused(call: object) -> None:
    """Answered exactly like a missing account: NOT_FOUND, ACCOUNT_NOT_FOUND."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND, raised.value.details()
    info = error_info(raised.value)
    assert info is not None and info.reason == "ACCOUNT_NOT_FOUND"


async def movements(engine: EmbeddedEngine, account: str) -> int:
    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    return len(await engine.get_account_transfers(AccountFilter(account_id=int(account), limit=100, flags=flags)))


async def assert_cannot_touch(facade: Facade, engine: EmbeddedEngine, victim: str, thief_account: str) -> None:
    """Client B (read + write, no admin) neither moves nor sees the victim's account; nothing is written."""
    before = await movements(engine, victim)
    await refused(facade.post("client-b", "steal", transfer(victim, thief_account, 60_000)))
    await refused(facade.post("client-b", "drain", debit(victim, 1_000)))
    await refused(facade.post("client-b", "gift", credit(victim, 1)))
    await refused(
        facade.stub.GetBalance(pb.GetBalanceRequest(account_id=victim), metadata=auth("client-b", READ_WRITE))
    )
    await refused(
        facade.stub.GetAccount(pb.GetAccountRequest(account_id=victim), metadata=auth("client-b", READ_WRITE))
    )
    await refused(
        facade.stub.ListAccountEntries(
            pb.ListAccountEntriesRequest(account_id=victim), metadata=auth("client-b", READ_WRITE)
        )
    )
    listed = await facade.stub.ListAccounts(pb.ListAccountsRequest(), metadata=auth("client-b", READ_WRITE))
    assert victim not in {str(a.account_id) for a in listed.accounts}
    assert await movements(engine, victim) == before, "a refused transaction must post nothing"
    for key in ("steal", "drain", "gift"):  # Refused before anything was queued: not even an intent.
        assert await facade.store.get_transaction(transaction_id("client-b", key)) is None


async def test_two_facades_with_their_own_stores_on_one_engine(engine: EmbeddedEngine, tmp_path: Path) -> None:
    first = await open_facade(engine, tmp_path / "facade-1" / "metadata.sqlite3")
    second = await open_facade(engine, tmp_path / "facade-2" / "metadata.sqlite3")
    try:
        alice = await first.create_account("client-a", "alice")
        await first.post("client-a", "fund", credit(alice, 100_000))
        mallory = await second.create_account("client-b", "mallory")
        assert await second.store.get_account(int(alice)) is None, "façade 2's store does not know A's account"

        await assert_cannot_touch(second, engine, alice, mallory)
        await assert_cannot_touch(first, engine, alice, mallory)
        assert await first.available("client-a", alice) == 100_000
        assert await second.available("client-b", mallory) == 0

        # A uses its account through façade 2: the owner comes from the engine, not from a store.
        assert await second.available("client-a", alice) == 100_000
        account = await second.stub.GetAccount(
            pb.GetAccountRequest(account_id=alice), metadata=auth("client-a", READ_WRITE)
        )
        assert (account.currency, account.type) == ("USD", pb.ACCOUNT_TYPE_NO_OVERDRAFT)
        bob = await second.create_account("client-a", "bob")
        await second.post("client-a", "pay-bob", transfer(alice, bob, 30_000))
        await second.post("client-a", "cash-out", debit(alice, 1_000))
        entries = await second.stub.ListAccountEntries(
            pb.ListAccountEntriesRequest(account_id=alice), metadata=auth("client-a", READ_WRITE)
        )
        assert len(entries.entries) == 3
        assert (await first.available("client-a", alice), await first.available("client-a", bob)) == (69_000, 30_000)

        # A re-creates its account through façade 2: idempotent with the same attributes (now façade 2's
        # store knows it too); with other attributes refused, and nothing enters façade 2's store.
        carol = await first.create_account("client-a", "carol")
        assert await second.create_account("client-a", "carol") == carol
        assert await second.store.get_account(int(carol)) is not None
        dave = await first.create_account("client-a", "dave")
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await second.stub.CreateAccount(
                pb.CreateAccountRequest(
                    currency="USD", external_reference="dave", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
                ),
                metadata=auth("client-a", ADMIN),
            )
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert (info := error_info(reused.value)) is not None and info.reason == "ACCOUNT_REFERENCE_REUSED"
        assert await second.store.get_account(int(dave)) is None

        # ledger.admin may move any account, through any façade.
        await second.post("client-b", "admin-move", transfer(alice, mallory, 9_000), scopes=ADMIN)
        assert (await first.available("client-a", alice), await second.available("client-b", mallory)) == (
            60_000,
            9_000,
        )
    finally:
        await second.close()
        await first.close()


async def test_a_facade_that_lost_its_store_still_refuses_other_clients(engine: EmbeddedEngine, tmp_path: Path) -> None:
    """The service layer over a new, empty store (as if the start-up check had been bypassed): ownership
    is the engine's, so nothing opens up."""
    first = await open_facade(engine, tmp_path / "before" / "metadata.sqlite3")
    try:
        alice = await first.create_account("client-a", "alice")
        mallory = await first.create_account("client-b", "mallory")
        await first.post("client-a", "fund", credit(alice, 100_000))
    finally:
        await first.close()
    lost = await open_facade(engine, tmp_path / "after" / "metadata.sqlite3")
    try:
        assert await lost.store.get_account(int(alice)) is None
        await assert_cannot_touch(lost, engine, alice, mallory)
        assert await lost.available("client-a", alice) == 100_000
        await lost.post("client-a", "again", debit(alice, 500))
        assert await lost.available("client-a", alice) == 99_500
    finally:
        await lost.close()


async def test_an_account_without_an_owner_in_the_engine_is_admin_only(engine: EmbeddedEngine, tmp_path: Path) -> None:
    """Accounts created before owners were carried (user_data_128 = 0): usable by their owner only when
    the local store knows it; otherwise by an admin only. Re-creating one stays idempotent."""
    legacy = account_id("client-a", "legacy")
    [result] = await engine.create_accounts(
        [Account(id=legacy, ledger=USD, code=ACCOUNT_CODE_CUSTOMER, flags=customer_account_flags(True))]
    )
    assert result.status is CreateAccountStatus.CREATED
    unknown = await open_facade(engine, tmp_path / "unknown" / "metadata.sqlite3")
    try:
        mallory = await unknown.create_account("client-b", "mallory")
        await unknown.post("client-b", "admin-fund", credit(str(legacy), 5_000), scopes=ADMIN)
        await refused(unknown.post("client-a", "own-but-unknown", debit(str(legacy), 1)))
        await assert_cannot_touch(unknown, engine, str(legacy), mallory)
    finally:
        await unknown.close()
    known = await open_facade(engine, tmp_path / "known" / "metadata.sqlite3")
    try:
        # Its owner re-creates it through this façade: idempotent (the engine account is immutable, its
        # user_data_128 stays 0), and now the local store knows the owner.
        assert await known.create_account("client-a", "legacy") == str(legacy)
        await known.post("client-a", "own", debit(str(legacy), 1_000))
        await refused(known.post("client-b", "steal", debit(str(legacy), 1)))
        assert await known.available("client-a", str(legacy)) == 4_000
    finally:
        await known.close()
