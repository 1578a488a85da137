"""Hedged replicas through the gateway: least outstanding work, warned replicas, retry, stream resume.

Replicas are TGI emulators on loopback (greedy decoding, deterministic). A broken stream is made by a relay in
front of one replica that drops the connection after k SSE events, as when Spot reclaims the instance under
a generation; the rest of the generation must come from the other replica, with no text repeated or missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from spotkeeper.gateway import upstream as upstream_module
from spotkeeper.gateway.backend import Backend
from spotkeeper.gateway.upstream import TgiUpstream
from spotkeeper.records import ReplicaFacts
from spotkeeper.settings import GatewaySettings
from spotkeeper.state import StateStore
from spotkeeper_local.tgi_emulator import (
    TgiEmulator,
    count_tokens,
    expected_chat_text,
    expected_text,
    expected_tokens,
    render_chat_prompt,
)
from tests.gateway_harness import free_port, gateway_settings, running_emulator, served_gateway, without_delayed_acks

BUDGET = 12
CUT_AFTER = 5


class Replicas:
    """A resolver over a list of backends the test changes at will (the ready set, without a table)."""

    def __init__(self, *backends: Backend) -> None:
        self.backends = list(backends)
        self.fresh_reads = 0

    def now(self) -> float:
        return time.monotonic()

    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        return (await self.candidates(fresher_than=fresher_than))[0]

    async def candidates(self, *, fresher_than: float | None = None) -> tuple[Backend, ...]:
        self.fresh_reads += fresher_than is not None
        return tuple(self.backends)


class CuttingRelay:
    """A TCP relay in front of one replica that drops the connection after ``after_events`` SSE events of its
    first stream (the instance reclaimed mid-generation); everything else passes through."""

    def __init__(self, target: TgiEmulator, after_events: int) -> None:
        self._target = target
        self._after = after_events
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self._target.host, self._target.port)

        async def requests() -> None:
            with _quietly():
                while data := await reader.read(65536):
                    upstream_writer.write(data)
                    await upstream_writer.drain()

        forwarding = asyncio.create_task(requests())
        events = 0
        try:
            while data := await upstream_reader.read(65536):
                if self.cuts == 0:
                    for position in _event_ends(data):
                        events += 1
                        if events == self._after:
                            self.cuts += 1
                            writer.write(data[:position])
                            await writer.drain()
                            return
                writer.write(data)
                await writer.drain()
        finally:
            forwarding.cancel()
            for stream in (writer, upstream_writer):
                with _quietly():
                    stream.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _event_ends(data: bytes) -> Iterator[int]:
    """Where each SSE event in ``data`` ends (just after its blank line)."""
    start = 0
    while (found := data.find(b"\n\n", start)) >= 0:
        start = found + 2
        yield start


def _quietly() -> contextlib.suppress:
    return contextlib.suppress(OSError, asyncio.CancelledError)  # connection teardown


def sse_payloads(text: str) -> list[Any]:
    return [
        "[DONE]" if line[5:].strip() == "[DONE]" else json.loads(line[5:])
        for line in text.splitlines()
        if line.startswith("data:")
    ]


def emf_for(capsys: pytest.CaptureFixture[str], route: str) -> dict[str, Any]:
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for line in capsys.readouterr().out.splitlines():
            if line.startswith('{"_aws"') and json.loads(line).get("Route") == route:
                return json.loads(line)
        time.sleep(0.02)
    raise AssertionError(f"no EMF record for {route}")


class _FirstOfTies:
    """Stands in for the gateway's random tie break: the first candidate the test lists goes first."""

    def choice(self, options: list[Any]) -> Any:
        return options[0]


@pytest.fixture(autouse=True)
def ordered_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests say which replica takes the first request (the one a relay cuts); the spread of ties is
    tested apart, with the gateway's own random start."""
    monkeypatch.setattr(upstream_module, "random", SimpleNamespace(Random=_FirstOfTies))


