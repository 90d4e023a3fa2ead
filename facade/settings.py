"""The service's one settings object. No other module reads environment variables.

Every setting has a safe local default so `ledger serve` runs on a fresh machine with no
configuration. Variables are prefixed `LEDGER_`; nested sections use `__` (for example
`LEDGER_ENGINE__BACKEND=tigerbeetle`). A `.env` file in the working directory is read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BULK_IN_FLIGHT_MAX = 4
"""Bulk requests in progress at once while single writes are fast enough (one being mapped while others
commit keeps the engine busy on 2 cores; bench_api.py's four batch clients are never refused). The default
of `api.bulk_in_flight_max`; facade.write_limit says why bulk is bounded by a count."""
WRITE_BATCH_MS_MAX_DEFAULT = 0
"""Off: scripts/bench_overload.py, same runs against uncapped batches (alternating, 2-core host shared with
other work; README Known limits has the medians), 20 ms gave single writes a lower p50/p99 only while the
host was busy (the service's loop waiting for a CPU 30% of the time or more) and a higher p99 with ~12%
fewer transactions a second while it was quiet. 20 is the value measured; below it batches shrink to their
floor (facade.batcher.BATCH_TRANSFERS_MIN), as a batch's fixed cost alone was 10-20 ms under that load."""
GRPC_SERVERS_DEFAULT = 16
"""scripts/bench_overload.py, 2-core host: accepted gRPC calls ~2x and admitted unary p50 ~10x lower at 16
than at 1 (4 gained half of that; 32 no more than 16)."""
FRONT_PROCESSES_MAX = 16
"""A bound on `api.front_processes`: each is a Python process with its own gRPC servers and memory."""
SERVE_FRONT_PROCESSES_DEFAULT = 2
"""`ledger serve`'s front processes on the embedded engine when api.front_processes is not set (and the host
has at least that many cores): bench_api.py, session 10, two same-run A/Bs on this 2-core host, 2 fronts
against one process: single transactions 1.26-1.48x tx/s (x16 / x64), batches 0.90-1.17x (within the host's
noise), bench_overload's admitted unary p99 about half (session 9). The library's own default (app.start,
what in-process tests and embedders call) stays one process: `settings_served`."""
GRPC_SERVERS_MAX = 64
"""A bound on `api.grpc_servers`: 64 measured no better than 16; each server is a listener and a task."""


class EngineSettings(BaseModel):
    backend: Literal["embedded", "tigerbeetle"] = "embedded"
    data_dir: Path = Field(default=Path("data/engine"), description="Embedded engine: journal directory.")
    mirror_dir: Path | None = Field(
        default=None,
        description="Embedded engine: a second journal copy (ideally another disk), fsynced before every "
        "acknowledgement; damaged records are restored from it at start-up.",
    )
    append_pipeline: bool = Field(
        default=False,
        description="Embedded engine: overlap a batch's header-copy fdatasync with the next batch's record "
        "(facade.engine.journal, 'Append pipeline'). Off: on a disk whose fdatasync takes ~0.15 ms it measured "
        "no faster and cost ~30 µs more CPU per batch; it pays where fdatasync is slow (scripts/bench_engine.py "
        "--in-flight 2 --fdatasync-extra-ms 1 --append-pipeline: 1.5-1.8x batches/s of one transfer).",
    )
    tb_cluster_id: int = Field(default=0, ge=0, description="TigerBeetle backend: cluster id.")
    tb_addresses: str = Field(default="3000", description="TigerBeetle backend: comma-separated replica addresses.")
    tb_limit_request_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        le=1024 * 1024,
        description="TigerBeetle backend: the replicas' --limit-request (32 KiB with --development); larger "
        "work is split into requests this size, and a smaller real limit is learned from the client's refusals.",
    )


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field(
        default="",
        description="Comma-separated brokers; empty disables Kafka (no entry stream, no ingestion).",
    )
    client_id: str = "ledger-service"
    entries_topic: str = "ledger.entries.v1"
    commands_topic: str = "ledger.commands.v1"
    commands_dlq_topic: str = "ledger.commands.dlq.v1"
    results_topic: str = "ledger.results.v1"
    consumer_group: str = "ledger-ingest"
    ingest_client_id: str = Field(
        default="kafka-ingest",
        description="The client a command acts for when it names none (header ledger-client-id); "
        "scopes idempotency keys.",
    )
    ingest_acts_for: list[str] = Field(
        default_factory=list,
        description="Clients a command may act for besides ingest_client_id (its ledger-client-id header); "
        "'*' = any client. Any other client is refused PERMISSION_DENIED and dead-lettered.",
    )
    ingest_scopes: list[str] = Field(
        default_factory=lambda: ["ledger.write"],
        description="Scopes the ingestion principal holds (checked as for a gRPC caller; ledger.admin: any account).",
    )
    ingest_transactional_id: str = Field(
        default="",
        description="transactional.id of the results producer; unique per ingesting façade and stable across "
        "its restarts (a restart then aborts the crashed transaction at once). Empty: <client_id>-ingest-<hostname>.",
    )
    checkpoints_topic: str = "ledger.checkpoints.v1"
    entries_encoding: Literal["protobuf", "json"] = Field(
        default="protobuf",
        description="Value encoding of entries: protobuf, or proto3 JSON (kcat, Connect, ClickHouse).",
    )
    schema_registry_url: str = Field(
        default="",
        description="Confluent-compatible Schema Registry: protobuf values then use Confluent's serializer and "
        "wire format (schemas registered under <topic>-value). Empty: plain protobuf.",
    )
    results_encoding: Literal["protobuf", "json"] = Field(
        default="protobuf", description="Value encoding of ingestion results (commands are read in either, by header)."
    )
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=7)
    topic_min_insync_replicas: int = Field(
        default=1, ge=1, le=7, description="min.insync.replicas of created topics (production: 2 with 3 replicas)."
    )
    entries_retention_ms: int = Field(
        default=-1, ge=-1, description="retention.ms of the entries topic; -1 keeps every entry (system of record)."
    )
    provision_topics: bool = Field(
        default=True,
        description="At start, create missing topics and refuse to start on a partition or replication mismatch.",
    )
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)
    change_capture_enabled: bool = Field(
        default=True, description="Publish confirmed entries to entries_topic (one façade per engine cluster)."
    )
    ingest_enabled: bool = Field(default=True, description="Consume commands_topic (any number of façades).")
    change_capture_checkpoint: Path = Field(
        default=Path("data/change-capture/kafka.json"),
        description="Durable position of the entries publisher in the engine's change feed.",
    )

    @model_validator(mode="after")
    def _insync_within_replication(self) -> KafkaSettings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError("topic_min_insync_replicas cannot exceed topic_replication_factor: no write would succeed")
        return self


