"""The composition root: assembles and runs the service (engine, metadata store, ledger service, read
model, gRPC server and its interceptors, JSON gateway, change capture, Kafka ingestion). The one module
that wires the edges (facade/api, facade/http, facade/kafka) and the read model (projections) together;
the edges do not import each other (import contracts in pyproject.toml).

Start-up order: engine (recovers its journal) → metadata store → start-up consistency (engine, store
and checkpoints agree, or the service refuses to start: facade.consistency) → settlement accounts →
gRPC server → health SERVING; the continuous consistency check then runs in the background and
/readyz fails on any inconsistency it finds. Shutdown reverses it: health NOT_SERVING (load balancers
drain), stop accepting calls with a grace period, finish queued writes, stop change capture, close the
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facade.api.admission import AdmissionInterceptor
from facade.api.asgi import AsgiServer, TlsFiles
from facade.api.edge import EdgeInterceptor
from facade.api.gen.ledger.v1 import history_pb2, history_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from facade.api.history import HistoryServicer
from facade.api.observe import RpcLogSampling
from facade.api.ops import Check, Readiness, build_ops_app, engine_check, engine_liveness, kafka_check, metadata_check
from facade.api.relay import RelayServer
from facade.api.servicer import LedgerServicer
from facade.auth import Authenticator, guard_dev_mode
from facade.changes.feed_cache import ChangeFeed, ChangeFeedCache
from facade.changes.into_read_model import change_capture
from facade.changes.metadata_cache import MetadataCache
from facade.changes.poller import ChangeCapture, MetadataSource
from facade.consistency import ConsistencyMonitor, StartupConsistencyError, verify_startup
from facade.engine import open_engine
from facade.engine.protocol import Engine
from facade.fronts import Fronts, reserve_port
from facade.http.gateway import build_app
from facade.metadata import MetadataStore, metadata_location, open_metadata_store
from facade.observability.logs import configure_logging, get_logger
from facade.observability.tracing import configure_tracing
from facade.runtime import YoungOnlyCollection, freeze_heap, tune_gc, tune_switch_interval
from facade.service import AccountView, LedgerService
from facade.settings import GRPC_SERVERS_MAX, Settings
from projections.account_feed import AccountFeed
from projections.accounts import ACCOUNTS_BATCH_MAX, ProjectedAccount
from projections.read_model import ReadModel
from projections.reconcile import sweeping_drift

if TYPE_CHECKING:
    from facade.kafka.topics import TopicHealth

GRACE_SECONDS = 5.0
MESSAGE_SIZE_MAX = 16 * 1024 * 1024
SERVICE_NAME = "ledger.v1.Ledger"

log = get_logger("ledger.server")


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: LedgerService
    engine: Engine
    store: MetadataStore
    health: health.aio.HealthServicer
    read_model: ReadModel | None = None
    readiness: Readiness | None = None
    ops: AsgiServer | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)
    stop_background: asyncio.Event = field(default_factory=asyncio.Event)
    http: AsgiServer | None = None
    """The JSON gateway (facade.http), when api.http_port >= 0."""
    consistency: ConsistencyMonitor | None = None
    servers_beside: list[grpc.aio.Server] = field(default_factory=list)
    """More gRPC servers on `port` beside `server` (api.grpc_servers)."""
    sql: AsgiServer | None = None
    """The read model's SQL endpoint (facade.api.sql), when api.sql_port >= 0 with the embedded read model."""
    change_feed: ChangeFeedCache | None = None
    """The change feed the service's change captures share (facade.changes.feed_cache)."""
    fronts: Fronts | None = None
    """The front processes serving the gRPC port (api.front_processes > 0; facade.fronts)."""
    port_held: socket.socket | None = None
    """The fronts' port, bound here without listening (facade.fronts.reserve_port)."""

    @property
    def http_port(self) -> int:
        """The JSON gateway's bound port; 0 when it is off."""
        return self.http.port if self.http is not None else 0

    async def stop(self) -> None:
        if self.readiness is not None:
            self.readiness.draining = True
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.fronts is not None:
            await self.fronts.stop()  # They drain first: this process answers their calls meanwhile.
        if self.http is not None:
            await self.http.stop()
        if self.sql is not None:
            await self.sql.stop()
        await asyncio.gather(*(one.stop(GRACE_SECONDS) for one in [self.server, *self.servers_beside]))
        await self.service.close()
        self.stop_background.set()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.read_model is not None:
            await self.read_model.close()
        await self.engine.close()
        await self.store.close()
        if self.ops is not None:
            await self.ops.stop()  # Last: /healthz answers while the instance drains.
        if self.port_held is not None:
            self.port_held.close()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    auth = settings.auth
    if not auth.tls_cert_file or not auth.tls_key_file:
        return None
    chain = [(Path(auth.tls_key_file).read_bytes(), Path(auth.tls_cert_file).read_bytes())]
    if auth.tls_client_ca_file:
        return grpc.ssl_server_credentials(
            chain, root_certificates=Path(auth.tls_client_ca_file).read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(chain)


def _tls_files(settings: Settings) -> TlsFiles | None:
    """The gRPC port's TLS files, for the HTTP edges too: TLS on one edge means TLS on every edge."""
    auth = settings.auth
    if not auth.tls_cert_file or not auth.tls_key_file:
        return None
    return TlsFiles(Path(auth.tls_cert_file), Path(auth.tls_key_file), auth.tls_client_ca_file)


async def start(settings: Settings) -> RunningServer:
    guard_dev_mode(settings.auth, [settings.api.host])  # Before anything is opened or bound.
    _refuse_port_in_use(settings)
    authenticator = Authenticator(settings.auth)  # Refuses a bad secret or key set before the engine opens.
    kafka_unreachable = False
    if settings.kafka.bootstrap_servers and settings.kafka.provision_topics:
        # Before anything serves: a façade whose topics are mis-set must not start. An unreachable
        # cluster does not stop it (writes do not need Kafka): the topics are provisioned once it answers.
        from facade.kafka.topics import KAFKA_START_TIMEOUT_SECONDS, KafkaUnreachableError, ensure_topics

        try:
            created = await asyncio.to_thread(
                ensure_topics, settings.kafka, timeout_seconds=KAFKA_START_TIMEOUT_SECONDS
            )
        except KafkaUnreachableError as error:
            kafka_unreachable = True
            log.warning("kafka unreachable at start; topics provisioned when it answers", error=str(error))
        else:
            if created:
                log.info("kafka topics created", topics=created)
    engine = await open_engine(settings.engine)
    store = await open_metadata_store(settings.api, engine)
    try:
        startup = await verify_startup(
            engine,
            store,
            instance_name=settings.consistency.instance_name,
            store_path=metadata_location(settings.api),
            checkpoint_paths=checkpoint_paths(settings),
            join_unmarked_engine=settings.consistency.join_unmarked_engine,
        )
    except BaseException:
        await store.close()
        await engine.close()
        raise
    service = LedgerService(engine, store, settings.api)
    await service.start()
    front_processes = settings.api.front_processes
    # With fronts this process serves no public gRPC port (facade.fronts says why): one server object,
    # never bound nor started, keeps the servicers the relay runs.
    servers = [grpc.aio.server()] if front_processes else _grpc_servers(settings, service, authenticator)
    server = servers[0]
    ledger_servicer = LedgerServicer(service)
    for one in servers:
        ledger_pb2_grpc.add_LedgerServicer_to_server(ledger_servicer, one)
    read_model = None
    projection: ChangeCapture | None = None
    history: HistoryServicer | None = None
    # The change captures (read model, Kafka, audit) read the same changes: one metadata lookup serves all.
    captured_metadata = MetadataCache(store)
    # And one read of the engine's change feed (facade.changes.feed_cache).
    captured_feed = ChangeFeedCache(engine)
    if settings.clickhouse.serve_history:
        read_model = await ReadModel.open(settings.clickhouse)
        projection = await _capture_into(
            read_model, captured_feed, captured_metadata, settings.clickhouse.projector_checkpoint
        )
        history = HistoryServicer(service, engine, read_model)
        for one in servers:
            history_pb2_grpc.add_HistoryServicer_to_server(history, one)
    health_servicer = health.aio.HealthServicer()
    for one in servers:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, one)
        reflection.enable_server_reflection(
            (
                ledger_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name,
                history_pb2.DESCRIPTOR.services_by_name["History"].full_name,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            one,
        )
    address = f"{settings.api.host}:{settings.api.port}"
    credentials = _credentials(settings)
    port_held: socket.socket | None = None
    if front_processes:
        port_held, port = reserve_port(settings.api.host, settings.api.port)
    else:
        port = _bind(servers, settings, credentials)
        for one in servers:
            await one.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, port, service, engine, store, health_servicer, read_model)
    running.servers_beside = servers[1:]
    running.port_held = port_held
    running.change_feed = captured_feed
    if settings.api.http_port >= 0:
        try:
            running.http = await AsgiServer.start(
                build_app(
                    service,
                    authenticator,
                    history=history.queries if history is not None else None,
                    read_model=read_model,
                ),
                settings.api.host,
                settings.api.http_port,
                "http-gateway",
                tls=_tls_files(settings),
            )
        except BaseException:
            await running.stop()
            raise
    if read_model is not None and settings.api.sql_port >= 0 and settings.clickhouse.backend == "chdb":
        running.sql = await _start_sql(settings, read_model, authenticator)
    if projection is not None:
        running.background.append(asyncio.create_task(projection.run(running.stop_background), name="projector"))
    feed = _account_feed(settings, read_model, service) if read_model is not None else None
    if feed is not None:
        running.background.append(asyncio.create_task(feed.run(running.stop_background), name="account-feed"))
    kafka = settings.kafka
    topic_health: TopicHealth | None = None
    if kafka.bootstrap_servers:
        from facade.kafka.topics import TopicHealth

        topic_health = TopicHealth(kafka)
        if kafka_unreachable:
            from facade.kafka.topics import provision_in_background

            running.background.append(
                asyncio.create_task(
                    provision_in_background(kafka, running.stop_background, topic_health), name="kafka-provision"
                )
            )
    if kafka.bootstrap_servers and kafka.change_capture_enabled:
        from facade.kafka.entries_publisher import KafkaEntryPublisher

        publisher = KafkaEntryPublisher(kafka, health=topic_health)
        capture = ChangeCapture(captured_feed, publisher, kafka.change_capture_checkpoint, metadata=captured_metadata)
        running.background.append(asyncio.create_task(capture.run(running.stop_background), name="change-capture"))
    if kafka.bootstrap_servers and kafka.ingest_enabled:
        from facade.kafka.ingest import CommandIngestor

        ingestor = CommandIngestor(service, kafka, kafka.ingest_client_id)
        running.background.append(asyncio.create_task(ingestor.run(running.stop_background), name="kafka-ingest"))
    from facade.audit.service import start_audit

    audit = await start_audit(settings, engine, captured_metadata, read_model, feed=captured_feed)
    if audit is not None:
        running.background.append(asyncio.create_task(audit.run(running.stop_background), name="audit"))
        if history is not None:
            history.audit.audit = audit.log
    # Ready = can serve writes (engine + metadata store); Kafka and ClickHouse are reported, not required.
    checks: dict[str, Check] = {"engine": engine_check(engine), "metadata": metadata_check(store)}
    dependencies: dict[str, Check] = {}
    if topic_health is not None:
        dependencies["kafka"] = kafka_check(topic_health)
    if read_model is not None:
        dependencies["clickhouse"] = read_model.ping
    if audit is not None and audit.self_audit is not None:
        dependencies["audit"] = audit.self_audit.check
    running.readiness = Readiness(checks, dependencies, {"engine": engine_liveness(engine)})
    observability = settings.observability
    if observability.metrics_port >= 0:
        running.ops = await AsgiServer.start(
            build_ops_app(running.readiness),
            observability.metrics_host,
            observability.metrics_port,
            "ops-http",
            tls=_tls_files(settings),
        )
    running.consistency = ConsistencyMonitor(
        engine,
        store,
        marker=startup.marker,
        checkpoint_paths=checkpoint_paths(settings),
        read_model_position=read_model.projected_until if read_model is not None else None,
        read_model_drift=_read_model_drift(engine, read_model),
        interval_seconds=settings.consistency.check_interval_seconds,
    )
    running.background.append(asyncio.create_task(running.consistency.run(running.stop_background), name="consistency"))
    # Readiness fails on any inconsistency the continuous check finds (engine, store, checkpoints, read model).
    running.readiness.checks["consistency"] = running.consistency.check
    if front_processes:
        running.fronts = Fronts(settings, RelayServer(service, ledger_servicer, history), port)
        await running.fronts.start()
        running.readiness.checks["fronts"] = running.fronts.check  # Not ready until every front serves.
        try:
            await running.fronts.wait_serving()  # Returned, the port serves, as without fronts.
        except BaseException:
            await running.stop()
            raise
    log.info(
        "serving",
        address=address,
        port=port,
        engine=engine.name,
        tls=credentials is not None,
        ops_port=running.ops.port if running.ops else None,
        pid=os.getpid(),
        front_processes=front_processes,
    )
    return running


