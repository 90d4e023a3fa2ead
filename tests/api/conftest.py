"""A real server on a loopback port (embedded engine in a temp dir) and real gRPC clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import RunningServer, start
from facade.auth import SCOPES_ALL, hash_secret, issue_token
from facade.settings import (
    ApiKeySettings,
    ApiSettings,
    AuthSettings,
    ClickHouseSettings,
    EngineSettings,
    ObservabilitySettings,
    Settings,
)

API_KEY_SECRET = "s3cret-key-material"


def make_settings(directory: Path, history: bool = False, **api: Any) -> Settings:
    """A loopback server's settings; the read model (chDB + in-service projector) only when `history`,
    the JSON gateway only when `http_port` is given."""
    api.setdefault("http_port", -1)
    api.setdefault("sql_port", -1)
    return Settings(
        engine=EngineSettings(data_dir=directory / "engine"),
        api=ApiSettings(port=0, metadata_db=directory / "metadata.sqlite3", **api),
        auth=AuthSettings(
            mode="dev",
            api_keys=[
                ApiKeySettings(
                    key_id="reader-1",
                    secret_sha256=hash_secret(API_KEY_SECRET),
                    client_id="client-a",
                    scopes=["ledger.read"],
                )
            ],
        ),
        observability=ObservabilitySettings(metrics_port=0),  # The ops endpoints on a free port.
        clickhouse=ClickHouseSettings(
            serve_history=history,
            chdb_path=directory / "clickhouse",
            projector_checkpoint=directory / "projector.json",
        ),
    )


@dataclass
class Api:
    settings: Settings
    server: RunningServer
    channel: grpc.aio.Channel
    # The generated stub's types describe synchronous channels; over grpc.aio every call is awaitable.
    stub: Any

    def auth(self, client_id: str = "client-a", scopes: frozenset[str] = SCOPES_ALL) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {issue_token(self.settings.auth, client_id, scopes)}"),)

    async def restart(self) -> None:
        await self.channel.close()
        await self.server.stop()
        self.server = await start(self.settings)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = rpc.LedgerStub(self.channel)

    async def account(
        self, reference: str, currency: str = "USD", no_overdraft: bool = True, client: str = "client-a"
    ) -> str:
        kind = pb.ACCOUNT_TYPE_NO_OVERDRAFT if no_overdraft else pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
        account = await self.stub.CreateAccount(
            pb.CreateAccountRequest(currency=currency, external_reference=reference, owner=reference, type=kind),
            metadata=self.auth(client),
        )
        return str(account.account_id)

    async def post(self, key: str, *legs: pb.Leg, client: str = "client-a", **fields: Any) -> pb.Transaction:
        response: pb.Transaction = await self.stub.PostTransaction(
            pb.PostTransactionRequest(idempotency_key=key, legs=list(legs), **fields),
            metadata=self.auth(client),
        )
        return response

    async def available(self, account_id: str) -> int:
        balance = await self.stub.GetBalance(pb.GetBalanceRequest(account_id=account_id), metadata=self.auth())
        return int(balance.available)


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


async def open_api(directory: Path, history: bool = False, **api: Any) -> Api:
    settings = make_settings(directory, history, **api)
    server = await start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Api(settings, server, channel, rpc.LedgerStub(channel))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    instance = await open_api(tmp_path)
    try:
        yield instance
    finally:
        await instance.channel.close()
        await instance.server.stop()