class ObservabilitySettings(BaseModel):
    service_name: str = "ledger-service"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per line (Loki-friendly).")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(
        default=9464, ge=-1, le=65535, description="Ops HTTP: /metrics, /healthz, /readyz; 0 = any free port, -1 = off."
    )
    otlp_endpoint: str = Field(default="", description="OTLP/gRPC trace exporter endpoint; empty = off.")
    rpc_log_sample_every: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Per-RPC log line at INFO for 1 call in N that succeeded quickly (1 = every call); failed "
        "and slow calls always get one, the others are logged at DEBUG.",
    )
    rpc_log_slow_ms: int = Field(
        default=100, ge=0, le=3_600_000, description="An RPC at least this slow always gets its INFO log line."
    )


class CurrencySettings(BaseModel):
    ledger: int = Field(ge=1, le=2**32 - 1, description="Engine ledger number (ISO 4217 numeric by default).")
    scale: int = Field(ge=0, le=18, description="Minor-unit digits: 2 for cents, 0 for yen.")


def _default_currencies() -> dict[str, CurrencySettings]:
    return {
        "USD": CurrencySettings(ledger=840, scale=2),
        "EUR": CurrencySettings(ledger=978, scale=2),
        "GBP": CurrencySettings(ledger=826, scale=2),
        "JPY": CurrencySettings(ledger=392, scale=0),
    }


class ApiKeySettings(BaseModel):
    key_id: str = Field(min_length=4, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 hex of the key's secret.")
    client_id: str = Field(min_length=1, max_length=64)
    scopes: list[str]


JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]  # fmt: skip
"""Never "none"."""