@pytest.fixture
def two() -> Iterator[tuple[TgiEmulator, TgiEmulator]]:
    with running_emulator(token_delay=0.01) as first, running_emulator(token_delay=0.01) as second:
        yield first, second


@pytest.fixture
def relay(two: tuple[TgiEmulator, TgiEmulator]) -> Iterator[CuttingRelay]:
    cutting = CuttingRelay(two[0], after_events=CUT_AFTER)
    yield cutting
    cutting.close()


def settings() -> GatewaySettings:
    return gateway_settings("http://127.0.0.1:9", MAX_NEW_TOKENS=64, CONNECT_TIMEOUT_SECONDS=1)


# resume --------------------------------------------------------------------------------------------------


def continued(prompt: str) -> list[str]:
    """What the client must see: the first replica's first CUT_AFTER tokens, then what the second replica
    generates for the prompt plus that text with the budget left. With greedy decoding that is one generation."""
    first = expected_tokens(prompt, CUT_AFTER)
    return first + expected_tokens(prompt + "".join(first), BUDGET - CUT_AFTER)


def test_a_tgi_stream_broken_mid_way_is_resumed_on_another_replica(
    two: tuple[TgiEmulator, TgiEmulator], relay: CuttingRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = two
    replicas = Replicas(Backend(relay.url, "i-first"), Backend(second.url, "i-second"))
    prompt = "What keeps a Spot endpoint alive?"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": BUDGET, "details": True}}
    with served_gateway(settings(), replicas) as gateway:
        response = httpx.post(f"{gateway.url}/generate_stream", json=body, timeout=10)

    events = sse_payloads(response.text)
    # The stream did break on the first replica, after CUT_AFTER tokens
    assert relay.cuts == 1 and first.requests_total == 1 and second.requests_total == 1
    # and the client saw one stream: every token once, in order, numbered 1..BUDGET, one final event
    assert response.status_code == 200
    assert not [event for event in events if "error" in event]
    assert [event["token"]["text"] for event in events] == continued(prompt)
    assert [event["index"] for event in events] == list(range(1, BUDGET + 1))
    final = events[-1]
    assert final["generated_text"] == "".join(continued(prompt))
    assert final["details"]["generated_tokens"] == BUDGET
    assert all(event["generated_text"] is None for event in events[:-1])
    record = emf_for(capsys, "/generate_stream")
    assert record["GatewayResumes"] == [1.0] and record["GatewayErrors"] == [0.0]
    assert record["TokensOut"] == [float(BUDGET)]


def test_an_openai_completion_stream_broken_mid_way_is_resumed(
    two: tuple[TgiEmulator, TgiEmulator], relay: CuttingRelay
) -> None:
    _, second = two
    replicas = Replicas(Backend(relay.url, "i-first"), Backend(second.url, "i-second"))
    prompt = "Spot capacity"
    body = {"prompt": prompt, "max_tokens": BUDGET, "stream": True, "temperature": 0}
    with served_gateway(settings(), replicas) as gateway:
        response = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=10)

    events = sse_payloads(response.text)
    assert relay.cuts == 1
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = events[:-1]
    assert not [chunk for chunk in chunks if "error" in chunk]
    assert [chunk["choices"][0]["text"] for chunk in chunks] == continued(prompt)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == BUDGET


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What keeps Spot alive?"}]


def chat_stream(url: str, **fields: Any) -> tuple[list[Any], str]:
    body = {"model": "tgi", "messages": CHAT, "max_tokens": BUDGET, "stream": True, **fields}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    return sse_payloads(response.text), response.text


def chunk_texts(events: list[Any]) -> list[str]:
    return [event["choices"][0]["delta"]["content"] for event in events if event != "[DONE]" and event["choices"]]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {}], ids=["greedy", "sampled-without-seed"])
