"""The ops endpoints, for Prometheus, load balancers and the service registry (unauthenticated: serve
them on an internal interface):

    GET /metrics   Prometheus exposition (every metric in facade/observability/metrics.py)
    GET /healthz   liveness: the process and its event loop answer, and nothing that only a restart
                   can cure has happened (the engine's `write_failure`: writes dead for good). 503 with
                   the reasons otherwise; restart the instance.
    GET /readyz    readiness = "can serve writes": every required check answers within its timeout —
                   the engine and the metadata store (and whatever else joins `checks`, e.g. a
                   consistency check) — and the service is not draining. 503 with the failing checks
                   otherwise; take the instance out of rotation.

Dependencies the write path does not need (Kafka: the change feed waits in the engine; ClickHouse: the
read model catches up) are probed with the same timeouts and reported under "dependencies" in the
/readyz body and as `ledger_dependency_up{dependency=...}`, but do not make /readyz 503: during a Kafka
outage writes still work, and pulling every façade out of rotation would turn it into a full outage.

Readiness runs the probes concurrently, each bounded by `CHECK_TIMEOUT_SECONDS`, so a hung dependency
answers quickly instead of hanging the load balancer's probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from facade.engine.protocol import Engine
from facade.metadata import MetadataStore
from facade.observability import metrics

if TYPE_CHECKING:
    from facade.kafka.topics import TopicHealth

CHECK_TIMEOUT_SECONDS = 2.0

Check = Callable[[], Awaitable[None]]
"""Returns when the dependency answers; raises (anything) when it does not."""
LiveCheck = Callable[[], str | None]
"""Why the process must be restarted, or None. Synchronous and local: liveness never waits on a dependency
(a slow dependency must not get healthy instances restarted)."""


class Readiness:
    """The ops probes' checks. Other components join by adding to the dicts: `checks` (required for
    /readyz), `dependencies` (reported only), `liveness` (/healthz)."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        dependencies: Mapping[str, Check] | None = None,
        liveness: Mapping[str, LiveCheck] | None = None,
    ) -> None:
        self.checks = dict(checks)
        self.dependencies = dict(dependencies or {})
        self.liveness = dict(liveness or {})
        self.draining = False
        """Set at shutdown: readiness fails first, so load balancers stop routing before calls are refused."""

    async def _run(self, check: Check) -> dict[str, object]:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {CHECK_TIMEOUT_SECONDS} s"}
        except Exception as error:  # Any failure of a dependency is "not ready", with its reason.
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def report(self) -> tuple[bool, dict[str, object]]:
        probes = {**self.dependencies, **self.checks}
        names = list(probes)
        results = dict(zip(names, await asyncio.gather(*(self._run(probes[name]) for name in names)), strict=True))
        for name, result in results.items():
            metrics.dependency_up.labels(name).set(1 if result["ok"] else 0)
        checks = {name: results[name] for name in self.checks}
        dependencies = {name: results[name] for name in self.dependencies if name not in self.checks}
        ready = not self.draining and all(result["ok"] for result in checks.values())
        body: dict[str, object] = {
            "status": "ready" if ready else "not_ready",
            "draining": self.draining,
            "checks": checks,
            "dependencies": dependencies,
        }
        return ready, body

    def alive(self) -> tuple[bool, dict[str, object]]:
        failures = {name: reason for name, check in self.liveness.items() if (reason := check()) is not None}
        if failures:
            return False, {"status": "failed", "failures": failures}
        return True, {"status": "ok"}


def engine_check(engine: Engine) -> Check:
    """A lookup goes through the engine's full request path (its thread, or the TigerBeetle cluster);
    an engine whose writes are dead is not ready either, whatever its reads do."""

    async def check() -> None:
        failure = engine.write_failure
        if failure is not None:
            raise RuntimeError(f"engine cannot write: {failure}")
        await engine.lookup_accounts([1])

    return check


def engine_liveness(engine: Engine) -> LiveCheck:
    def check() -> str | None:
        return engine.write_failure

    return check


def metadata_check(store: MetadataStore) -> Check:
    """A read through the metadata store's thread and SQLite: every write needs the store first."""

    async def check() -> None:
        await store.get_account(0)

    return check


def kafka_check(health: TopicHealth) -> Check:
    """Kafka can take the service's records: brokers answer, every topic exists, and the last delivery
    of entries did not fail."""
    metadata_timeout = CHECK_TIMEOUT_SECONDS / 2

    async def check() -> None:
        problem = await asyncio.to_thread(health.problem, metadata_timeout)
        if problem is not None:
            raise RuntimeError(problem)

    return check


def build_ops_app(readiness: Readiness) -> FastAPI:
    app = FastAPI(title="ledger ops", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        alive, body = readiness.alive()
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    return app