async def serve(settings: Settings) -> None:
    """`ledger serve`: runs until SIGINT/SIGTERM."""
    tune_gc()
    tune_switch_interval()
    configure_logging(
        settings.observability.log_level, settings.observability.log_json, settings.observability.service_name
    )
    if settings.observability.otlp_endpoint:  # Otherwise the API's no-op tracer: spans cost nothing.
        configure_tracing(settings.observability.service_name, settings.observability.otlp_endpoint)
    try:
        running = await start(settings)
    except StartupConsistencyError as error:
        # A refusal, not a crash: one log line that says what is damaged and what to do, exit status 2.
        log.error("refusing to start", reason=str(error))
        raise SystemExit(2) from error
    freeze_heap()  # The recovered ledger state is long-lived: keep it out of GC scans.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    collection = YoungOnlyCollection(loop)  # Short GC pauses while serving (facade.runtime).
    collection.install()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    waits = [asyncio.ensure_future(stopping.wait())]
    if running.fronts is not None:
        waits.append(asyncio.ensure_future(running.fronts.gave_up.wait()))  # facade.fronts: stop, exit 1.
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    log.info("stopping")
    try:
        await running.stop()
    finally:
        collection.uninstall()
    if running.fronts is not None and running.fronts.gave_up.is_set():
        raise SystemExit(1)


