"""A TGI that hangs (the port open, connections accepted, nothing answered) must not hang the gateway's clients.

The spec: "during a failover answer 503 with Retry-After, never hang". A hung replica is noticed by its liveness
check (``GET /health``) once TGI's response headers are LIVENESS_CHECK_AFTER_SECONDS late; the request then goes
to another replica (nothing reached the client yet) or gets 503 with Retry-After. The settings here are small
and the read timeout long: a gateway that waited out its read timeout would make the client's own timeout (well
under the read timeout, far above what the liveness check takes) fire, so the tests check the kind of answer,
never how fast it came.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from spotkeeper.gateway import upstream as upstream_module
from spotkeeper.gateway.backend import Backend
from spotkeeper.gateway.upstream import TgiUpstream
from spotkeeper_local.tgi_emulator import TgiEmulator, expected_text, expected_tokens
from tests.gateway_harness import ServedApp, gateway_settings, running_emulator
from tests.test_gateway_replicas import (
    BUDGET,
    CUT_AFTER,
    CuttingRelay,
    Replicas,
    _event_ends,
    _FirstOfTies,
    _quietly,
    continued,
    sse_payloads,
)

READ_TIMEOUT = 120.0  # the gateway's generation read timeout: never reached in these tests
CLIENT_TIMEOUT = 30.0  # the client gives up long before it, long after a liveness check (~0.5 s)
RETRY_AFTER = 3


def hang_settings(**overrides: object) -> Any:
    values: dict[str, object] = {
        "READ_TIMEOUT_SECONDS": READ_TIMEOUT,
        "LIVENESS_CHECK_AFTER_SECONDS": 0.2,
        "LIVENESS_TIMEOUT_SECONDS": 0.3,
        "CONNECT_TIMEOUT_SECONDS": 1,
        "RETRY_AFTER_SECONDS": RETRY_AFTER,
    }
    values.update(overrides)
    return gateway_settings("http://127.0.0.1:9", **values)


class SeenTransport(httpx.AsyncHTTPTransport):
    """The gateway's real upstream transport, noting every request it starts (even those never answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.started.append((request.method, str(request.url)))
        return await super().handle_async_request(request)

    def to(self, base_url: str, method: str | None = None) -> list[str]:
        return [
            url.removeprefix(base_url)
            for seen_method, url in self.started
            if url.startswith(base_url + "/") and method in (None, seen_method)
        ]


def gateway(replicas: Replicas, transport: httpx.AsyncBaseTransport, **overrides: object) -> ServedApp:
    from spotkeeper.gateway.api import create_app

    return ServedApp(create_app(hang_settings(**overrides), replicas, transport)).start()


@pytest.fixture
def hung() -> Iterator[TgiEmulator]:
    with running_emulator() as emulator:
        emulator.set_hung(True)
        try:
            yield emulator
        finally:
            emulator.set_hung(False)  # let its pending handlers end before it stops


CHAT = [{"role": "user", "content": "What keeps Spot alive?"}]
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "generate": ("/generate", {"inputs": "q", "parameters": {"max_new_tokens": 3}}),
    "generate_stream": ("/generate_stream", {"inputs": "q", "parameters": {"max_new_tokens": 3}}),
    "compat": ("/", {"inputs": "q", "parameters": {"max_new_tokens": 3}}),
    "chat": ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3}),
    "chat_stream": ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 3, "stream": True}),
    "completions": ("/v1/completions", {"prompt": "q", "max_tokens": 3}),
    "completions_stream": ("/v1/completions", {"prompt": "q", "max_tokens": 3, "stream": True}),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_with_one_replica_a_hung_tgi_gets_the_client_503_with_retry_after(hung: TgiEmulator, route: str) -> None:
    path, body = ROUTES[route]
    transport = SeenTransport()
    served = gateway(Replicas(Backend(hung.url, "i-hung")), transport)
    try:
        response = httpx.post(served.url + path, json=body, timeout=CLIENT_TIMEOUT)
    finally:
        served.stop()
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    error = response.json()
    assert set(error) == {"error", "error_type"} and error["error_type"] == "unavailable"
    assert "hung" in error["error"] or "liveness" in error["error"]
    # The request reached the replica; it was given up because /health did not answer either
    assert transport.to(hung.url) == [path, "/health"]


