"""The deployment stack: validated by the real `docker compose config` (no engine needed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from facade.observability import metrics

INFRA = Path(__file__).resolve().parents[2] / "infra"
PINNED = re.compile(r"^[\w./-]+:(?!latest$)[\w.-]*\d[\w.-]*$")
EXPECTED_SERVICES = {
    "tigerbeetle-0", "tigerbeetle-1", "tigerbeetle-2", "kafka-1", "kafka-2", "kafka-3", "clickhouse",
    "ledger-1", "ledger-2", "projector", "prometheus", "grafana", "loki", "promtail", "postgres",
}  # fmt: skip


def compose_config() -> dict[str, object]:
    environment = dict(
        os.environ,
        LEDGER_JWT_SECRET="check-only",
        GRAFANA_ADMIN_PASSWORD="check-only",
        LEDGER_POSTGRES_PASSWORD="check-only",
        GRAFANA_CLICKHOUSE_PASSWORD="check-only",
    )
    process = subprocess.run(
        ["docker", "compose", "-f", str(INFRA / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    config: dict[str, object] = json.loads(process.stdout)
    return config


def test_compose_config_is_valid_and_every_image_is_pinned() -> None:
    config = compose_config()
    services = config["services"]
    assert isinstance(services, dict)
    assert set(services) == EXPECTED_SERVICES
    for name, service in services.items():
        image = service["image"]
        assert PINNED.match(image), f"{name}: image {image!r} is not pinned to a version"


def test_compose_requires_secrets_from_the_environment() -> None:
    process = subprocess.run(
        ["docker", "compose", "-f", str(INFRA / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "LEDGER_JWT_SECRET",
                "GRAFANA_ADMIN_PASSWORD",
                "LEDGER_POSTGRES_PASSWORD",
                "GRAFANA_CLICKHOUSE_PASSWORD",
            )
        },
        check=False,
    )
    assert process.returncode != 0
    secrets = ("LEDGER_JWT_SECRET", "GRAFANA_ADMIN_PASSWORD", "LEDGER_POSTGRES_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD")
    assert any(name in process.stderr for name in secrets)  # Compose names the first it misses.


def test_facades_share_one_postgresql_metadata_store() -> None:
    """Many façades, one truth: the same store and instance name on every façade (facade.metadata)."""
    services = compose_config()["services"]
    assert isinstance(services, dict)
    facades = [services[name]["environment"] for name in ("ledger-1", "ledger-2")]
    assert {env["LEDGER_API__METADATA_BACKEND"] for env in facades} == {"postgres"}
    assert len({env["LEDGER_API__METADATA_DSN"] for env in facades}) == 1
    assert "@postgres:5432/" in facades[0]["LEDGER_API__METADATA_DSN"]
    assert len({env["LEDGER_CONSISTENCY__INSTANCE_NAME"] for env in facades}) == 1
    assert "postgres" in services["ledger-1"]["depends_on"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(INFRA)) for p in INFRA.rglob("*.yml")))
def test_infra_yaml_parses(path: str) -> None:
    assert yaml.safe_load((INFRA / path).read_text()) is not None


def test_grafana_queries_the_read_model_as_a_read_only_clickhouse_user() -> None:
    """The ClickHouse data source plugin is pinned, provisioned against the compose ClickHouse over HTTP as
    the `grafana` user that ClickHouse defines read-only (its password from the environment), and the
    read-model dashboard uses it (its queries run against the SQL endpoint in tests/api/test_grafana_datasource.py)."""
    services = compose_config()["services"]
    assert isinstance(services, dict)
    grafana, clickhouse = services["grafana"], services["clickhouse"]
    assert re.fullmatch(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", grafana["environment"]["GF_INSTALL_PLUGINS"])
    assert (
        grafana["environment"]["GRAFANA_CLICKHOUSE_PASSWORD"]
        == clickhouse["environment"]["GRAFANA_CLICKHOUSE_PASSWORD"]
    )
    provisioned = yaml.safe_load((INFRA / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text())
    [source] = [d for d in provisioned["datasources"] if d["type"] == "grafana-clickhouse-datasource"]
    data = source["jsonData"]
    assert (data["host"], data["port"], data["protocol"], data["username"]) == ("clickhouse", 8123, "http", "grafana")
    assert source["secureJsonData"]["password"] == "$GRAFANA_CLICKHOUSE_PASSWORD"
    mounts = {volume["target"]: volume["source"] for volume in clickhouse["volumes"] if volume["type"] == "bind"}
    users = Path(mounts["/etc/clickhouse-server/users.d/grafana.xml"])
    assert users == INFRA / "clickhouse" / "users.d" / "grafana.xml"
    text = users.read_text()
    assert "<grafana>" in text and 'from_env="GRAFANA_CLICKHOUSE_PASSWORD"' in text and "<readonly>2</readonly>" in text
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "read-model.json").read_text())
    uids = {target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]}
    assert uids == {source["uid"]}


def test_dashboard_queries_only_metrics_the_service_exports() -> None:
    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "ledger.json").read_text())
    exported = {
        next(iter(metric.describe())).name for metric in vars(metrics).values() if isinstance(metric, MetricWrapperBase)
    }
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(ledger_[a-z_]+?)(?:_bucket|_count|_sum|_total)?\b", target["expr"]))
    known = {name for name in used if any(name == e or name.startswith(e) for e in exported)}
    assert used == known, f"dashboard uses unknown metrics: {used - known}"
    assert {"ledger_request_duration_seconds", "ledger_deduplicated_requests"} <= {
        n.removesuffix("_total") for n in used
    }


def test_every_ledger_variable_in_compose_is_a_real_setting() -> None:
    """A misspelt LEDGER_* variable is silently ignored by pydantic-settings: catch it here."""
    from pydantic import BaseModel

    from facade.settings import Settings

    services = compose_config()["services"]
    assert isinstance(services, dict)
    checked = 0
    for name, service in services.items():
        for variable in service.get("environment") or {}:
            if not variable.startswith("LEDGER_"):
                continue
            model: type[BaseModel] = Settings
            *sections, leaf = variable.removeprefix("LEDGER_").lower().split("__")
            for section in sections:
                assert section in model.model_fields, f"{name}: {variable}: no section {section!r}"
                annotation = model.model_fields[section].annotation
                assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
                model = annotation
            assert leaf in model.model_fields, f"{name}: {variable} is not a setting"
            checked += 1
    assert checked > 20


def test_every_facade_edge_ships_behind_mutual_tls() -> None:
    """gRPC, the JSON gateway and the ops port share the TLS files (facade/app.py); compose sets
    them with a client CA (mTLS), mounts the certificates, and its health check and Prometheus present
    the client certificate over https."""
    services = compose_config()["services"]
    assert isinstance(services, dict)
    for name in ("ledger-1", "ledger-2"):
        service = services[name]
        environment = service["environment"]
        assert environment["LEDGER_AUTH__MODE"] == "enforce"
        assert environment["LEDGER_AUTH__TLS_CERT_FILE"] == "/certs/server.crt"
        assert environment["LEDGER_AUTH__TLS_KEY_FILE"] == "/certs/server.key"
        assert environment["LEDGER_AUTH__TLS_CLIENT_CA_FILE"] == "/certs/ca.crt"
        assert any(volume["target"] == "/certs" and volume.get("read_only") for volume in service["volumes"]), name
        check = " ".join(service["healthcheck"]["test"])
        assert "https://localhost:9464/readyz" in check and "load_cert_chain" in check, name
        assert "http://" not in check
    prometheus = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    [job] = [job for job in prometheus["scrape_configs"] if job["job_name"] == "ledger"]
    assert job["scheme"] == "https"
    assert {"ca_file", "cert_file", "key_file"} <= set(job["tls_config"])
    assert any(volume["target"] == "/certs" for volume in services["prometheus"]["volumes"])
