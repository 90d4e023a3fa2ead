"""`api.grpc_servers`: several grpc.aio servers in the one process and event loop share the gRPC port
(SO_REUSEPORT), each accepting calls on its own connections with the same servicers and interceptors;
a port a listener without SO_REUSEPORT holds is refused, as a single server's bind would be."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.app import start
from facade.settings import GRPC_SERVERS_DEFAULT, ApiSettings
from tests.api.conftest import Api, credit, make_settings, open_api

SERVERS = 3


async def test_every_grpc_server_serves_the_one_port_with_the_same_interceptors(tmp_path: Path) -> None:
    """Stopping the servers one by one, a fresh connection is served by one still listening: each of them
    holds the port, runs the servicer (the credit lands) and the edge's interceptors (a call without a
    token is refused)."""
    api = await open_api(tmp_path, grpc_servers=SERVERS)
    try:
        running = api.server
        assert len(running.servers_beside) == SERVERS - 1
        alice = await api.account("alice")
        await api.channel.close()
        for index, stopped in enumerate([running.server, *running.servers_beside[:-1]]):
            await stopped.stop(0)
            # A connection of its own (not the process-wide subchannel pool's): it reaches a live listener.
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{running.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                stub = rpc.LedgerStub(channel)
                request = pb.PostTransactionRequest(idempotency_key=f"after-{index}", legs=[credit(alice, 1)])
                await stub.PostTransaction(request, metadata=api.auth())
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.PostTransaction(request)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{running.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            api.channel, api.stub = channel, rpc.LedgerStub(channel)
            assert await api.available(alice) == SERVERS - 1
    finally:
        await api.server.stop()


async def test_several_grpc_servers_refuse_a_port_in_use(tmp_path: Path) -> None:
    """SO_REUSEPORT would let the servers join a port already held by another process's listener that set it
    too: the port is checked before anything is opened, so a busy port fails to bind whatever the count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # As another instance's servers.
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        settings = make_settings(tmp_path, grpc_servers=SERVERS)
        settings.api = settings.api.model_copy(update={"port": port})
        with pytest.raises(RuntimeError, match="bind"):
            await start(settings)


def test_the_default_is_several_grpc_servers() -> None:
    assert ApiSettings().grpc_servers == GRPC_SERVERS_DEFAULT > 1


async def test_one_grpc_server_when_asked(tmp_path: Path) -> None:
    api: Api = await open_api(tmp_path, grpc_servers=1)
    try:
        assert api.server.servers_beside == []
        assert await api.account("alice")
    finally:
        await api.channel.close()
        await api.server.stop()