def test_requests_after_a_replica_was_found_hung_get_503_at_once_without_reaching_it(hung: TgiEmulator) -> None:
    transport = SeenTransport()
    replicas = Replicas(Backend(hung.url, "i-hung"))
    served = gateway(replicas, transport, RETRY_AFTER_SECONDS=600)
    try:
        with httpx.Client(base_url=served.url, timeout=CLIENT_TIMEOUT) as client:
            statuses = [client.post("/generate", json={"inputs": f"q{n}"}).status_code for n in range(4)]
    finally:
        served.stop()
    assert statuses == [503] * 4
    # Only the first request went to the hung replica (and checked its liveness); the three after did not wait
    assert transport.to(hung.url) == ["/generate", "/health"]
    # and each of them looked for a replacement in the (fake, uncached) table: one fresh read each
    assert replicas.fresh_reads == 4


@pytest.mark.parametrize("route", ["generate", "generate_stream", "chat", "chat_stream"])
def test_with_two_replicas_a_request_to_a_hung_one_is_served_by_the_other(hung: TgiEmulator, route: str) -> None:
    path, body = ROUTES[route]
    transport = SeenTransport()
    with running_emulator() as ready:
        replicas = Replicas(Backend(hung.url, "i-hung"), Backend(ready.url, "i-ready"))
        served = gateway(replicas, transport)
        try:
            with httpx.Client(base_url=served.url, timeout=CLIENT_TIMEOUT) as client:
                # Whichever replica the tie break picks first, every request is answered by the ready one
                responses = [client.post(path, json=body) for _ in range(4)]
        finally:
            served.stop()
    assert [response.status_code for response in responses] == [200] * 4
    assert ready.requests_total == 4
    # At most one request went to the hung replica; after it was found hung none did
    assert transport.to(hung.url) in ([], [path, "/health"])
    if route == "generate":
        assert responses[0].json() == {"generated_text": expected_text("q", 3)}


def test_a_slow_but_alive_generation_is_not_cut() -> None:
    # A non-streamed generation answers only when it ends: ~40 tokens at 0.05 s, many liveness checks long
    body = {"inputs": "long answer", "parameters": {"max_new_tokens": 40}}
    transport = SeenTransport()
    with running_emulator(token_delay=0.05) as slow:
        served = gateway(Replicas(Backend(slow.url, "i-slow")), transport, LIVENESS_CHECK_AFTER_SECONDS=0.1)
        try:
            response = httpx.post(served.url + "/generate", json=body, timeout=CLIENT_TIMEOUT)
        finally:
            served.stop()
    assert response.status_code == 200
    assert response.json() == {"generated_text": expected_text("long answer", 40)}
    seen = transport.to(slow.url)
    # Its liveness was checked while it generated (and answered), and the generation was sent once
    assert seen[0] == "/generate" and seen.count("/generate") == 1
    assert seen.count("/health") >= 1


def test_a_request_answered_in_time_costs_no_liveness_check() -> None:
    transport = SeenTransport()
    with running_emulator() as ready:
        # The defaults: checks only after LIVENESS_CHECK_AFTER_SECONDS (5 s) without an answer
        from spotkeeper.gateway.api import create_app

        settings = gateway_settings(ready.url)
        served = ServedApp(create_app(settings, Replicas(Backend(ready.url, "i-ready")), transport)).start()
        try:
            with httpx.Client(base_url=served.url, timeout=CLIENT_TIMEOUT) as client:
                for route in ("generate", "generate_stream", "chat", "chat_stream"):
                    path, body = ROUTES[route]
                    assert client.post(path, json=body).status_code == 200
        finally:
            served.stop()
    assert settings.liveness_check_after_seconds == 5.0
    assert "/health" not in transport.to(ready.url)
    assert len(transport.started) == 4


