"""One front process (facade.fronts): `python -m facade.front_process SOCKET INDEX`, spawned by the
engine's process. Its first frame asks that process for the service's settings (with the port it holds),
on a connection of its own over the private relay socket: no secret is on disk or on a command line.

It connects to the engine's process, starts `api.grpc_servers` gRPC servers on the port (SO_REUSEPORT,
TLS/mTLS from the same settings) with the same edge as the single-process service (facade.api.edge) over
forwarding handlers (facade.api.forward), health and reflection, then says HELLO. A lost connection is
retried every RECONNECT_INTERVAL_SECONDS (calls meanwhile answer UNAVAILABLE ENGINE_UNREACHABLE at once);
when the engine's process is gone (this process's parent changed) the front exits. SIGTERM: health
NOT_SERVING, then the servers stop with their grace period, then its spans are flushed (tracing is
configured from the same settings as the engine's process: observability.otlp_endpoint).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facade.api._frames import FrameError, FrameKind, FrameReader, encode_index
from facade.api.edge import EdgeInterceptor
from facade.api.forward import EngineLink, forwarding_handlers
from facade.api.gen.ledger.v1 import history_pb2, ledger_pb2
from facade.app import GRACE_SECONDS, MESSAGE_SIZE_MAX, SERVICE_NAME, _bind, _credentials, _rpc_log_sampling
from facade.auth import Authenticator
from facade.observability import forwarded, metrics
from facade.observability.logs import configure_logging, get_logger
from facade.observability.tracing import configure_tracing
from facade.runtime import tune_gc
from facade.settings import Settings

__all__ = ["run_front"]

CONNECT_WAIT_SECONDS = 30.0
"""How long a starting front tries to reach the engine's process before it gives up (exit status 1)."""
RECONNECT_INTERVAL_SECONDS = 0.2
SETTINGS_READS_MAX = 4096
"""Reads for the SETTINGS answer (64 KiB each: settings are a few KiB; the frame bound caps it anyway)."""

log = get_logger("ledger.front")


