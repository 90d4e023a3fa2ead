"""The ops endpoints, for Prometheus, load balancers and the service registry (unauthenticated: serve
them on an internal interface):

    GET /metrics   Prometheus exposition (every metric in facade/observability/metrics.py)
    GET /healthz   liveness: the process and its event loop answer. Restart the instance when it fails.
    GET /readyz    readiness: every dependency answers within its timeout — the engine, Kafka (when
                   configured), ClickHouse (when the read model is open) — and the service is not
                   draining. 503 with the failing checks otherwise; take the instance out of rotation.

Readiness runs the checks concurrently, each bounded by `CHECK_TIMEOUT_SECONDS`, so a hung dependency
makes /readyz answer 503 quickly instead of hanging the load balancer's probe.
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

if TYPE_CHECKING:
    from facade.kafka.topics import TopicHealth

CHECK_TIMEOUT_SECONDS = 2.0

Check = Callable[[], Awaitable[None]]
"""Returns when the dependency answers; raises (anything) when it does not."""


class Readiness:
    def __init__(self, checks: Mapping[str, Check]) -> None:
        self.checks = dict(checks)
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
        names = list(self.checks)
        results = await asyncio.gather(*(self._run(self.checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        ready = not self.draining and all(result["ok"] for result in results)
        return ready, {"status": "ready" if ready else "not_ready", "draining": self.draining, "checks": checks}


def engine_check(engine: Engine) -> Check:
    """A lookup goes through the engine's full request path (its thread, or the TigerBeetle cluster)."""

    async def check() -> None:
        await engine.lookup_accounts([1])

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
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    return app
