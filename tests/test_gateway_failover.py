"""The serving instance dies mid-traffic and another becomes serving: what clients of the gateway see.

The gateway finds TGI through the state table (TGI_URL unset), in moto. Two emulators on different loopback
addresses, same port, stand for the old and the new instance's private IPs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gateway_harness import free_port, served_gateway, without_delayed_acks

from spotkeeper.settings import GatewaySettings
from spotkeeper.state import StateStore
from spotkeeper_local.tgi_emulator import TgiEmulator, expected_text, expected_tokens

GROUP = "spotkeeper-tgi"
TABLE = "spotkeeper-state"
OLD, NEW = "127.0.0.2", "127.0.0.3"
CONNECT_TIMEOUT = 0.5
CACHE_SECONDS = 0.5
TOKENS = 4


@dataclass
class Outcome:
    kind: str  # "ok" | "unavailable" | "broken_stream"
    started: float
    ended: float
    status: int
    detail: str = ""


@pytest.fixture
def table(aws: Any) -> Any:
    from conftest import create_state_table

    return create_state_table(aws, TABLE)


def shared_port() -> int:
    """A port free on both addresses: the instances differ by IP only, like TGI on TGI_PORT everywhere."""
    for _ in range(20):
        port = free_port(OLD)
        with socket.socket() as probe:
            try:
                probe.bind((NEW, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free on both loopback addresses")


@pytest.fixture
def instances() -> Iterator[tuple[TgiEmulator, TgiEmulator]]:
    port = shared_port()
    old = without_delayed_acks(TgiEmulator(host=OLD, port=port, token_delay=0.02))
    new = without_delayed_acks(TgiEmulator(host=NEW, port=port, token_delay=0.02, load_seconds=0.3))
    old.boot()
    assert old.wait_ready(5)
    try:
        yield old, new
    finally:
        old.stop()
        new.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until ``condition`` holds; the timeout only keeps a broken gateway from hanging the suite."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the gateway stopped making progress"
        time.sleep(0.02)


def one_request(client: httpx.Client, number: int) -> Outcome:
    prompt = f"request {number}"
    stream = number % 2 == 0
    started = time.monotonic()
    path = "/generate_stream" if stream else "/generate"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": TOKENS}}
    with client.stream("POST", path, json=body) as response:
        content = response.read().decode()
    ended = time.monotonic()
    if response.status_code == 503:
        assert response.headers["retry-after"] == "1"
        assert response.json()["error_type"] == "unavailable"
        return Outcome("unavailable", started, ended, 503, response.json()["error"])
    assert response.status_code == 200, content
    if not stream:
        assert response.json() == {"generated_text": expected_text(prompt, TOKENS)}
        return Outcome("ok", started, ended, 200)
    events = [json.loads(line[5:]) for line in content.splitlines() if line.startswith("data:")]
    tokens = [event["token"]["text"] for event in events if "token" in event]
    assert tokens == expected_tokens(prompt, len(tokens))
    if events and events[-1].get("error_type") == "generation":
        return Outcome("broken_stream", started, ended, 200, events[-1]["error"])
    assert events[-1]["generated_text"] == expected_text(prompt, TOKENS)
    return Outcome("ok", started, ended, 200)


@pytest.mark.slow
def test_clients_get_503_or_success_and_recover_once_the_table_names_the_new_instance(
    table: Any, instances: tuple[TgiEmulator, TgiEmulator]
) -> None:
    old, new = instances
    store = StateStore(table)
    assert store.set_serving(GROUP, "i-old", OLD, time.time(), expected_version=0)
    settings = GatewaySettings.model_validate(
        {
            "GROUP_NAME": GROUP,
            "STATE_TABLE_NAME": TABLE,
            "TGI_PORT": str(old.port),
            "BACKEND_CACHE_SECONDS": str(CACHE_SECONDS),
            "CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
            "RETRY_AFTER_SECONDS": "1",
        }
    )
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def traffic(worker: int, gateway_url: str) -> None:
        number = worker * 10_000
        with httpx.Client(base_url=gateway_url, timeout=10) as client:
            while not stop.is_set():
                number += 1
                try:
                    outcome = one_request(client, number)
                except BaseException as error:  # surfaced below, with the request that failed
                    failures.append(error)
                    return
                with lock:
                    outcomes.append(outcome)

    with served_gateway(settings) as gateway:
        workers = [threading.Thread(target=traffic, args=(n, gateway.url), daemon=True) for n in range(3)]
        for worker in workers:
            worker.start()
        # Once clients are being served by the old instance
        wait_for(lambda: any(outcome.kind == "ok" for outcome in outcomes))

        # When Spot reclaims the serving instance while the replacement is still loading its model
        killed_at = time.monotonic()
        old.kill()
        new.boot()
        assert new.wait_ready(5)
        # the lifecycle hook has not moved the endpoint yet: clients get 503s meanwhile
        wait_for(lambda: any(outcome.kind == "unavailable" for outcome in outcomes))
        # and then the table names the new instance
        assert store.set_serving(GROUP, "i-new", NEW, time.time(), expected_version=1)
        switched_at = time.monotonic()
        wait_for(lambda: sum(1 for outcome in outcomes if outcome.started > switched_at) >= 5)
        stop.set()
        for worker in workers:
            worker.join(15)
        health = httpx.get(f"{gateway.url}/health", timeout=5).json()

    kinds = {
        kind: sum(1 for outcome in outcomes if outcome.kind == kind) for kind in ("ok", "unavailable", "broken_stream")
    }
    print("failover outcomes:", kinds)
    assert not failures, failures[0]
    # Then every request ended, none hung: as a success, a 503 with Retry-After, or a stream the dying instance
    # broke (with TGI's error event). How long the worst one took is measured by `make bench` (failover).
    assert all(not worker.is_alive() for worker in workers)
    assert {outcome.kind for outcome in outcomes} <= {"ok", "unavailable", "broken_stream"}
    assert any(outcome.kind == "ok" and outcome.ended < killed_at for outcome in outcomes)
    # ...no request failed before the instance was killed
    assert all(outcome.ended > killed_at for outcome in outcomes if outcome.kind != "ok")
    # and once the table names the new instance, everything succeeds, served by it
    after = [outcome for outcome in outcomes if outcome.started > switched_at]
    assert len(after) >= 5
    assert all(outcome.kind == "ok" for outcome in after)
    assert new.requests_served >= len(after)
    assert health == {"gateway": "ok", "backend": "ok", "serving_instance_id": "i-new"}


def test_no_serving_instance_and_draining_instance_are_503(
    table: Any, instances: tuple[TgiEmulator, TgiEmulator]
) -> None:
    old, _ = instances
    store = StateStore(table)
    settings = GatewaySettings.model_validate(
        {"GROUP_NAME": GROUP, "STATE_TABLE_NAME": TABLE, "TGI_PORT": str(old.port), "BACKEND_CACHE_SECONDS": "0"}
    )
    with served_gateway(settings) as gateway, httpx.Client(base_url=gateway.url, timeout=5) as client:
        # No serving instance recorded yet
        nobody = client.post("/generate", json={"inputs": "hi"})
        # A serving instance
        assert store.set_serving(GROUP, "i-old", OLD, time.time(), expected_version=0)
        served = client.post("/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}})
        # The same instance, now draining (its terminating lifecycle hook is running)
        assert store.mark_draining(GROUP, "i-old", time.time())
        draining = client.post("/generate", json={"inputs": "hi"})

    assert nobody.status_code == 503
    assert "no serving instance" in nobody.json()["error"]
    assert nobody.headers["retry-after"] == "5"
    assert served.status_code == 200
    assert served.json() == {"generated_text": expected_text("hi", 2)}
    assert draining.status_code == 503
    assert "draining" in draining.json()["error"]