async def _start_sql(settings: Settings, read_model: ReadModel, authenticator: Authenticator) -> AsgiServer | None:
    """The SQL endpoint; a port that cannot be bound is logged, not fatal: the ledger serves without it."""
    from facade.api.sql import build_sql_app

    # Probe first: uvicorn answers a taken port with SystemExit, which asyncio re-raises out of the loop.
    try:
        with socket.socket(socket.AF_INET6 if ":" in settings.api.host else socket.AF_INET) as probe:
            probe.bind((settings.api.host, settings.api.sql_port))
    except OSError as error:
        log.error("sql endpoint not started", port=settings.api.sql_port, error=repr(error))
        return None
    try:
        return await AsgiServer.start(
            build_sql_app(read_model, authenticator, settings.clickhouse.database),
            settings.api.host,
            settings.api.sql_port,
            "sql-http",
            tls=_tls_files(settings),
        )
    except OSError as error:
        log.error("sql endpoint not started", port=settings.api.sql_port, error=repr(error))
        return None


def _grpc_servers(settings: Settings, service: LedgerService, authenticator: Authenticator) -> list[grpc.aio.Server]:
    """`api.grpc_servers` servers with the same interceptors (one admission and one write limit for all):
    grpc.aio accepts one call per server at a time, each a hand-off from its poller thread and a few
    event-loop turns, so N servers on the one port and loop accept N calls where one accepted one."""
    count = settings.api.grpc_servers
    assert 1 <= count <= GRPC_SERVERS_MAX
    rpcs_max = settings.api.grpc_concurrent_rpcs_max
    admission = AdmissionInterceptor(service)
    edge = EdgeInterceptor(authenticator, _rpc_log_sampling(settings))
    return [
        grpc.aio.server(
            interceptors=[
                admission,  # First: a refused write costs no span, token check or decoding.
                edge,  # Observability, auth, request guard.
            ],
            options=[
                ("grpc.max_receive_message_length", MESSAGE_SIZE_MAX),
                ("grpc.max_send_message_length", MESSAGE_SIZE_MAX),
                ("grpc.so_reuseport", 1 if settings.api.grpc_reuse_port or count > 1 else 0),
            ],
            # Per server, not split: one connection is served by one server and must keep the whole bound.
            maximum_concurrent_rpcs=rpcs_max or None,
        )
        for _ in range(count)
    ]