class AuthSettings(BaseModel):
    mode: Literal["dev", "enforce"] = Field(
        default="dev",
        description="dev: a built-in signing secret so `ledger dev-token` works out of the box; "
        "enforce: jwt_secret (>= 32 bytes) or a JWK Set (jwks_file / jwks_url) must be set.",
    )
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "ledger-service"
    jwt_audience: str = "ledger"
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(default=None, description="Set to require client certificates (mTLS).")
    # Strict tokens (facade/_token.py). TLS files above apply to every edge: gRPC, the JSON gateway, the ops port.
    jwt_algorithms: list[JwtAlgorithm] = Field(
        default=["HS256", "RS256", "PS256", "ES256", "ES384", "EdDSA"],
        min_length=1,
        description="Accepted JWT algorithms; HS* verify with jwt_secret only, the others with a JWKS key only.",
    )
    jwt_clock_skew_seconds: int = Field(default=30, ge=0, le=300, description="Allowed clock skew for exp/nbf/iat.")
    jwt_lifetime_seconds_max: int = Field(
        default=30 * 24 * 3600, ge=60, le=366 * 24 * 3600, description="Tokens whose exp is further ahead are refused."
    )
    jwks_file: Path | None = Field(default=None, description="JWK Set file for key rotation (reloaded on change).")
    jwks_url: str = Field(default="", description="JWK Set URL for key rotation (PyJWKClient); empty = none.")
    jwks_refresh_seconds_min: float = Field(
        default=10.0, ge=0, le=3600, description="A JWKS URL is re-fetched for an unknown kid at most this often."
    )
    jwks_lifespan_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="The key set is reloaded at least this often (removed keys stop)."
    )

    @model_validator(mode="after")
    def _tls_files_complete(self) -> AuthSettings:
        """Half a TLS configuration would silently serve plaintext: refuse it."""
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("auth.tls_cert_file and auth.tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("auth.tls_client_ca_file (mTLS) needs auth.tls_cert_file and auth.tls_key_file")
        if self.jwks_file is not None and self.jwks_url:
            raise ValueError("set one of auth.jwks_file and auth.jwks_url")
        return self


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    http_port: int = Field(
        default=8080,
        ge=-1,
        le=65535,
        description="The FastAPI JSON gateway (same operations, auth and errors as gRPC; OpenAPI at /docs) on "
        "`host`: -1 = off, 0 = any free port.",
    )
    sql_port: int = Field(
        default=8123,
        ge=-1,
        le=65535,
        description="The read model's SQL endpoint (ClickHouse's HTTP interface, read-only, scope ledger.audit) on "
        "`host`, with the embedded chDB read model only: -1 = off, 0 = any free port.",
    )
    metadata_db: Path = Field(default=Path("data/metadata.sqlite3"), description="Durable metadata/idempotency store.")
    metadata_backend: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="sqlite: a file per façade (metadata_db); postgres: one database shared by every façade "
        "(metadata_dsn), so a retry or a read through any façade sees the others' records.",
    )
    metadata_dsn: SecretStr = Field(
        default=SecretStr(""), description="PostgreSQL metadata store: libpq DSN or URI (postgresql://...)."
    )
    metadata_pool_size: int = Field(default=4, ge=1, le=64, description="PostgreSQL metadata store: connections.")
    grpc_reuse_port: bool = Field(
        default=False,
        description="SO_REUSEPORT on the gRPC port: set by `ledger serve --workers N` for its workers (the kernel "
        "spreads connections over them); off otherwise, so a second server on a busy port fails to bind.",
    )
    grpc_servers: int = Field(
        default=GRPC_SERVERS_DEFAULT,
        ge=1,
        le=GRPC_SERVERS_MAX,
        description="gRPC servers in the one process and event loop, all on the gRPC port (SO_REUSEPORT: the kernel "
        "spreads connections over them). grpc.aio accepts one call at a time per server, a thread hand-off and "
        "event-loop turns each: under overload calls waited there, unseen by admission, for seconds. N servers "
        "accept N calls per turn. One connection is served by one server (no gain for a single connection).",
    )
    front_processes: int = Field(
        default=0,
        ge=0,
        le=FRONT_PROCESSES_MAX,
        description="Embedded engine: front processes serving the gRPC port (SO_REUSEPORT) in front of this one, "
        "which then runs the operations, the engine, the JSON gateway and the ops port but no public gRPC server "
        "(facade.fronts). 0: one process serves everything. Not set: `ledger serve` on the embedded engine runs "
        "SERVE_FRONT_PROCESSES_DEFAULT (2) on a host with that many cores, else 0; app.start runs 0.",
    )
    front_refusals: bool = Field(
        default=False,
        description="With front processes: a front refuses a single write (PostTransaction) itself, with the "
        "engine's own refusal, while the engine's door refuses them (at most 100 ms, or until it has room: "
        "facade.api.relay). Off: in bench_overload it cut the engine's refusal work but admitted ~0.4x the "
        "unary writes (the JSON gateway took the room) for a refused-call p99 only somewhat lower.",
    )
    write_queue_transfers_max: int = Field(default=65_536, ge=1, le=1_000_000)
    batch_transfers_max: int = Field(default=8189, ge=1, le=8189)
    retry_after_ms: int = Field(default=50, ge=1, le=60_000)
    bulk_in_flight_max: int = Field(
        default=BULK_IN_FLIGHT_MAX,
        ge=1,
        le=1024,
        description="Admission: bulk submissions (PostTransactions, the gateway's batch route) in progress at once; "
        "one more is refused at once (RESOURCE_EXHAUSTED / HTTP 429 TOO_MANY_REQUESTS with a retry hint). On a "
        "2-core host 4 keeps the engine busy (one mapped while others commit); raise it for more batch "
        "producers on more cores (facade.write_limit).",
    )
    write_queue_wait_ms_max: int = Field(
        default=1000,
        ge=1,
        le=60_000,
        description="Admission: a write is refused at once (RESOURCE_EXHAUSTED / HTTP 429) when the queue ahead of "
        "it would take longer than this to commit at the recently measured rate (or longer than the caller's "
        "remaining deadline).",
    )
    write_batch_ms_max: int = Field(
        default=WRITE_BATCH_MS_MAX_DEFAULT,
        ge=0,
        le=60_000,
        description="Admission: while single writes come in a stream, a batch holds no more transfers than the "
        "measured commit cost fits in this time (at least 512 transfers; bulk requests are cut into such chunks "
        "between transactions), so a small write admitted behind a large request waits for a short batch; otherwise, "
        "and with 0 (the default: facade.settings.WRITE_BATCH_MS_MAX_DEFAULT says why), batches of up to "
        "batch_transfers_max, each bulk request in one.",
    )
    grpc_concurrent_rpcs_max: int = Field(
        default=256,
        ge=0,
        le=100_000,
        description="Admission: gRPC calls beyond this many in progress are refused at once with RESOURCE_EXHAUSTED "
        "by grpc itself, before any of their bytes are parsed (bounds the event loop's backlog); 0 = no limit. "
        "Per gRPC server (api.grpc_servers; a connection is served by one): writes are bounded process-wide by "
        "the write limit (facade.write_limit).",
    )
    http_concurrent_requests_max: int = Field(
        default=128,
        ge=0,
        le=100_000,
        description="Admission: JSON gateway writes beyond this many in progress are refused at once with 429 "
        "before their bodies are read; 0 = no limit.",
    )
    http_body_bytes_max: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="JSON gateway: larger request bodies are refused with 413 before they are read.",
    )
    currencies: dict[str, CurrencySettings] = Field(default_factory=_default_currencies)
    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="asyncio",
        description="`ledger serve`'s own event loop (the one process, or the engine's behind front processes, "
        "which always run uvloop). uvloop measured mixed for the whole service on a busy 2-core host (bench_api "
        "unary rows: 6-28% less CPU per transaction in 2 alternating runs, -15% to +18% in 2 same-run A/Bs) and "
        "its timers tick in whole milliseconds: off until measured further.",
    )

    @model_validator(mode="after")
    def _metadata_dsn_for_postgres(self) -> ApiSettings:
        if self.metadata_backend == "postgres" and not self.metadata_dsn.get_secret_value():
            raise ValueError("api.metadata_backend=postgres needs api.metadata_dsn (LEDGER_API__METADATA_DSN)")
        return self