def test_a_replica_found_hung_is_left_out_for_retry_after_seconds_then_tried_again() -> None:
    now = [100.0]
    first, second = Backend("http://10.0.0.1:8080", "i-a"), Backend("http://10.0.0.2:8080", "i-b")
    upstream = TgiUpstream(
        httpx.AsyncClient(), Replicas(first, second), hang_settings(), rng=random.Random(3), clock=lambda: now[0]
    )
    upstream._unreachable(first, hung=True)
    during = {upstream.pick((first, second)), upstream.pick((first, second))}
    alone = upstream.pick((first,))  # unlike an unreachable replica, not even a last resort
    now[0] += RETRY_AFTER
    after = upstream.pick((first,))
    assert during == {second} and alone is None
    assert after == first


# a TGI that hangs in the middle of a stream ----------------------------------------------------------------------


class StallingRelay(CuttingRelay):
    """A TCP relay in front of one replica that stops forwarding after ``after_events`` SSE events of its first
    stream, holding the connection open (TGI hung mid-generation); from then on it accepts every connection (its
    /health too) and answers nothing."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cuts:
            await self._hold(reader, writer)
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(self._target.host, self._target.port)
        stalled = asyncio.Event()

        async def requests() -> None:
            with _quietly():
                while (data := await reader.read(65536)) and not stalled.is_set():
                    upstream_writer.write(data)
                    await upstream_writer.drain()
                writer.close()  # the gateway gave up on the stalled stream

        forwarding = asyncio.create_task(requests())
        events = 0
        try:
            while data := await upstream_reader.read(65536):
                for position in _event_ends(data):
                    events += 1
                    if events == self._after:
                        self.cuts += 1
                        stalled.set()
                        writer.write(data[:position])
                        await writer.drain()
                        await forwarding  # nothing more is sent back
                        return
                writer.write(data)
                await writer.drain()
        finally:
            forwarding.cancel()
            with _quietly():
                upstream_writer.close()

    @staticmethod
    async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with _quietly():
            while await reader.read(65536):
                pass  # whatever the gateway sends gets no answer, until it gives up and closes
            writer.close()


@pytest.fixture
def first_of_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first replica listed takes the first request (the one the relay stalls)."""
    monkeypatch.setattr(upstream_module, "random", SimpleNamespace(Random=_FirstOfTies))


@pytest.mark.usefixtures("first_of_ties")
def test_a_stream_whose_tgi_hangs_mid_way_is_resumed_on_another_replica() -> None:
    prompt = "What keeps a Spot endpoint alive?"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": BUDGET}}
    with running_emulator(token_delay=0.01) as first, running_emulator(token_delay=0.01) as second:
        relay = StallingRelay(first, after_events=CUT_AFTER)
        try:
            replicas = Replicas(Backend(relay.url, "i-stalls"), Backend(second.url, "i-second"))
            served = gateway(replicas, httpx.AsyncHTTPTransport())
            try:
                response = httpx.post(served.url + "/generate_stream", json=body, timeout=CLIENT_TIMEOUT)
            finally:
                served.stop()
        finally:
            relay.close()
    events = sse_payloads(response.text)
    assert relay.cuts == 1 and second.requests_total == 1
    # One stream for the client: the first replica's tokens, then the rest from the other, no error event
    assert response.status_code == 200
    assert not [event for event in events if "error" in event]
    assert [event["token"]["text"] for event in events] == continued(prompt)


def test_with_one_replica_a_stream_whose_tgi_hangs_mid_way_ends_with_an_error_event() -> None:
    prompt = "What keeps a Spot endpoint alive?"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": BUDGET}}
    with running_emulator(token_delay=0.01) as alone:
        relay = StallingRelay(alone, after_events=CUT_AFTER)
        try:
            served = gateway(Replicas(Backend(relay.url, "i-stalls")), httpx.AsyncHTTPTransport())
            try:
                response = httpx.post(served.url + "/generate_stream", json=body, timeout=CLIENT_TIMEOUT)
            finally:
                served.stop()
        finally:
            relay.close()
    events = sse_payloads(response.text)
    assert response.status_code == 200 and relay.cuts == 1
    assert [event["token"]["text"] for event in events[:-1]] == expected_tokens(prompt, CUT_AFTER)
    assert events[-1]["error_type"] == "generation"
