"""The gateway's own behaviour in front of the TGI emulator: limits, errors, failure modes, metrics, config."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import RecordingTransport, ServedApp, free_port, gateway_settings, running_emulator, served_gateway

from spotkeeper.gateway.api import create_app
from spotkeeper.settings import ConfigurationError, GatewaySettings
from spotkeeper_local.tgi_emulator import TgiEmulator, expected_text, expected_tokens

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 16
MAX_INPUT_CHARS = 200
MAX_BODY_BYTES = 4096


@pytest.fixture(scope="module")
def emulator() -> Iterator[TgiEmulator]:
    with running_emulator() as emulator:
        yield emulator


def limited(url: str | None, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "MAX_NEW_TOKENS": MAX_NEW_TOKENS,
        "MAX_INPUT_CHARS": MAX_INPUT_CHARS,
        "MAX_BODY_BYTES": MAX_BODY_BYTES,
        "CONNECT_TIMEOUT_SECONDS": 0.5,
    }
    values.update(overrides)
    return gateway_settings(url, **values)


@pytest.fixture(scope="module")
def gateway(emulator: TgiEmulator) -> Iterator[ServedApp]:
    with served_gateway(limited(emulator.url)) as served:
        yield served


@pytest.fixture
def client(gateway: ServedApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        yield client


def sse_payloads(text: str) -> list[Any]:
    return [
        json.loads(line[5:]) if line[5:].strip() != "[DONE]" else "[DONE]"
        for line in text.splitlines()
        if line.startswith("data:")
    ]


def emf_records(capsys: pytest.CaptureFixture[str], route: str, count: int = 1) -> list[dict[str, Any]]:
    """EMF records the gateway printed for ``route`` (published when a response ends, maybe after the client
    has read it, hence the short bounded wait)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for line in capsys.readouterr().out.splitlines():
            if line.startswith('{"_aws"'):
                record = json.loads(line)
                if record.get("Route") == route:
                    found.append(record)
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no EMF record for {route}")


# limits and validation ---------------------------------------------------------------------------------

TOO_MANY_TOKENS = [
    ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": MAX_NEW_TOKENS + 1}}),
    ("/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": MAX_NEW_TOKENS + 1}}),
    ("/", {"inputs": "hi", "parameters": {"max_new_tokens": MAX_NEW_TOKENS + 1}, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_NEW_TOKENS + 1}),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": MAX_NEW_TOKENS + 1},
    ),
    ("/v1/completions", {"prompt": "hi", "max_tokens": MAX_NEW_TOKENS + 1, "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), TOO_MANY_TOKENS)
def test_more_new_tokens_than_the_cap_is_refused_before_tgi(
    client: httpx.Client, emulator: TgiEmulator, path: str, body: dict[str, Any]
) -> None:
    before = emulator.requests_total

    response = client.post(path, json=body)

    assert response.status_code == 422
    assert response.json()["error_type"] == "validation"
    assert f"<= {MAX_NEW_TOKENS}" in response.json()["error"]
    assert emulator.requests_total == before


TOO_LONG = "x" * (MAX_INPUT_CHARS + 1)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"inputs": TOO_LONG}),
        ("/generate_stream", {"inputs": TOO_LONG}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": TOO_LONG}]}]}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": "x" * 150}, {"role": "user", "content": "y" * 60}]},
        ),
        ("/v1/completions", {"prompt": ["x" * 150, "y" * 60]}),
    ],
)
def test_input_longer_than_the_cap_is_refused(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    response = client.post(path, json=body)

    assert response.status_code == 422
    assert response.json()["error_type"] == "validation"
    assert f"less than {MAX_INPUT_CHARS} characters" in response.json()["error"]


def test_body_over_the_limit_is_413_with_or_without_content_length(client: httpx.Client) -> None:
    big = json.dumps({"inputs": "x" * MAX_BODY_BYTES}).encode()

    declared = client.post("/generate", content=big, headers={"content-type": "application/json"})
    chunked = client.post(
        "/generate", content=iter([big[:1000], big[1000:]]), headers={"content-type": "application/json"}
    )

    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json() == {
            "error": f"Request body must be at most {MAX_BODY_BYTES} bytes",
            "error_type": "payload_too_large",
        }


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "body"),
        (json.dumps({"inputs": ""}).encode(), "inputs"),
        (json.dumps({"inputs": 3}).encode(), "inputs"),
        (json.dumps({"inputs": "a", "parameters": {"max_new_token": 5}}).encode(), "max_new_token"),
        (json.dumps({"inputs": "a", "parameters": {"top_p": 1.0}}).encode(), "top_p"),
        (json.dumps({"inputs": "a", "parameters": {"temperature": 0}}).encode(), "temperature"),
        (json.dumps({"inputs": "a", "parameters": None}).encode(), "parameters"),
    ],
)
def test_malformed_requests_get_tgi_shaped_422(client: httpx.Client, body: bytes, mentions: str) -> None:
    response = client.post("/generate", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert set(response.json()) == {"error", "error_type"}
    assert response.json()["error_type"] == "validation"
    assert mentions in response.json()["error"]


def test_unknown_route_and_wrong_method_are_tgi_shaped(client: httpx.Client) -> None:
    missing = client.get("/v2/models")
    wrong_method = client.get("/generate")

    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found", "error_type": "not_found"}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error_type"] == "method_not_allowed"


