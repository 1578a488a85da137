"""schemathesis against the gateway's own OpenAPI document: malformed requests never cause a 5xx.

The gateway is served by uvicorn in front of the TGI emulator; both positive (valid) and negative
(malformed) requests are generated from /openapi.json, bounded so the file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from gateway_harness import ServedApp, gateway_settings, running_emulator, served_gateway
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from spotkeeper.gateway.api import create_app

# Hundreds of generated requests against a served gateway: `make unit` skips them.
pytestmark = pytest.mark.slow

# Per operation and generation mode; with schemathesis' coverage phase this is a few hundred requests per
# operation, and the file stays well under a minute on two cores.
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServedApp]:
    with (
        running_emulator() as emulator,
        served_gateway(gateway_settings(emulator.url, MAX_NEW_TOKENS=8, MAX_INPUT_CHARS=2000)) as served,
    ):
        yield served


# The gateway's own document, as it serves it at /openapi.json (built from the same app factory; loaded at
# collection time so each operation becomes its own test).
schema = schemathesis.openapi.from_dict(create_app(gateway_settings("http://127.0.0.1:8080")).openapi())


def test_the_served_document_is_the_one_tested(gateway: ServedApp) -> None:
    import httpx

    assert httpx.get(f"{gateway.url}/openapi.json").json() == schema.raw_schema


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_from_generated_requests(
    case: schemathesis.Case, gateway: ServedApp, session: requests.Session
) -> None:
    case.call_and_validate(
        base_url=gateway.url,
        session=session,
        timeout=10,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )
