"""API Gateway Lambda authorizer for the gateway: ``Authorization: Bearer <key>`` against hashed keys.

TOKEN authorizer (identity source: the Authorization header; API Gateway caches the answer per header
value). REQUEST authorizer events are accepted too, reading the same header. The decision lives in
``spotkeeper.gateway.auth``; this handler only validates its environment and reads the event.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from spotkeeper.gateway.auth import ApiKeyStore, authorize
from spotkeeper.observability import logger
from spotkeeper.settings import authorizer_env


@cache
def _store() -> ApiKeyStore:
    # boto3 is imported on first use so the import of this module stays cheap in tests and at cold start.
    from spotkeeper.aws import REQUEST_PATH_CONFIG, AwsClients

    return ApiKeyStore(AwsClients(config=REQUEST_PATH_CONFIG).table(authorizer_env().state_table_name))


def _authorization_header(event: dict[str, Any]) -> str | None:
    if event.get("type") == "REQUEST":
        headers = event.get("headers") or {}
        return next((value for name, value in headers.items() if name.lower() == "authorization"), None)
    return event.get("authorizationToken")


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    authorizer_env()
    method_arn = event.get("methodArn")
    if not isinstance(method_arn, str) or not method_arn:
        raise ValueError("authorizer event without methodArn: is this function wired as a REST API authorizer?")
    return authorize(_authorization_header(event), method_arn, _store())
