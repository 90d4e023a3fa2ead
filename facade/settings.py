"""The service's one settings object. No other module reads environment variables.

Every setting has a safe local default so `ledger serve` runs on a fresh machine with no
configuration. Variables are prefixed `LEDGER_`; nested sections use `__` (for example
`LEDGER_ENGINE__BACKEND=tigerbeetle`). A `.env` file in the working directory is read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseModel):
    backend: Literal["embedded", "tigerbeetle"] = "embedded"
    data_dir: Path = Field(default=Path("data/engine"), description="Embedded engine: journal directory.")
    tb_cluster_id: int = Field(default=0, ge=0, description="TigerBeetle backend: cluster id.")
    tb_addresses: str = Field(
        default="3000", description="TigerBeetle backend: comma-separated replica addresses."
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
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=7)
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)
    change_capture_checkpoint: Path = Field(
        default=Path("data/change-capture/kafka.json"),
        description="Durable position of the entries publisher in the engine's change feed.",
    )


class ObservabilitySettings(BaseModel):
    service_name: str = "ledger-service"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per line (Loki-friendly).")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="Prometheus /metrics; 0 disables.")
    otlp_endpoint: str = Field(default="", description="OTLP/gRPC trace exporter endpoint; empty = off.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    engine: EngineSettings = EngineSettings()
    kafka: KafkaSettings = KafkaSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