def test_a_chat_stream_broken_mid_way_is_resumed_through_the_chat_template(
    two: tuple[TgiEmulator, TgiEmulator],
    relay: CuttingRelay,
    capsys: pytest.CaptureFixture[str],
    sampling: dict[str, Any],
) -> None:
    first, second = two
    # What an unbroken stream gives (the emulator's decoding is greedy, sampled or not)
    unbroken, _ = chat_stream(first.url, **sampling)
    replicas = Replicas(Backend(relay.url, "i-first"), Backend(second.url, "i-second"))
    with served_gateway(settings(), replicas) as gateway:
        events, raw = chat_stream(gateway.url, **sampling)

    # The stream did break on the first replica after CUT_AFTER chunks, and went on on the second: its chat
    # template (/chat_tokenize), the tokenizer check (/tokenize), then one plain generation
    assert relay.cuts == 1
    assert second.requests_total == 2  # /chat_tokenize counts as a request in TGI, the generation is the other
    # The client saw one stream: the unbroken stream's chunks, text and finish reason, one [DONE], no error
    assert not [event for event in events if event != "[DONE]" and "error" in event]
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert chunk_texts(events) == chunk_texts(unbroken) == expected_tokens(render_chat_prompt(CHAT), BUDGET)
    assert [event["choices"][0]["finish_reason"] for event in events[:-1]] == [None] * (BUDGET - 1) + ["length"]
    # every chunk with the first stream's id, model and object; `created` is stamped per chunk by TGI (and the
    # emulator), so it may step across a second boundary, never back
    envelopes = {(e["object"], e["id"], e["model"], e["system_fingerprint"]) for e in events[:-1]}
    assert len(envelopes) == 1
    created = [e["created"] for e in events[:-1]]
    assert created == sorted(created) and created[-1] - created[0] <= 60
    assert {key for event in events[:-1] for key in event} == {key for event in unbroken[:-1] for key in event}
    assert "\n\n\n" not in raw  # events framed as TGI frames them
    record = emf_for(capsys, "/v1/chat/completions")
    assert record["GatewayResumes"] == [1.0] and record["GatewayErrors"] == [0.0]
    assert record["TokensOut"] == [float(BUDGET)]


def test_a_resumed_chat_stream_reports_the_usage_of_the_whole_generation(
    two: tuple[TgiEmulator, TgiEmulator], relay: CuttingRelay
) -> None:
    _, second = two
    replicas = Replicas(Backend(relay.url, "i-first"), Backend(second.url, "i-second"))
    with served_gateway(settings(), replicas) as gateway:
        events, _ = chat_stream(gateway.url, temperature=0, stream_options={"include_usage": True})

    assert relay.cuts == 1
    assert "".join(chunk_texts(events)) == expected_chat_text(CHAT, BUDGET)
    # TGI's chat route sends the usage in its own chunk (no choices) before [DONE]
    usage = events[-2]
    assert usage["choices"] == [] and events[-1] == "[DONE]"
    prompt_tokens = count_tokens(render_chat_prompt(CHAT))
    assert usage["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": BUDGET,
        "total_tokens": prompt_tokens + BUDGET,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"response_format": {"type": "json_object", "value": {"type": "object"}}},
        {"logprobs": True},
        {"seed": 7},
        {"seed": 7, "temperature": 0.7},
    ],
    ids=["tools", "grammar", "logprobs", "seed-sampled", "seed-temperature"],
)
def test_a_chat_stream_that_cannot_be_continued_exactly_ends_with_an_error_event(
    two: tuple[TgiEmulator, TgiEmulator], relay: CuttingRelay, fields: dict[str, Any]
) -> None:
    _, second = two
    replicas = Replicas(Backend(relay.url, "i-first"), Backend(second.url, "i-second"))
    with served_gateway(settings(), replicas) as gateway:
        events, _ = chat_stream(gateway.url, **fields)

    assert relay.cuts == 1 and second.requests_total == 0
    assert len(events) == CUT_AFTER + 1
    assert events[-1]["error_type"] == "generation" and "retry" in events[-1]["error"]