async def _connect(link: EngineLink, path: str, wait_seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        try:
            await link.connect(path)
        except OSError:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(RECONNECT_INTERVAL_SECONDS)
        else:
            return True


class _MetricsReporter:
    """Every FRONT_METRICS_INTERVAL_SECONDS, what this front's request histogram gained since its last
    report goes to the engine's process's /metrics (facade.observability.forwarded says why deltas). While
    the link is down the gain accumulates and goes with the first report after it is back."""

    def __init__(self, link: EngineLink, index: int) -> None:
        self._link = link
        self._index = index
        self._reported = forwarded.snapshot(metrics.request_duration_seconds)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(forwarded.FRONT_METRICS_INTERVAL_SECONDS)
            self.report()

    def report(self) -> None:
        if not self._link.connected:
            return
        now = forwarded.snapshot(metrics.request_duration_seconds)
        gained = forwarded.delta(self._reported, now)
        if gained:
            self._link.send(encode_index(FrameKind.METRICS, self._index, forwarded.encode_delta(gained)))
        self._reported = now


def _servers(settings: Settings, edge: EdgeInterceptor) -> list[grpc.aio.Server]:
    rpcs_max = settings.api.grpc_concurrent_rpcs_max
    return [
        grpc.aio.server(
            interceptors=[edge],  # Admission is the engine's process's, on the raw frame (facade.api.relay).
            options=[
                ("grpc.max_receive_message_length", MESSAGE_SIZE_MAX),
                ("grpc.max_send_message_length", MESSAGE_SIZE_MAX),
                ("grpc.so_reuseport", 1),
            ],
            maximum_concurrent_rpcs=rpcs_max or None,
        )
        for _ in range(settings.api.grpc_servers)
    ]


async def run_front(settings: Settings, path: str, index: int) -> int:
    """Serves until SIGTERM/SIGINT (0) or until the engine's process is gone (1)."""
    assert settings.api.front_processes == 0  # A front spawns nothing.
    assert settings.api.port > 0
    parent = os.getppid()
    link = EngineLink(index)
    if not await _connect(link, path, CONNECT_WAIT_SECONDS):
        log.error("front cannot reach the engine's process", front=index, socket=path)
        return 1
    edge = EdgeInterceptor(Authenticator(settings.auth), _rpc_log_sampling(settings))
    servers = _servers(settings, edge)
    handlers = forwarding_handlers(link, history=settings.clickhouse.serve_history)
    health_servicer = health.aio.HealthServicer()
    names = [ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if settings.clickhouse.serve_history:
        names.append(history_pb2.DESCRIPTOR.services_by_name["History"].full_name)
    for server in servers:
        server.add_generic_rpc_handlers(handlers)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(names, server)
    _bind(servers, settings, _credentials(settings))
    for server in servers:
        await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    link.send(encode_index(FrameKind.HELLO, index))
    reporter = _MetricsReporter(link, index)
    reporting = asyncio.create_task(reporter.run(), name="front-metrics")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    status = 0
    while not stopping.is_set():
        lost = asyncio.ensure_future(link.lost.wait())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([lost, stop], return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        stop.cancel()
        if stopping.is_set():
            break
        log.warning("front lost the engine's process; reconnecting", front=index)
        while not stopping.is_set() and not link.connected:
            if os.getppid() != parent:  # The engine's process is gone: nothing to serve for.
                stopping.set()
                status = 1
                break
            await _connect(link, path, RECONNECT_INTERVAL_SECONDS)
        if link.connected:
            link.send(encode_index(FrameKind.HELLO, index))
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.gather(*(server.stop(GRACE_SECONDS) for server in servers))
    reporting.cancel()
    reporter.report()  # The calls of the last interval and of the drain.
    await asyncio.sleep(0)  # The frame goes out in this turn's flush.
    return status


async def fetch_settings(path: str, index: int, wait_seconds: float) -> Settings | None:
    """The engine's process's settings (facade.fronts), not this environment's: a caller of
    facade.app.start may have built them in code. None: unreachable, or it did not answer with them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            break
        except OSError:
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(RECONNECT_INTERVAL_SECONDS)
    try:
        writer.write(encode_index(FrameKind.SETTINGS, index))
        frames = FrameReader()
        for _ in range(SETTINGS_READS_MAX):
            data = await reader.read(65_536)
            if not data:
                return None
            decoded = frames.feed(data)
            if decoded:
                [answer] = decoded
                if not isinstance(answer, tuple) or answer[0] != FrameKind.SETTINGS:
                    return None
                return Settings.model_validate_json(answer[2])
        return None
    except (OSError, FrameError, ValueError):
        return None
    finally:
        writer.close()


def main() -> None:
    path, index = sys.argv[1], int(sys.argv[2])
    settings = asyncio.run(fetch_settings(path, index, CONNECT_WAIT_SECONDS))
    if settings is None:
        print(f"front {index}: no settings from the engine's process at {path}", file=sys.stderr)
        raise SystemExit(1)
    observability = settings.observability
    configure_logging(observability.log_level, observability.log_json, observability.service_name)
    # As the engine's process (facade.app.serve): this front's RPC spans are exported, and their context
    # goes with each forwarded call (facade.api.forward) so the engine's spans join the caller's trace.
    provider = None
    if observability.otlp_endpoint:
        provider = configure_tracing(observability.service_name, observability.otlp_endpoint)
    tune_gc()
    # uvloop: a front's CPU is mostly grpc.aio's own per-call machinery, and grpc.aio wakes the event loop
    # once per completion (a socket read and a callback each; ~4 per unary call): the loop's own turns are a
    # large share of it. Same-run A/B, 2 fronts, x64 PostTransaction: ~15-20% less front CPU per call
    # (scripts/bench_fronts.py). The engine's process keeps asyncio's loop.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status = runner.run(run_front(settings, path, index))
    if provider is not None:
        provider.shutdown()  # The spans of the last calls and of the drain are exported before exit.
    raise SystemExit(status)


if __name__ == "__main__":
    main()
