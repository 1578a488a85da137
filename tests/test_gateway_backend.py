"""Finding the serving instance (state table, cached) and the one retry after an unreachable backend."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from spotkeeper.gateway.backend import (
    Backend,
    Resolution,
    ServingInstanceBackend,
    backend_url,
    read_serving_instance,
    state_table_backend,
)
from spotkeeper.gateway.errors import BackendUnavailable
from spotkeeper.gateway.upstream import TgiUpstream, new_client
from spotkeeper.settings import GatewaySettings
from spotkeeper.state import StateStore

GROUP = "spotkeeper-tgi"
OLD = Backend("http://10.0.0.1:8080", "i-old")
NEW = Backend("http://10.0.0.2:8080", "i-new")


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedTable:
    """Stands in for the table read: returns the scripted resolutions in order, counting reads."""

    def __init__(self, *results: Resolution | Exception) -> None:
        self.results = list(results)
        self.reads = 0

    def __call__(self) -> Resolution:
        self.reads += 1
        result = self.results[min(self.reads, len(self.results)) - 1]
        if isinstance(result, Exception):
            raise result
        return result


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_the_serving_instance_is_read_once_per_cache_period() -> None:
    clock, table = ManualClock(), ScriptedTable(Resolution(OLD), Resolution(NEW))
    resolver = ServingInstanceBackend(table, cache_seconds=5, retry_after_seconds=3, clock=clock)

    async def scenario() -> list[Backend]:
        seen = [await resolver.resolve(), await resolver.resolve()]
        clock.now += 5.1
        seen.append(await resolver.resolve())
        return seen

    assert run(scenario()) == [OLD, OLD, NEW]
    assert table.reads == 2


def test_a_failed_request_gets_a_resolution_made_after_its_failure_shared_by_concurrent_requests() -> None:
    clock, table = ManualClock(), ScriptedTable(Resolution(OLD), Resolution(NEW))
    resolver = ServingInstanceBackend(table, cache_seconds=60, retry_after_seconds=3, clock=clock)

    async def scenario() -> list[Backend]:
        await resolver.resolve()
        clock.now += 1
        failed_at = resolver.now()
        return list(await asyncio.gather(*(resolver.resolve(fresher_than=failed_at) for _ in range(5))))

    assert run(scenario()) == [NEW] * 5
    assert table.reads == 2


def test_no_serving_instance_is_unavailable_with_retry_after() -> None:
    resolver = ServingInstanceBackend(
        ScriptedTable(Resolution(None, "no serving instance: a failover is in progress")),
        cache_seconds=5,
        retry_after_seconds=7,
    )

    with pytest.raises(BackendUnavailable) as raised:
        run(resolver.resolve())

    assert raised.value.status_code == 503
    assert raised.value.headers() == {"Retry-After": "7"}
    assert "no serving instance" in raised.value.message


def test_an_unreachable_table_keeps_the_last_known_instance_and_is_retried_after_the_cache_period() -> None:
    clock = ManualClock()
    table = ScriptedTable(Resolution(OLD), RuntimeError("throttled"), Resolution(NEW))
    resolver = ServingInstanceBackend(table, cache_seconds=5, retry_after_seconds=3, clock=clock)

    async def scenario() -> list[Backend]:
        seen = [await resolver.resolve()]
        clock.now += 6
        seen.append(await resolver.resolve())  # the read fails: still the old instance
        seen.append(await resolver.resolve())  # no new read within the cache period
        clock.now += 6
        seen.append(await resolver.resolve())
        return seen

    assert run(scenario()) == [OLD, OLD, OLD, NEW]
    assert table.reads == 3


def test_an_unreachable_table_with_nothing_known_is_unavailable() -> None:
    resolver = ServingInstanceBackend(ScriptedTable(RuntimeError("no route")), cache_seconds=5, retry_after_seconds=3)

    with pytest.raises(BackendUnavailable, match="state table is unreachable"):
        run(resolver.resolve())


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("10.0.3.7", "http://10.0.3.7:8080"),
        ("fd00::7", "http://[fd00::7]:8080"),
        ("ip-10-0-3-7.ec2.internal", "http://ip-10-0-3-7.ec2.internal:8080"),
    ],
)
def test_backend_url_from_the_serving_address(address: str, url: str) -> None:
    assert backend_url(address, 8080) == url


@pytest.mark.parametrize("address", ["10.0.0.1/evil", "user@10.0.0.1", "", "a b"])
def test_backend_url_refuses_anything_but_an_address(address: str) -> None:
    with pytest.raises(ValueError, match="serving_address"):
        backend_url(address, 8080)


def test_read_serving_instance_from_the_state_table(aws: Any) -> None:
    from conftest import create_state_table

    table = create_state_table(aws, "state")
    store = StateStore(table)

    nobody = read_serving_instance(store, GROUP, 8080)
    store.set_serving(GROUP, "i-1", "10.0.1.5", time.time(), expected_version=0)
    serving = read_serving_instance(store, GROUP, 8080)
    store.set_serving(GROUP, "i-2", "10.0.1.6/x", time.time(), expected_version=1)
    unusable = read_serving_instance(store, GROUP, 8080)

    assert nobody.backend is None
    assert serving.backend == Backend("http://10.0.1.5:8080", "i-1")
    assert unusable.backend is None
    assert "unusable serving address" in unusable.reason

    # The gateway's resolver over the same table, its boto3 resource built on first use
    settings = GatewaySettings.model_validate({"GROUP_NAME": GROUP, "STATE_TABLE_NAME": "state", "TGI_PORT": "9000"})
    store.set_serving(GROUP, "i-3", "10.0.1.7", time.time(), expected_version=2)
    resolver = state_table_backend(settings)
    assert run(resolver.resolve()) == Backend("http://10.0.1.7:9000", "i-3")


class FlippingResolver:
    """The cached answer is the dead instance; a resolution fresher than the failure names the new one."""

    def __init__(self) -> None:
        self.calls: list[float | None] = []

    def now(self) -> float:
        return time.monotonic()

    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        self.calls.append(fresher_than)
        return OLD if fresher_than is None else NEW


def test_a_request_that_could_not_reach_tgi_is_retried_once_against_a_fresh_resolution() -> None:
    def tgi(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.1":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"generated_text": "from the new instance"})

    settings = GatewaySettings.model_validate({"TGI_URL": "http://unused:1"})
    resolver = FlippingResolver()

    async def scenario() -> tuple[int, bytes, str | None]:
        async with new_client(settings, httpx.MockTransport(tgi)) as client:
            upstream = await TgiUpstream(client, resolver, settings).open("POST", "/generate", {"inputs": "x"})
            body = await upstream.response.aread()
            await upstream.close()
            return upstream.response.status_code, body, upstream.backend.instance_id

    status, body, instance = run(scenario())

    assert (status, instance) == (200, "i-new")
    assert body == b'{"generated_text":"from the new instance"}'
    assert resolver.calls[0] is None
    assert resolver.calls[1] is not None


def test_a_second_failure_is_503_not_a_third_attempt() -> None:
    attempts: list[str] = []

    def tgi(request: httpx.Request) -> httpx.Response:
        attempts.append(str(request.url.host))
        raise httpx.ConnectError("connection refused", request=request)

    settings = GatewaySettings.model_validate({"TGI_URL": "http://unused:1", "RETRY_AFTER_SECONDS": "9"})

    async def scenario() -> None:
        async with new_client(settings, httpx.MockTransport(tgi)) as client:
            await TgiUpstream(client, FlippingResolver(), settings).open("GET", "/info")

    with pytest.raises(BackendUnavailable) as raised:
        run(scenario())

    assert attempts == ["10.0.0.1", "10.0.0.2"]
    assert raised.value.headers() == {"Retry-After": "9"}