def test_a_greedy_seeded_chat_stream_is_resumed(two: tuple[TgiEmulator, TgiEmulator], relay: CuttingRelay) -> None:
    _, second = two
    replicas = Replicas(Backend(relay.url, "i-first"), Backend(second.url, "i-second"))
    with served_gateway(settings(), replicas) as gateway:
        events, _ = chat_stream(gateway.url, temperature=0, seed=7)

    assert relay.cuts == 1
    assert "".join(chunk_texts(events)) == expected_chat_text(CHAT, BUDGET, seed=7)


def test_with_one_replica_a_broken_stream_ends_with_an_error_event(relay: CuttingRelay) -> None:
    replicas = Replicas(Backend(relay.url, "i-only"))
    body = {"inputs": "alone", "parameters": {"max_new_tokens": BUDGET}}
    with served_gateway(settings(), replicas) as gateway:
        response = httpx.post(f"{gateway.url}/generate_stream", json=body, timeout=10)

    events = sse_payloads(response.text)
    assert [event["token"]["text"] for event in events[:-1]] == expected_tokens("alone", CUT_AFTER)
    # Its own event (a blank line before it), not glued to the last token's
    assert events[-1]["error_type"] == "generation"
    error_at = response.text.index('data: {"error"')
    assert response.text[error_at - 2 : error_at] == "\n\n"


# routing -------------------------------------------------------------------------------------------------


def test_each_request_goes_to_the_replica_with_the_least_outstanding_work() -> None:
    with (
        running_emulator(token_delay=0.05) as first,
        running_emulator(token_delay=0.05) as second,
        served_gateway(settings(), Replicas(Backend(first.url, "i-a"), Backend(second.url, "i-b"))) as gateway,
        httpx.Client(base_url=gateway.url, timeout=10) as client,
    ):
        short = {"inputs": "short", "parameters": {"max_new_tokens": 1}}
        # Given a long generation in flight (it goes to the first replica: nothing outstanding anywhere)
        with client.stream("POST", "/generate_stream", json={"inputs": "long", "parameters": {"max_new_tokens": 40}}):
            # When two short requests come while it runs
            client.post("/generate", json=short)
            client.post("/generate", json=short)
            # Then both went to the other replica
            during = (first.requests_total, second.requests_total)
        # and once nothing is outstanding, the replica picked longest ago takes the next one
        client.post("/generate", json=short)
        after = (first.requests_total, second.requests_total)
    assert during == (1, 2)
    assert after == (2, 2)


def test_a_warned_replica_gets_no_new_request_unless_it_is_the_only_one() -> None:
    with (
        running_emulator() as warned,
        running_emulator() as ready,
    ):
        replicas = Replicas(Backend(warned.url, "i-warned", warned=True), Backend(ready.url, "i-ready"))
        with served_gateway(settings(), replicas) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as c:
            statuses = [c.post("/generate", json={"inputs": f"q{n}"}).status_code for n in range(4)]
            counts = (warned.requests_total, ready.requests_total)
            # One replica left, warned: it keeps serving until its replacement is ready, as before
            replicas.backends = [Backend(warned.url, "i-warned", warned=True)]
            time.sleep(0.01)
            alone = c.post("/generate", json={"inputs": "alone"})
    assert statuses == [200] * 4
    assert counts == (0, 4)
    assert alone.status_code == 200 and warned.requests_total == 1


def test_a_request_that_cannot_reach_a_replica_is_retried_once_on_another(capsys: pytest.CaptureFixture[str]) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    with running_emulator() as ready:
        replicas = Replicas(Backend(gone, "i-gone"), Backend(ready.url, "i-ready"))
        with served_gateway(settings(), replicas) as gateway:
            response = httpx.post(
                f"{gateway.url}/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=10
            )
    assert response.status_code == 200
    assert ready.requests_total == 1
    assert replicas.fresh_reads == 1  # the failure invalidated the cached ready set
    record = emf_for(capsys, "/generate")
    assert record["GatewayRetries"] == [1.0]
    assert "GatewayResumes" not in record