class ClickHouseSettings(BaseModel):
    """The ClickHouse read model (projections/): chDB in-process by default, or a ClickHouse server."""

    backend: Literal["chdb", "server"] = "chdb"
    chdb_path: Path = Field(default=Path("data/clickhouse"), description="chDB backend: persisted database directory.")
    host: str = "127.0.0.1"
    port: int = Field(default=8123, ge=1, le=65535, description="Server backend: HTTP port.")
    user: str = "default"
    password: SecretStr = SecretStr("")
    database: str = Field(default="ledger", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    projector_checkpoint: Path = Field(
        default=Path("data/change-capture/projector.json"),
        description="Durable position of the projector in the engine's change feed (no-Kafka mode).",
    )
    consumer_group: str = Field(default="ledger-projector", description="Kafka mode: consumer group.")
    serve_history: bool = Field(
        default=True, description="`ledger serve` opens the read model and serves ledger.v1.History (and readiness)."
    )
    project_in_service: bool = Field(
        default=True,
        description="`ledger serve` also runs the projector from the engine's change feed. Required with chDB "
        "(one process per directory); false on façades that query a ClickHouse server fed by `ledger project`.",
    )
    projector_process: bool = Field(
        default=True,
        description="chDB backend: chDB, the projector and the History queries run in a child process `ledger serve` "
        "supervises, so projection never competes with writes for the interpreter; false = in the service's process.",
    )


class ConsistencySettings(BaseModel):
    """Start-up and continuous consistency between the engine, the metadata store and the change-capture
    checkpoints (facade.consistency)."""

    instance_name: str = Field(
        default="default",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="This façade's name on its engine cluster: each façade with its own metadata store needs a "
        "distinct one (the store and the engine both carry a marker under it).",
    )
    check_interval_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="Pause between rounds of the continuous consistency check."
    )
    join_unmarked_engine: bool = Field(
        default=False,
        description="TigerBeetle backend only: start with a new, empty metadata store although the cluster holds "
        "data and no façade's marker (data that predates instance markers). For a façade joining such a shared "
        "cluster; never to get past a lost store (its idempotency records and metadata would be gone).",
    )


