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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEDGER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    engine: EngineSettings = EngineSettings()
