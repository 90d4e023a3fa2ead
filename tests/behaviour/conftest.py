"""One real server for the whole behaviour suite (embedded engine, metadata store and chDB read model in a
temp dir; gRPC and the JSON gateway on loopback ports), and each test run twice: once through the gRPC
client, once through the HTTP client (tests.behaviour._clients).

Tests share the server, so each one acts as its own client id (a fresh tenant): account references and
idempotency keys are per client, so the gRPC run and the HTTP run of a test never see each other's data,
and a transaction id (derived from client and key) is never shared either. The server's event loop is the
package's: every test module here marks itself `pytest.mark.asyncio(loop_scope="package")`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.app import RunningServer, start
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import Settings
from tests.api.conftest import make_settings
from tests.behaviour._clients import (
    Caller,
    Edge,
    GrpcClient,
    HttpClient,
    JsonObject,
    LedgerClient,
    Refused,
    Rpc,
)

HTTP_TIMEOUT_SECONDS = 30.0
PROJECTION_WAIT_SECONDS = 30.0
PROJECTION_POLL_SECONDS = 0.05
AUDIT_CHECKPOINT_ENTRIES = 2
_tenants = itertools.count(1)


@dataclass
class Server:
    settings: Settings
    running: RunningServer
    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    clients: dict[Edge, LedgerClient]

    def caller(self, client_id: str, scopes: frozenset[str] = SCOPES_ALL) -> Caller:
        return Caller(f"Bearer {issue_token(self.settings.auth, client_id, scopes)}")


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    directory: Path = tmp_path_factory.mktemp("behaviour")
    settings = make_settings(directory, history=True, http_port=0)
    # A checkpoint sealed every few changes, so the audit proofs have something to prove within a test.
    audit = settings.audit.model_copy(update={"checkpoint_entries": AUDIT_CHECKPOINT_ENTRIES})
    settings = settings.model_copy(update={"audit": audit})
    running = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.http_port}", timeout=HTTP_TIMEOUT_SECONDS)
    clients: dict[Edge, LedgerClient] = {Edge.GRPC: GrpcClient(channel), Edge.HTTP: HttpClient(http)}
    try:
        yield Server(settings, running, channel, http, clients)
    finally:
        await http.aclose()
        await channel.close()
        await running.stop()


@dataclass
class Tenant:
    """A fresh client id on the shared server, calling through one edge's client."""

    server: Server
    client: LedgerClient
    client_id: str

    @property
    def edge(self) -> Edge:
        return self.client.edge

    def caller(self, scopes: frozenset[str] = SCOPES_ALL, *, client_id: str | None = None) -> Caller:
        return self.server.caller(client_id or self.client_id, scopes)

    async def call(self, rpc: Rpc, request: Message, caller: Caller | None = None) -> JsonObject:
        return await self.client.call(rpc, request, caller=caller or self.caller())

    async def refused(self, rpc: Rpc, request: Message, caller: Caller | None = None) -> Refused:
        """The refusal of a call that must be refused (a success fails the test with its answer)."""
        try:
            answer = await self.call(rpc, request, caller)
        except Refused as refusal:
            return refusal
        raise AssertionError(f"{rpc.name} over {self.edge.value} was not refused: {answer}")

    async def account(self, reference: str, *, currency: str = "USD", overdraft: bool = False) -> str:
        kind = pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED if overdraft else pb.ACCOUNT_TYPE_NO_OVERDRAFT
        request = pb.CreateAccountRequest(currency=currency, external_reference=reference, owner=reference, type=kind)
        return str((await self.call(Rpc.CREATE_ACCOUNT, request))["account_id"])

    async def post(self, key: str, *legs: pb.Leg, **fields: object) -> JsonObject:
        request = pb.PostTransactionRequest(idempotency_key=key, legs=list(legs), **fields)  # type: ignore[arg-type]
        return await self.call(Rpc.POST_TRANSACTION, request)

    async def balance(self, account_id: str) -> JsonObject:
        return await self.call(Rpc.GET_BALANCE, pb.GetBalanceRequest(account_id=account_id))

    async def available(self, account_id: str) -> int:
        return int((await self.balance(account_id))["available"])

    async def caught_up(self, committed_at_ns: str) -> None:
        """Waits until the read model holds the change committed at `committed_at_ns` (asked on this edge)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROJECTION_WAIT_SECONDS
        while True:
            totals = await self.call(Rpc.GET_DAILY_TOTALS, hpb.GetDailyTotalsRequest())
            if int(totals["projected_until"]) >= int(committed_at_ns):
                return
            assert loop.time() < deadline, "the projector did not catch up"
            await asyncio.sleep(PROJECTION_POLL_SECONDS)


@pytest.fixture(params=[Edge.GRPC, Edge.HTTP], ids=lambda edge: edge.value)
def tenant(request: pytest.FixtureRequest, server: Server) -> Tenant:
    edge = request.param
    assert isinstance(edge, Edge)
    return Tenant(server, server.clients[edge], f"{edge.value}-tenant-{next(_tenants)}")


def credit(account_id: str, amount: int, currency: str = "USD") -> pb.Leg:
    return pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=account_id, amount=str(amount), currency=currency)


def debit(account_id: str, amount: int, currency: str = "USD") -> pb.Leg:
    return pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id=account_id, amount=str(amount), currency=currency)


def transfer(source: str, destination: str, amount: int, currency: str = "USD") -> pb.Leg:
    return pb.Leg(
        type=pb.LEG_TYPE_TRANSFER,
        from_account_id=source,
        to_account_id=destination,
        amount=str(amount),
        currency=currency,
    )