def test_openapi_document_describes_tgi_and_openai_routes(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()

    assert {
        "/generate",
        "/generate_stream",
        "/",
        "/info",
        "/health",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    } <= set(document["paths"])
    parameters = document["components"]["schemas"]["GenerateParameters"]["properties"]
    assert {"max_new_tokens", "temperature", "top_p", "stop", "details", "seed"} <= set(parameters)


# relaying TGI ------------------------------------------------------------------------------------------


def test_tgi_validation_errors_pass_through_with_status_and_body(client: httpx.Client) -> None:
    # best_of > 1 without sampling passes the gateway's checks but not TGI's
    response = client.post("/generate", json={"inputs": "hi", "parameters": {"best_of": 2}})

    assert response.status_code == 422
    assert response.json() == {
        "error": "Input validation error: you must use sampling when `best_of` is > 1",
        "error_type": "validation",
    }


def test_generate_relays_tgi_headers_and_text(client: httpx.Client) -> None:
    response = client.post("/generate", json={"inputs": "relay me", "parameters": {"max_new_tokens": 5}})

    assert response.status_code == 200
    assert response.json() == {"generated_text": expected_text("relay me", 5)}
    assert response.headers["x-generated-tokens"] == "5"


def test_info_and_health_come_from_tgi(client: httpx.Client, emulator: TgiEmulator) -> None:
    info = client.get("/info")
    health = client.get("/health")

    assert info.status_code == 200
    assert info.json() == emulator.info()
    assert health.status_code == 200
    assert health.json() == {"gateway": "ok", "backend": "ok", "serving_instance_id": None}
    assert client.get("/gateway/ping").json() == {"status": "ok"}


@pytest.fixture
def own_emulator() -> Iterator[TgiEmulator]:
    with running_emulator(token_delay=0.05, max_concurrent_requests=1) as emulator:
        yield emulator


@pytest.fixture
def own_gateway(own_emulator: TgiEmulator) -> Iterator[ServedApp]:
    with served_gateway(limited(own_emulator.url)) as served:
        yield served


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_overload_passes_through(own_emulator: TgiEmulator, own_gateway: ServedApp) -> None:
    # Given TGI's only permit held by a long stream
    holder = {"inputs": "hold", "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
    with (
        httpx.Client(base_url=own_gateway.url, timeout=10) as client,
        client.stream("POST", "/generate_stream", json=holder),
    ):
        wait_for(lambda: own_emulator.in_flight >= 1)
        # When another request comes
        overloaded = client.post("/generate", json={"inputs": "hi"})

    # Then TGI's 429 reaches the client unchanged
    assert overloaded.status_code == 429
    assert overloaded.json() == {"error": "Model is overloaded", "error_type": "overloaded"}


def test_generation_errors_pass_through(own_emulator: TgiEmulator, own_gateway: ServedApp) -> None:
    own_emulator.fail_generation_after(0, "Server error: CUDA out of memory")

    failed = httpx.post(f"{own_gateway.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 3}})

    assert failed.status_code == 424
    assert failed.json() == {
        "error": "Request failed during generation: Server error: CUDA out of memory",
        "error_type": "generation",
    }


def test_tgi_error_event_mid_stream_is_relayed(
    own_emulator: TgiEmulator, own_gateway: ServedApp, capsys: pytest.CaptureFixture[str]
) -> None:
    own_emulator.fail_generation_after(2)

    with httpx.Client(base_url=own_gateway.url, timeout=10) as client:
        response = client.post("/generate_stream", json={"inputs": "fail", "parameters": {"max_new_tokens": 6}})

    events = sse_payloads(response.text)
    assert [event["token"]["text"] for event in events[:2]] == expected_tokens("fail", 2)
    assert events[2] == {
        "error": "Request failed during generation: Server error: injected fault",
        "error_type": "generation",
    }
    assert len(events) == 3
    (record,) = emf_records(capsys, "/generate_stream")
    assert record["GatewayErrors"] == [1.0]
    assert record["TokensOut"] == [2.0]


def test_instance_dying_mid_stream_ends_with_an_error_event(own_emulator: TgiEmulator, own_gateway: ServedApp) -> None:
    # Given a stream in progress
    body = {"inputs": "reclaimed", "parameters": {"max_new_tokens": 16}}
    lines: list[str] = []
    with (
        httpx.Client(base_url=own_gateway.url, timeout=10) as client,
        client.stream("POST", "/generate_stream", json=body) as response,
    ):
        for line in response.iter_lines():
            lines.append(line)
            # When Spot reclaims the instance after the second token
            if sum(1 for seen in lines if seen.startswith("data:")) == 2:
                threading.Thread(target=own_emulator.kill).start()

    # Then the client got the tokens so far and TGI's error event, not a silent end of stream
    events = sse_payloads("\n".join(lines))
    tokens = [event["token"]["text"] for event in events if "token" in event]
    assert 2 <= len(tokens) < 16
    assert tokens == expected_tokens("reclaimed", len(tokens))
    assert events[-1]["error_type"] == "generation"
    assert "retry" in events[-1]["error"]


def test_openai_client_sees_a_dying_stream_as_an_error(own_emulator: TgiEmulator, own_gateway: ServedApp) -> None:
    from openai import APIError, OpenAI

    client = OpenAI(base_url=f"{own_gateway.url}/v1", api_key="spk_unused", max_retries=0)
    stream = client.chat.completions.create(
        model="tgi", messages=[{"role": "user", "content": "hi"}], max_tokens=16, stream=True
    )
    received = []
    with pytest.raises(APIError) as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
            if len(received) == 2:
                own_emulator.kill()
    assert 2 <= len(received) < 16
    # The SDK keeps TGI's error string as the error body.
    assert "the backend" in str(raised.value.body)


# backend unreachable -----------------------------------------------------------------------------------


def test_closed_port_is_503_with_retry_after_after_one_retry_and_no_wait() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    transport = RecordingTransport()
    settings = limited(closed, RETRY_AFTER_SECONDS=7)
    gateway = ServedApp(create_app(settings, transport=transport)).start()
    try:
        with httpx.Client(base_url=gateway.url) as client:
            generate = client.post("/generate", json={"inputs": "hi"})
            stream = client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True}
            )
            attempts = list(transport.attempts)
            health = client.get("/health")
            ping = client.get("/gateway/ping")
    finally:
        gateway.stop()

    for response in (generate, stream):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "7"
        assert response.json()["error_type"] == "unavailable"
    # Each request tried the closed port twice (the first try and one against a fresh resolution), refused at
    # once each time, and the gateway waits for nothing in between: no backoff, no third try.
    assert attempts == [(settings.connect_timeout_seconds, "ConnectError")] * 4
    assert health.status_code == 503
    assert health.headers["retry-after"] == "7"
    assert health.json()["error_type"] == "healthcheck"
    assert health.json()["backend"] == "unavailable"
    assert ping.status_code == 200


def test_backend_that_never_accepts_is_503_within_the_connect_timeout_bound() -> None:
    # A listener whose accept queue is full: SYNs are dropped, connects hang like a vanished instance's.
    host = "127.0.0.9"
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect((host, port))
        fillers.append(filler)
    transport = RecordingTransport()
    settings = limited(f"http://{host}:{port}", CONNECT_TIMEOUT_SECONDS=0.4)
    try:
        gateway = ServedApp(create_app(settings, transport=transport)).start()
        try:
            response = httpx.post(f"{gateway.url}/generate", json={"inputs": "hi"}, timeout=10)
        finally:
            gateway.stop()
    finally:
        for sock in (*fillers, listener):
            sock.close()

    assert response.status_code == 503
    assert "retry-after" in response.headers
    # Two connect attempts (the first and the retry against a fresh resolution), each given up at the connect
    # timeout: the client waits at most twice CONNECT_TIMEOUT_SECONDS, nothing longer.
    assert transport.attempts == [(0.4, "ConnectTimeout"), (0.4, "ConnectTimeout")]


def test_unhealthy_tgi_makes_health_503(own_emulator: TgiEmulator, own_gateway: ServedApp) -> None:
    own_emulator.set_unhealthy(True)

    response = httpx.get(f"{own_gateway.url}/health", timeout=10)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.json()["error_type"] == "healthcheck"


# metrics -----------------------------------------------------------------------------------------------


def test_each_request_publishes_emf_metrics(client: httpx.Client, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    client.post("/generate_stream", json={"inputs": "count me", "parameters": {"max_new_tokens": 4}})
    client.post("/generate", json={"inputs": "count me", "parameters": {"max_new_tokens": 3}})

    (streamed,) = emf_records(capsys, "/generate_stream")
    directive = streamed["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "Spotkeeper"
    assert {"AutoScalingGroupName", "Route"} <= set(directive["Dimensions"][0])
    assert {metric["Name"] for metric in directive["Metrics"]} == {
        "GatewayRequests",
        "GatewayErrors",
        "GatewayLatency",
        "TimeToFirstToken",
        "TokensOut",
    }
    assert streamed["TokensOut"] == [4.0]
    assert streamed["GatewayErrors"] == [0.0]
    assert 0 < streamed["TimeToFirstToken"][0] <= streamed["GatewayLatency"][0]
    assert streamed["status"] == 200


# configuration -----------------------------------------------------------------------------------------


def test_settings_need_a_way_to_find_tgi() -> None:
    with pytest.raises(ConfigurationError, match="TGI_URL, or both GROUP_NAME and STATE_TABLE_NAME"):
        GatewaySettings.from_environ({"GROUP_NAME": "g", "TGI_URL": " "})
    with pytest.raises(ConfigurationError, match="MAX_NEW_TOKENS"):
        GatewaySettings.from_environ({"TGI_URL": "http://127.0.0.1:8080", "MAX_NEW_TOKENS": "lots"})
    with pytest.raises(ConfigurationError, match="TGI_URL"):
        GatewaySettings.from_environ({"TGI_URL": "not a url"})

    from_table = GatewaySettings.from_environ({"GROUP_NAME": "g", "STATE_TABLE_NAME": "t", "TGI_URL": ""})
    assert from_table.fixed_backend_url is None
    assert from_table.tgi_port == 8080


def test_misconfigured_gateway_does_not_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("TGI_URL", "GROUP_NAME", "STATE_TABLE_NAME"):
        monkeypatch.delenv(name, raising=False)
    served = ServedApp(create_app())

    with pytest.raises(RuntimeError, match="did not start"):
        served.start(timeout=5)

    assert served.exit_code == 3
    assert "GatewaySettings: bad or missing environment" in caplog.text


@pytest.mark.slow
def test_run_sh_serves_the_function_app_like_the_lambda_web_adapter_expects(emulator: TgiEmulator) -> None:
    # Given the function's folder as the task root and the layer where Lambda mounts it (/opt/python)
    port = free_port()
    env = {
        **os.environ,
        "LAMBDA_TASK_ROOT": str(ROOT / "functions" / "gateway"),
        "PYTHONPATH": str(ROOT / "layers" / "spotkeeper"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PORT": str(port),
        "TGI_URL": emulator.url,
    }
    server = subprocess.Popen(  # noqa: S603 - our own script, run as Lambda runs it
        [shutil.which("bash") or "/bin/bash", str(ROOT / "functions" / "gateway" / "run.sh")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # When the adapter polls the readiness path
        deadline = time.monotonic() + 20
        ping = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ping = httpx.get(f"http://127.0.0.1:{port}/gateway/ping", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # Then the function's app answers it, and proxies to TGI
        assert ping is not None and ping.status_code == 200, server.stderr.read().decode() if server.stderr else ""
        generated = httpx.post(
            f"http://127.0.0.1:{port}/generate", json={"inputs": "lambda", "parameters": {"max_new_tokens": 3}}
        )
        assert generated.json() == {"generated_text": expected_text("lambda", 3)}
    finally:
        server.terminate()
        server.wait(10)


def test_plain_text_rejections_from_tgi_reach_clients_in_tgi_shape() -> None:
    # Given a TGI that answers an empty 404 (a version without /v1/models) and a plain-text 400
    def old_tgi(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(404)
        return httpx.Response(400, text="Failed to parse the request body as JSON")

    served = ServedApp(create_app(limited("http://tgi.invalid"), transport=httpx.MockTransport(old_tgi))).start()
    try:
        models = httpx.get(f"{served.url}/v1/models")
        generated = httpx.post(f"{served.url}/generate", json={"inputs": "hi"})
    finally:
        served.stop()

    assert models.status_code == 404
    assert models.json() == {"error": "Not Found", "error_type": "not_found"}
    assert generated.status_code == 400
    assert generated.json() == {"error": "Failed to parse the request body as JSON", "error_type": "bad_request"}
