"""API keys for the gateway: generated once, stored only as their SHA-256, checked by the Lambda authorizer.

Keys are 256-bit random tokens (``spk_`` + 43 URL-safe characters), so a plain SHA-256 is enough to make the
stored value useless to a reader of the table (no salt or slow hash is needed for random keys, unlike
passwords). Items live in the state table under ``pk="apikey"``, ``sk=<sha256 hex>``, with the value of the
API Gateway API key the usage plan meters the client by.

The authorizer answers API Gateway in its contract for REST API Lambda authorizers:
- no ``Authorization: Bearer <key>``, a malformed one, or an unknown key: raise ``Unauthorized`` (the
  function fails with the message "Unauthorized", API Gateway answers 401);
- a disabled key: a Deny policy (403), cached like any policy;
- a valid key: an Allow policy for every method of the stage (so one cached answer covers all routes) with
  ``usageIdentifierKey`` for the usage plan's throttling and quota.
The key never appears in logs: at most the first characters of its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerResponse,
)

from spotkeeper.observability import logger
from spotkeeper.state import conditional_write

APIKEY_PK = "apikey"
KEY_PREFIX = "spk_"
_KEY = re.compile(r"^spk_[A-Za-z0-9_-]{32,128}$")
_BEARER = re.compile(r"^Bearer +(\S+) *$", re.IGNORECASE)
_HASH = re.compile(r"^[0-9a-f]{64}$")
HASH_PREFIX_CHARS = 12


class Unauthorized(Exception):
    """API Gateway maps a Lambda authorizer failing with exactly this message to 401."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


class Verdict(StrEnum):
    ALLOWED = "allowed"
    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    DISABLED = "disabled"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hash_prefix(digest: str) -> str:
    return digest[:HASH_PREFIX_CHARS]


def bearer_key(authorization: str | None) -> tuple[Verdict, str | None]:
    """The key in an ``Authorization`` header value, or why there is none."""
    if authorization is None or not authorization.strip():
        return Verdict.MISSING, None
    match = _BEARER.match(authorization.strip())
    if match is None or not _KEY.match(match.group(1)):
        return Verdict.MALFORMED, None
    return Verdict.ALLOWED, match.group(1)


@dataclass(frozen=True)
class ApiKeyRecord:
    key_hash: str
    name: str
    enabled: bool
    usage_key: str | None = None
    api_key_id: str | None = None
    created_at: float | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ApiKeyRecord:
        return cls(
            key_hash=str(item["sk"]),
            name=str(item.get("name", "")),
            enabled=bool(item.get("enabled", False)),
            usage_key=item.get("usage_key"),
            api_key_id=item.get("api_key_id"),
            created_at=float(item["created_at"]) if item.get("created_at") is not None else None,
        )


class ApiKeyStore:
    """API key hashes in the state table (a boto3 DynamoDB Table resource)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, digest: str) -> ApiKeyRecord | None:
        item = self._table.get_item(Key={"pk": APIKEY_PK, "sk": digest}, ConsistentRead=True).get("Item")
        return ApiKeyRecord.from_item(item) if item else None

    def add(self, record: ApiKeyRecord) -> None:
        if not _HASH.match(record.key_hash):
            raise ValueError("key_hash must be a lowercase SHA-256 hex digest")
        item: dict[str, Any] = {
            "pk": APIKEY_PK,
            "sk": record.key_hash,
            "name": record.name,
            "enabled": record.enabled,
            "created_at": Decimal(str(record.created_at if record.created_at is not None else time.time())),
        }
        if record.usage_key:
            item["usage_key"] = record.usage_key
        if record.api_key_id:
            item["api_key_id"] = record.api_key_id
        self._table.put_item(Item=item, ConditionExpression="attribute_not_exists(sk)")

    def set_enabled(self, digest: str, enabled: bool) -> bool:
        """False if there is no such key."""
        return conditional_write(
            self._table.update_item,
            Key={"pk": APIKEY_PK, "sk": digest},
            UpdateExpression="SET enabled = :e",
            ConditionExpression="attribute_exists(sk)",
            ExpressionAttributeValues={":e": enabled},
        )

    def all(self) -> list[ApiKeyRecord]:
        records: list[ApiKeyRecord] = []
        query: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": APIKEY_PK},
        }
        while True:
            response = self._table.query(**query)
            records.extend(ApiKeyRecord.from_item(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return records
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def verify_key(store: ApiKeyStore, key: str) -> tuple[Verdict, ApiKeyRecord | None]:
    digest = key_hash(key)
    record = store.get(digest)
    # The lookup is by hash, so the key itself is never compared; the stored digest still is, in constant
    # time, so an item whose sk does not match its key can never authorize it, and timing tells nothing.
    if record is None or not hmac.compare_digest(record.key_hash.encode(), digest.encode()):
        return Verdict.UNKNOWN, None
    if not record.enabled:
        return Verdict.DISABLED, record
    return Verdict.ALLOWED, record


def authorize(authorization: str | None, method_arn: str, store: ApiKeyStore) -> dict[str, Any]:
    """The authorizer's answer for an ``Authorization`` header value; raises Unauthorized for 401."""
    verdict, key = bearer_key(authorization)
    if key is None:
        logger.info("request refused", extra={"verdict": verdict.value})
        raise Unauthorized()
    verdict, record = verify_key(store, key)
    digest_prefix = hash_prefix(key_hash(key))
    if verdict is Verdict.UNKNOWN or record is None:
        logger.info("request refused", extra={"verdict": verdict.value, "key_hash_prefix": digest_prefix})
        raise Unauthorized()
    principal = record.name or f"apikey-{digest_prefix}"
    context = {"key_name": record.name, "key_hash_prefix": digest_prefix}
    if verdict is Verdict.DISABLED:
        logger.info("request refused", extra={"verdict": verdict.value, "key_hash_prefix": digest_prefix})
        policy = APIGatewayAuthorizerResponse.from_route_arn(method_arn, principal_id=principal, context=context)
        policy.deny_all_routes()
        return policy.asdict()
    if not record.usage_key:
        logger.warning(
            "key has no usage plan API key: API Gateway will refuse it on methods that require one",
            extra={"key_hash_prefix": digest_prefix},
        )
    logger.info("request allowed", extra={"key_hash_prefix": digest_prefix, "key_name": record.name})
    policy = APIGatewayAuthorizerResponse.from_route_arn(
        method_arn, principal_id=principal, context=context, usage_identifier_key=record.usage_key
    )
    # One Allow for every method of the stage: API Gateway caches the answer per token, for all routes.
    policy.allow_all_routes()
    return policy.asdict()
