"""Schemathesis against the JSON gateway's own OpenAPI document, over loopback, authenticated.

Every operation gets schema-conforming (positive) and schema-violating (negative) requests, a bounded
number each. Every response must be no 5xx, have a status the document declares, the declared content
type, and a body and headers matching the declared schema; schema-violating requests must be refused
(4xx). Failures are collected per operation and reported together with the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.adversarial.conftest import Served

EXAMPLES_PER_OPERATION_MAX = 25
"""Per operation and generation mode: bounded so the suite stays quick."""
OPERATIONS_MIN = 19
"""The gateway's routes (facade.http.gateway: the ledger's 11, the History queries' 5 and the audit
evidence's 3, the fixture serving the read model); fewer means the document lost some."""
PER_ITEM_VALIDATION = frozenset({"POST /v1/transactions:batch"})
"""A batch refuses a bad item in that item's result (200 with a per-item error), by design
(facade.http.gateway): a schema-violating item is not a schema-violating request to refuse whole."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@dataclass
class Tally:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


HTTP_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection", "upgrade"})


def _fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    served: Served,
    tally: Tally,
    path_parameters: dict[str, str] | None = None,
) -> None:
    """Runs one operation's examples in one generation mode; a failing check raises (after shrinking)."""
    authorization = f"Bearer {served.token()}"
    checks = list(CHECKS)
    if mode == GenerationMode.NEGATIVE and operation.label not in PER_ITEM_VALIDATION:
        checks.append(negative_data_rejection)

    @settings(
        max_examples=EXAMPLES_PER_OPERATION_MAX,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: schemathesis.Case[Any]) -> None:
        tally.cases += 1
        # Framing headers make an invalid HTTP message, not an invalid API request: the HTTP server (h11)
        # answers those itself (400 text/plain) before the application, so they are outside the contract.
        for name in [name for name in case.headers if name.lower() in HTTP_FRAMING_HEADERS]:
            del case.headers[name]
        # A valid token, except where a negative case left the header out (then 401 is the refusal).
        if mode == GenerationMode.POSITIVE or "Authorization" in case.headers:
            case.headers["Authorization"] = authorization
        response = case.call(base_url=served.http_base)
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks)

    run()


def _seed(served: Served) -> dict[str, str]:
    """An account with money and an open authorization, made through the gateway: real path ids."""
    headers = {"Authorization": f"Bearer {served.token()}"}
    with httpx.Client(base_url=served.http_base, headers=headers, timeout=30) as client:
        account = client.post(
            "/v1/accounts",
            json={"currency": "USD", "external_reference": "st-1", "type": "ACCOUNT_TYPE_NO_OVERDRAFT"},
        )
        assert account.status_code == 201, account.text
        account_id = account.json()["account_id"]
        leg = {"type": "LEG_TYPE_CREDIT", "account_id": account_id, "amount": "1000", "currency": "USD"}
        held = client.post("/v1/transactions", json={"idempotency_key": "st-h", "legs": [leg], "authorize_only": True})
        assert held.status_code == 201, held.text
        transaction_id = held.json()["transaction_id"]
    return {"account_id": account_id, "transaction_id": transaction_id, "authorization_id": transaction_id}


def test_gateway_conforms_to_its_openapi_and_never_answers_5xx(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.http_base}/openapi.json")
    tally = Tally()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the gateway's OpenAPI document is invalid: {result}"
        operations.append(result.ok())
    assert len(operations) >= OPERATIONS_MIN

    existing = _seed(served)
    for operation in operations:
        known = {name: value for name, value in existing.items() if "{" + name + "}" in operation.path}
        runs: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None),
            (GenerationMode.NEGATIVE, None),
        ]
        if known:  # Also against resources that exist, so the 200 paths and their schemas are checked.
            runs.append((GenerationMode.POSITIVE, known))
        for mode, path_parameters in runs:
            try:
                _fuzz(operation, mode, served, tally, path_parameters)
            except (Exception, BaseExceptionGroup) as error:  # Schemathesis' FailureGroup: a BaseExceptionGroup.
                tally.failures.append(f"{operation.label} [{mode.value}]: {error}")

    statuses = sorted(tally.statuses.items())
    print(f"\nschemathesis: {tally.cases} cases, {len(tally.failures)} failures, statuses {statuses}")
    assert tally.failures == [], "\n\n".join(tally.failures)
    assert tally.cases >= len(operations) * 2
    assert not any(status >= 500 for status in tally.statuses)