# the ready set in the state table --------------------------------------------------------------------------

A, B = "127.0.0.2", "127.0.0.3"


def test_the_gateway_follows_the_ready_set_in_the_state_table(aws: Any) -> None:
    from conftest import create_state_table

    store = StateStore(create_state_table(aws, "state"))
    port = free_port(A)
    first = without_delayed_acks(TgiEmulator(host=A, port=port)).boot()
    second = without_delayed_acks(TgiEmulator(host=B, port=port)).boot()
    try:
        assert first.wait_ready(5) and second.wait_ready(5)
        # Given two ready replicas, the first one the primary
        store.set_serving("g", "i-a", A, 1.0, expected_version=0)
        store.join_ready_set("g", ReplicaFacts("i-a", A, "us-east-1a"), 1.0)
        store.join_ready_set("g", ReplicaFacts("i-b", B, "us-east-1b"), 1.0)
        values = {"GROUP_NAME": "g", "STATE_TABLE_NAME": "state", "TGI_PORT": str(port)}
        table_settings = GatewaySettings.model_validate({**values, "BACKEND_CACHE_SECONDS": "0"})
        with served_gateway(table_settings) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as client:
            for n in range(4):
                assert client.post("/generate", json={"inputs": f"q{n}"}).status_code == 200
            both = (first.requests_total, second.requests_total)
            # When the primary is warned
            store.mark_warned("g", "i-a", 2.0)
            for n in range(4):
                assert client.post("/generate", json={"inputs": f"w{n}"}).status_code == 200
            warned = (first.requests_total, second.requests_total)
    finally:
        first.stop()
        second.stop()
    # Then requests were spread over both, and none went to the warned replica once the table said so
    assert both == (2, 2)
    assert warned == (2, 6)


def test_a_generation_cut_by_a_dying_replica_is_answered_by_another(capsys: pytest.CaptureFixture[str]) -> None:
    from spotkeeper_local.tgi_emulator import expected_text

    body = {"inputs": "long answer", "parameters": {"max_new_tokens": 20}}
    with running_emulator(token_delay=0.05) as dying, running_emulator() as other:
        replicas = Replicas(Backend(dying.url, "i-dying"), Backend(other.url, "i-other"))
        with served_gateway(settings(), replicas) as gateway:
            answer: dict[str, httpx.Response] = {}
            worker = threading.Thread(
                target=lambda: answer.update(ok=httpx.post(f"{gateway.url}/generate", json=body, timeout=10))
            )
            worker.start()
            # When the replica is reclaimed in the middle of the (non-streamed) generation
            deadline = time.monotonic() + 5
            while dying.in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            dying.kill()
            worker.join(10)
    # Then the client, which had received nothing yet (TGI sends /generate's headers with its body), got the whole
    # answer from the other replica
    assert answer["ok"].status_code == 200
    assert answer["ok"].json() == {"generated_text": expected_text("long answer", 20)}
    assert other.requests_total == 1
    assert emf_for(capsys, "/generate")["GatewayRetries"] == [1.0]


# overloaded replicas (TGI's 429) -------------------------------------------------------------------------------


@contextlib.contextmanager
def overloaded(emulator: TgiEmulator) -> Iterator[None]:
    """The replica's only permit (max_concurrent_requests=1) held by a client that is not the gateway's, so the
    gateway, which sees nothing outstanding there, still gets "Model is overloaded"."""
    long = {"inputs": "busy", "parameters": {"max_new_tokens": 200}}
    with httpx.Client(timeout=10) as direct, direct.stream("POST", f"{emulator.url}/generate_stream", json=long):
        deadline = time.monotonic() + 5
        while emulator.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emulator.in_flight == 1
        yield


@pytest.fixture
def busy_and_free() -> Iterator[tuple[TgiEmulator, TgiEmulator]]:
    with (
        running_emulator(max_concurrent_requests=1, token_delay=0.05) as busy,
        running_emulator() as free,
    ):
        yield busy, free