def _refuse_port_in_use(settings: Settings) -> None:
    """Several gRPC servers share the port with SO_REUSEPORT, which would let them join a port another
    process's server already holds: unless sharing with other processes is asked for (api.grpc_reuse_port),
    a port in use is refused before anything is opened, as a single server's bind would refuse it."""
    api = settings.api
    if api.grpc_servers > 1 and api.port != 0 and not api.grpc_reuse_port and _port_in_use(api.host, api.port):
        raise RuntimeError(f"Failed to bind to address {api.host}:{api.port}: in use")


def _bind(servers: list[grpc.aio.Server], settings: Settings, credentials: grpc.ServerCredentials | None) -> int:
    """Binds every server to the gRPC port (the first's when it is 0: a free one); returns it."""
    assert servers
    host, port = settings.api.host, settings.api.port
    bound = 0
    for server in servers:
        address = f"{host}:{bound or port}"
        one = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        assert one == (bound or one), (one, bound)
        bound = one
    assert bound > 0
    return bound


def _port_in_use(host: str, port: int) -> bool:
    """Whether a socket without SO_REUSEPORT fails to bind `host`:`port` (a listener holds it)."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As grpc's listeners: TIME_WAIT is no owner.
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
                raise
    return False


def _rpc_log_sampling(settings: Settings) -> RpcLogSampling:
    observability = settings.observability
    return RpcLogSampling(every=observability.rpc_log_sample_every, slow_seconds=observability.rpc_log_slow_ms / 1000)


def checkpoint_paths(settings: Settings) -> list[Path]:
    """The change-capture checkpoints this service advances (each must point at a change the engine holds)."""
    paths: list[Path] = []
    if settings.kafka.bootstrap_servers and settings.kafka.change_capture_enabled:
        paths.append(settings.kafka.change_capture_checkpoint)
    if settings.clickhouse.serve_history and settings.clickhouse.project_in_service:
        paths.append(settings.clickhouse.projector_checkpoint)
    return paths


async def _capture_into(
    read_model: ReadModel, engine: ChangeFeed, metadata: MetadataSource, checkpoint: Path
) -> ChangeCapture | None:
    """Change capture from the engine into the read model's projector, when this process projects."""
    projector = read_model.projector
    if projector is None:
        return None
    return await read_model.on_client_thread(lambda: change_capture(engine, projector, checkpoint, metadata))