class AuditSettings(BaseModel):
    """Signed checkpoints over a Merkle tree of every change (facade.audit, docs/audit.md)."""

    data_dir: Path | None = Field(
        default=None,
        description="Merkle tree levels, signing keys (0600) and the checkpoint log; default: `audit` next to the "
        "engine's data dir (data/audit).",
    )
    enabled: bool = Field(default=True, description="`ledger serve` feeds the tree and seals checkpoints.")
    origin: str = Field(
        default="ledger-service/audit",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._/:-]+$",
        description="First line of every checkpoint, and the signing key's name.",
    )
    signing_key_file: Path | None = Field(
        default=None, description="An Ed25519 private key (PKCS#8 PEM) to sign with instead of the generated ones."
    )
    checkpoint_entries: int = Field(default=10_000, ge=1, le=10_000_000, description="Seal after this many changes.")
    checkpoint_interval_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="Seal at least this often while changes arrive."
    )
    self_audit_interval_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="Pause between rounds of the background self-audit."
    )


class ClientSettings(BaseModel):
    """How the read-model CLI commands (`ledger balance|statement|...`) reach the running service."""

    token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token for the service (LEDGER_CLIENT__TOKEN). Neither this nor api_key: in auth.mode=dev "
        "the CLI mints a short-lived development token itself (as `ledger dev-token`).",
    )
    api_key: SecretStr = Field(
        default=SecretStr(""), description="An API key (`<key_id>.<secret>`) instead of a token."
    )
    gateway_url: str = Field(
        default="", description="The JSON gateway's base URL; empty = http(s)://<api.host>:<api.http_port>."
    )
    sql_url: str = Field(
        default="", description="The SQL endpoint's base URL (audit export/verify); empty = from api.sql_port."
    )
    ca_file: Path | None = Field(default=None, description="CA certificate to trust when the service has TLS.")
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="Per request to the service.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    engine: EngineSettings = EngineSettings()
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    kafka: KafkaSettings = KafkaSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    consistency: ConsistencySettings = ConsistencySettings()
    audit: AuditSettings = AuditSettings()
    client: ClientSettings = ClientSettings()


def settings_served(settings: Settings, *, cpu_count: int | None) -> Settings:
    """`settings` as `ledger serve` runs them (one process, not --workers): api.front_processes, when not set,
    is SERVE_FRONT_PROCESSES_DEFAULT on the embedded engine and a host with that many cores (`cpu_count`,
    os.cpu_count()), else as set (0: one process). Why only there: see SERVE_FRONT_PROCESSES_DEFAULT."""
    if "front_processes" in settings.api.model_fields_set or settings.engine.backend != "embedded":
        return settings
    if cpu_count is None or cpu_count < SERVE_FRONT_PROCESSES_DEFAULT:
        return settings
    api = settings.api.model_copy(update={"front_processes": SERVE_FRONT_PROCESSES_DEFAULT})
    served = settings.model_copy(update={"api": api})
    assert served.api.front_processes == SERVE_FRONT_PROCESSES_DEFAULT <= FRONT_PROCESSES_MAX
    return served