ROUTES = {
    "/generate": ({"inputs": "q", "parameters": {"max_new_tokens": 3}}, False),
    "/generate_stream": ({"inputs": "q", "parameters": {"max_new_tokens": 3}}, True),
    "/v1/chat/completions": ({"messages": CHAT, "max_tokens": 3, "stream": True}, True),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_a_request_an_overloaded_replica_refuses_is_retried_once_on_another(
    busy_and_free: tuple[TgiEmulator, TgiEmulator], route: str, capsys: pytest.CaptureFixture[str]
) -> None:
    busy, free = busy_and_free
    body, stream = ROUTES[route]
    replicas = Replicas(Backend(busy.url, "i-busy"), Backend(free.url, "i-free"))
    with served_gateway(settings(), replicas) as gateway, overloaded(busy):
        response = httpx.post(f"{gateway.url}{route}", json=body, timeout=10)
        refused = busy.requests_total - 1

    # The busy replica refused it (its 429: a JSON answer, or a stream's first event), the free one answered
    assert refused == 1 and free.requests_total == 1
    assert response.status_code == 200
    if stream:
        events = sse_payloads(response.text)
        assert not [event for event in events if event != "[DONE]" and "error" in event]
        assert len([event for event in events if event != "[DONE]"]) == 3
    else:
        assert response.json() == {"generated_text": expected_text("q", 3)}
    record = emf_for(capsys, route)
    assert record["GatewayRetries"] == [1.0] and record["GatewayErrors"] == [0.0]
    assert replicas.fresh_reads == 0  # an overloaded replica is alive: no table read


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("other", ["none", "warned"])
def test_an_overloaded_replica_with_no_other_ready_one_answers_tgis_429(
    busy_and_free: tuple[TgiEmulator, TgiEmulator], route: str, other: str
) -> None:
    busy, free = busy_and_free
    body, stream = ROUTES[route]
    backends = [Backend(busy.url, "i-busy")] + ([Backend(free.url, "i-free", warned=True)] if other == "warned" else [])
    with served_gateway(settings(), Replicas(*backends)) as gateway, overloaded(busy):
        response = httpx.post(f"{gateway.url}{route}", json=body, timeout=10)

    assert free.requests_total == 0
    overload = {"error": "Model is overloaded", "error_type": "overloaded"}
    if stream:  # TGI streams answer 200 and send the error as their first event
        assert response.status_code == 200
        assert sse_payloads(response.text)[0] == overload
    else:
        assert response.status_code == 429 and response.json() == overload


# light load: ties --------------------------------------------------------------------------------------------


REPLICAS = (Backend("http://10.0.0.1:8080", "i-a"), Backend("http://10.0.0.2:8080", "i-b"))


@functools.cache
def unused_client() -> httpx.AsyncClient:
    return httpx.AsyncClient()  # picking a replica sends nothing (and a client per process costs ~0.1 s)


def fresh_upstream(rng: random.Random, clock: Any = time.monotonic) -> TgiUpstream:
    """The upstream of a new gateway process."""
    return TgiUpstream(unused_client(), Replicas(*REPLICAS), settings(), rng=rng, clock=clock)


def test_at_light_load_new_processes_spread_their_first_requests_over_the_replicas() -> None:
    # Each Lambda execution environment serves one request at a time: nothing is ever outstanding there, and
    # many environments serve only a few requests. 1,000 of them, one request each:
    rng = random.Random(12)
    firsts = Counter(fresh_upstream(rng).pick(REPLICAS).instance_id for _ in range(1000))  # type: ignore[union-attr]
    assert 400 <= firsts["i-a"] <= 600 and firsts["i-a"] + firsts["i-b"] == 1000


def test_within_a_process_ties_go_round_robin() -> None:
    upstream = fresh_upstream(random.Random(3))
    picks = [upstream.pick(REPLICAS).instance_id for _ in range(10)]  # type: ignore[union-attr]
    assert Counter(picks) == {"i-a": 5, "i-b": 5}
    assert all(first != second for first, second in itertools.pairwise(picks))


def test_ties_are_broken_among_the_least_loaded_only() -> None:
    third = Backend("http://10.0.0.3:8080", "i-c")
    upstream = fresh_upstream(random.Random(5))
    upstream._acquire(REPLICAS[0].url)  # one request in flight on i-a
    picks = Counter(upstream.pick((*REPLICAS, third)).instance_id for _ in range(20))  # type: ignore[union-attr]
    assert picks == {"i-b": 10, "i-c": 10}


# a replica that cannot be reached ------------------------------------------------------------------------------


def test_a_replica_that_could_not_be_reached_is_avoided_for_retry_after_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    with running_emulator() as ready:
        # The table still lists the replica (reclaimed without warning; the health checks have not noticed)
        replicas = Replicas(Backend(gone, "i-gone"), Backend(ready.url, "i-ready"))
        with served_gateway(settings(), replicas) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as c:
            statuses = [c.post("/generate", json={"inputs": f"q{n}"}).status_code for n in range(6)]
    assert statuses == [200] * 6 and ready.requests_total == 6
    # Only the first request tried it (and read the table again); the five after went straight to the other
    assert replicas.fresh_reads == 1


def test_an_avoided_replica_is_picked_again_after_retry_after_seconds() -> None:
    now = [100.0]
    upstream = fresh_upstream(random.Random(1), clock=lambda: now[0])
    upstream._unreachable(REPLICAS[0])
    during = Counter(upstream.pick(REPLICAS).instance_id for _ in range(4))  # type: ignore[union-attr]
    alone = upstream.pick(REPLICAS[:1])  # the last resort when nothing else is left
    now[0] += settings().retry_after_seconds
    after = Counter(upstream.pick(REPLICAS).instance_id for _ in range(4))  # type: ignore[union-attr]
    assert during == {"i-b": 4} and alone == REPLICAS[0]
    assert after == {"i-a": 2, "i-b": 2}


# a warned replica, with a long cache ---------------------------------------------------------------------------


def test_a_warned_replica_gets_no_request_once_the_ready_set_says_so_whatever_the_cache(aws: Any) -> None:
    from conftest import create_state_table

    store = StateStore(create_state_table(aws, "state"))
    port = free_port(A)
    first = without_delayed_acks(TgiEmulator(host=A, port=port)).boot()
    second = without_delayed_acks(TgiEmulator(host=B, port=port)).boot()
    try:
        assert first.wait_ready(5) and second.wait_ready(5)
        store.set_serving("g", "i-a", A, 1.0, expected_version=0)
        store.join_ready_set("g", ReplicaFacts("i-a", A, "us-east-1a"), 1.0)
        store.join_ready_set("g", ReplicaFacts("i-b", B, "us-east-1b"), 1.0)
        values = {"GROUP_NAME": "g", "STATE_TABLE_NAME": "state", "TGI_PORT": str(port)}
        # The whole resolution cached for 5 minutes; the ready set checked on every request
        cached = GatewaySettings.model_validate(
            {**values, "BACKEND_CACHE_SECONDS": "300", "READY_SET_CHECK_SECONDS": "0"}
        )
        with served_gateway(cached) as gateway, httpx.Client(base_url=gateway.url, timeout=10) as client:
            for n in range(4):
                assert client.post("/generate", json={"inputs": f"q{n}"}).status_code == 200
            both = (first.requests_total, second.requests_total)
            store.mark_warned("g", "i-a", 2.0)
            for n in range(4):
                assert client.post("/generate", json={"inputs": f"w{n}"}).status_code == 200
            warned = (first.requests_total, second.requests_total)
    finally:
        first.stop()
        second.stop()
    assert both == (2, 2)
    assert warned == (2, 6)