def _read_model_drift(engine: Engine, read_model: ReadModel | None) -> Callable[[], Awaitable[str]] | None:
    """The continuous check's reconciliation of the read model this service projects (None otherwise)."""
    if read_model is None or read_model.projector is None:
        return None
    # One slice of the account ids per call: never a scan of the whole read model (projections.reconcile).
    return sweeping_drift(engine, read_model.query)


def _projected(view: AccountView) -> ProjectedAccount:
    record = view.record
    return ProjectedAccount(
        account_id=record.account_id,
        client_id=record.client_id,
        currency=record.currency,
        account_type=record.type,
        external_reference=record.external_reference,
        owner=record.owner,
        labels=dict(record.metadata),
        created_timestamp=view.account.timestamp,
    )


@dataclass(frozen=True, slots=True)
class _StoreAccounts:
    """The account feed's source: the metadata store's records, with the engine's timestamps (a record
    whose engine account does not exist, a crash between the two writes, is left out until it does)."""

    store: MetadataStore
    engine: Engine

    async def accounts_after(self, after: str) -> tuple[list[ProjectedAccount], str]:
        records = await self.store.accounts_after(after, ACCOUNTS_BATCH_MAX)
        if not records:
            return [], ""
        found = {a.id: a for a in await self.engine.lookup_accounts([r.account_id for r in records])}
        accounts = [_projected(AccountView(r, found[r.account_id])) for r in records if r.account_id in found]
        assert len(accounts) <= len(records) <= ACCOUNTS_BATCH_MAX
        return accounts, str(records[-1].account_id) if len(records) == ACCOUNTS_BATCH_MAX else ""


def _account_feed(settings: Settings, read_model: ReadModel, service: LedgerService) -> AccountFeed | None:
    """The read model's `accounts` feed: when this process projects (chDB: the only writer), and on a
    ClickHouse server also when `ledger project` projects elsewhere, since only the façades see their
    accounts created (with a shared metadata store each façade's catch-up walks every account; inserts are
    idempotent, so façades feeding one server side by side cost a duplicate check, not a duplicate row)."""
    if read_model.projector is None and settings.clickhouse.backend != "server":
        return None
    feed = AccountFeed(read_model, _StoreAccounts(service.store, service.engine))

    def offer(view: AccountView) -> None:
        # The account exists whatever happens here: a failure must not turn its creation into an error.
        try:
            feed.offer(_projected(view))
        except Exception as error:
            log.error("account not handed to the read model; a catch-up follows", error=repr(error))
            feed.request_catch_up()

    service.account_created = offer
    return feed
