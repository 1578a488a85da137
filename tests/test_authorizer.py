"""The API Gateway Lambda authorizer: Bearer keys checked against their hashes in the state table."""

from __future__ import annotations

import hmac
import importlib.util
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spotkeeper.gateway import auth
from spotkeeper.gateway.auth import ApiKeyRecord, ApiKeyStore, Verdict, key_hash, verify_key
from spotkeeper.observability import logger
from spotkeeper.settings import ConfigurationError, authorizer_env
from spotkeeper_ops.keys import create_key, main

ROOT = Path(__file__).resolve().parents[1]
TABLE = "spotkeeper-state"
METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/POST/v1/chat/completions"
STAGE_WILDCARD = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/*/*"


@dataclass
class LambdaContext:
    function_name: str = "spotkeeper-authorizer"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:spotkeeper-authorizer"
    aws_request_id: str = "7f0c6c1e-authorizer"


def load_handler() -> ModuleType:
    authorizer_env.cache_clear()  # each test sets its own environment
    spec = importlib.util.spec_from_file_location("authorizer_app", ROOT / "functions" / "authorizer" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def table(aws: Any) -> Any:
    from conftest import create_state_table

    return create_state_table(aws, TABLE)


@pytest.fixture
def usage_plan(aws: Any) -> str:
    plan = aws.client("apigateway").create_usage_plan(
        name="spotkeeper-clients", throttle={"rateLimit": 5, "burstLimit": 10}
    )
    return plan["id"]


@pytest.fixture
def handler(table: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("STATE_TABLE_NAME", TABLE)
    return load_handler()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything the authorizer logs, at DEBUG, through Powertools' own handler and the logging tree."""
    stream = io.StringIO()
    extra = logging.StreamHandler(stream)
    root = logging.getLogger()
    previous = logger.log_level
    logger.setLevel("DEBUG")
    original_stream = logger.registered_handler.stream  # type: ignore[attr-defined]
    logger.registered_handler.stream = stream  # type: ignore[attr-defined]
    root.addHandler(extra)
    try:
        yield stream
    finally:
        logger.registered_handler.stream = original_stream  # type: ignore[attr-defined]
        root.removeHandler(extra)
        logger.setLevel(previous)


def token_event(authorization: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "TOKEN", "methodArn": METHOD_ARN}
    if authorization is not None:
        event["authorizationToken"] = authorization
    return event


def assert_unauthorized(handler: ModuleType, event: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"^Unauthorized$") as raised:
        handler.lambda_handler(event, LambdaContext())
    # API Gateway answers 401 only when the function fails with exactly this message.
    assert str(raised.value) == "Unauthorized"


def test_a_valid_key_is_allowed_on_every_method_of_the_stage_with_its_usage_plan_key(
    handler: ModuleType, table: Any, aws: Any, usage_plan: str
) -> None:
    # Given a key created for alice and attached to the usage plan
    apigateway = aws.client("apigateway")
    key = create_key(ApiKeyStore(table), "alice", apigateway, usage_plan)

    # When a request carries it the way huggingface_hub and openai send it
    response = handler.lambda_handler(token_event(f"Bearer {key}"), LambdaContext())

    # Then the policy allows the whole stage (one cached answer for all routes), metered by the plan's key
    assert response["principalId"] == "alice"
    assert response["policyDocument"]["Statement"] == [
        {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": [STAGE_WILDCARD]}
    ]
    plan_keys = apigateway.get_usage_plan_keys(usagePlanId=usage_plan)["items"]
    assert [plan_key["value"] for plan_key in plan_keys] == [response["usageIdentifierKey"]]
    assert response["context"] == {"key_name": "alice", "key_hash_prefix": key_hash(key)[:12]}
    # and the table holds only the key's hash
    item = table.get_item(Key={"pk": "apikey", "sk": key_hash(key)})["Item"]
    assert key not in str(item)


def test_request_authorizer_events_read_the_same_header(handler: ModuleType, table: Any) -> None:
    key = create_key(ApiKeyStore(table), "bob")
    event = {"type": "REQUEST", "methodArn": METHOD_ARN, "headers": {"authorization": f"Bearer {key}"}}

    response = handler.lambda_handler(event, LambdaContext())

    assert response["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert "usageIdentifierKey" not in response


@pytest.mark.parametrize("authorization", [None, "", "   "])
def test_a_missing_key_is_unauthorized(handler: ModuleType, authorization: str | None) -> None:
    assert_unauthorized(handler, token_event(authorization))


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer",
        "Bearer not-a-spotkeeper-key",
        "Bearer spk_short",
        "spk_" + "a" * 43,
        "Bearer spk_" + "a" * 43 + " extra",
        "Bearer spk_" + "a" * 40 + "!!!",
    ],
)
def test_a_malformed_key_is_unauthorized_without_a_table_read(
    handler: ModuleType, authorization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    monkeypatch.setattr(ApiKeyStore, "get", lambda self, digest: reads.append(digest))

    assert_unauthorized(handler, token_event(authorization))
    assert reads == []


def test_a_wrong_key_is_unauthorized(handler: ModuleType, table: Any) -> None:
    create_key(ApiKeyStore(table), "alice")

    assert_unauthorized(handler, token_event("Bearer " + auth.new_api_key()))


def test_a_disabled_key_is_denied(handler: ModuleType, table: Any) -> None:
    store = ApiKeyStore(table)
    key = create_key(store, "mallory")
    assert store.set_enabled(key_hash(key), False)

    response = handler.lambda_handler(token_event(f"Bearer {key}"), LambdaContext())

    assert response["policyDocument"]["Statement"] == [
        {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": [STAGE_WILDCARD]}
    ]
    assert "usageIdentifierKey" not in response


def test_the_stored_hash_is_compared_in_constant_time(table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    store = ApiKeyStore(table)
    key = create_key(store, "alice")

    verdict, record = verify_key(store, key)

    assert verdict is Verdict.ALLOWED and record is not None
    assert compared == [(key_hash(key).encode(), key_hash(key).encode())]


def test_a_record_whose_hash_does_not_match_the_key_never_authorizes_it() -> None:
    key = auth.new_api_key()

    class MisfiledStore:
        def get(self, digest: str) -> ApiKeyRecord:
            return ApiKeyRecord(key_hash="0" * 64, name="misfiled", enabled=True)

    verdict, record = verify_key(MisfiledStore(), key)  # type: ignore[arg-type]

    assert (verdict, record) == (Verdict.UNKNOWN, None)


def test_keys_never_reach_the_logs(
    handler: ModuleType, table: Any, captured_logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ApiKeyStore(table)
    valid = create_key(store, "alice")
    disabled = create_key(store, "mallory")
    store.set_enabled(key_hash(disabled), False)
    unknown = auth.new_api_key()
    malformed = "spk_" + "x" * 20

    handler.lambda_handler(token_event(f"Bearer {valid}"), LambdaContext())
    handler.lambda_handler(token_event(f"Bearer {disabled}"), LambdaContext())
    for bad in (f"Bearer {unknown}", f"Bearer {malformed}", None):
        with pytest.raises(Exception, match="Unauthorized"):
            handler.lambda_handler(token_event(bad), LambdaContext())

    logged = captured_logs.getvalue() + capsys.readouterr().out
    assert "request allowed" in logged and "request refused" in logged
    for secret in (valid, disabled, unknown, malformed):
        assert secret not in logged
        assert secret[4:] not in logged
        # at most a short prefix of the hash, never the whole hash
        assert key_hash(secret) not in logged


def test_the_authorizer_refuses_to_run_without_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_TABLE_NAME", raising=False)
    handler = load_handler()

    with pytest.raises(ConfigurationError, match="STATE_TABLE_NAME"):
        handler.lambda_handler(token_event("Bearer " + auth.new_api_key()), LambdaContext())


def test_the_keys_cli_creates_lists_and_disables(table: Any, handler: ModuleType) -> None:
    out, err = io.StringIO(), io.StringIO()

    assert main(["--table", TABLE, "create", "--name", "carol"], out=out, err=err) == 0
    key = out.getvalue().strip()
    assert auth.bearer_key(f"Bearer {key}") == (Verdict.ALLOWED, key)
    assert "cannot be shown again" in err.getvalue()

    listing = io.StringIO()
    main(["--table", TABLE, "list"], out=listing)
    prefix = key_hash(key)[:12]
    assert listing.getvalue() == f"{prefix}\tcarol\tenabled\n"

    assert main(["--table", TABLE, "disable", "--hash-prefix", prefix[:8]], out=io.StringIO()) == 0
    response = handler.lambda_handler(token_event(f"Bearer {key}"), LambdaContext())
    assert response["policyDocument"]["Statement"][0]["Effect"] == "Deny"

    assert main(["--table", TABLE, "enable", "--hash-prefix", "zz"], out=io.StringIO(), err=err) == 2
