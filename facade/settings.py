"""The service's one settings object. No other module reads environment variables.

Every setting has a safe local default so `ledger serve` runs on a fresh machine with no
configuration. Variables are prefixed `LEDGER_`; nested sections use `__` (for example
`LEDGER_ENGINE__BACKEND=tigerbeetle`). A `.env` file in the working directory is read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseModel):
    backend: Literal["embedded", "tigerbeetle"] = "embedded"
    data_dir: Path = Field(default=Path("data/engine"), description="Embedded engine: journal directory.")
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
        default="kafka-ingest", description="The client commands from Kafka are posted as (scopes idempotency keys)."
    )
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=7)
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)
    change_capture_enabled: bool = Field(
        default=True, description="Publish confirmed entries to entries_topic (one façade per engine cluster)."
    )
    ingest_enabled: bool = Field(default=True, description="Consume commands_topic (any number of façades).")
    change_capture_checkpoint: Path = Field(
        default=Path("data/change-capture/kafka.json"),
        description="Durable position of the entries publisher in the engine's change feed.",
    )


class ObservabilitySettings(BaseModel):
    service_name: str = "ledger-service"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per line (Loki-friendly).")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(
        default=9464, ge=-1, le=65535, description="Ops HTTP: /metrics, /healthz, /readyz; 0 = any free port, -1 = off."
    )
    otlp_endpoint: str = Field(default="", description="OTLP/gRPC trace exporter endpoint; empty = off.")


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


class AuthSettings(BaseModel):
    mode: Literal["dev", "enforce"] = Field(
        default="dev",
        description="dev: a built-in signing secret so `ledger dev-token` works out of the box; "
        "enforce: jwt_secret must be set.",
    )
    jwt_secret: SecretStr = SecretStr("")
    jwt_issuer: str = "ledger-service"
    jwt_audience: str = "ledger"
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = Field(default=None, description="Set to require client certificates (mTLS).")


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
    metadata_db: Path = Field(default=Path("data/metadata.sqlite3"), description="Durable metadata/idempotency store.")
    write_queue_transfers_max: int = Field(default=65_536, ge=1, le=1_000_000)
    batch_transfers_max: int = Field(default=8189, ge=1, le=8189)
    retry_after_ms: int = Field(default=50, ge=1, le=60_000)
    currencies: dict[str, CurrencySettings] = Field(default_factory=_default_currencies)


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    engine: EngineSettings = EngineSettings()
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    kafka: KafkaSettings = KafkaSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
