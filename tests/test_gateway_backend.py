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


# a warned replica stops getting requests within READY_SET_CHECK_SECONDS --------------------------------------


class DynamoCalls:
    """Counts the DynamoDB calls a table's client makes (botocore's before-call event)."""

    def __init__(self, table: Any) -> None:
        self.calls: list[str] = []
        table.meta.client.meta.events.register("before-call.dynamodb", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)


def play_traffic(
    aws: Any, replicas: int, *, seconds: float = 60.0, every: float = 0.1, warn_at: float = 30.05
) -> tuple[list[str], float | None]:
    """A request every ``every`` simulated seconds for ``seconds``, against the resolver over a real (moto)
    table with the default BACKEND_CACHE_SECONDS and READY_SET_CHECK_SECONDS; the primary is warned at
    ``warn_at``. Returns the DynamoDB calls made and how long after the warning a request first saw it."""
    from conftest import create_state_table

    from spotkeeper.records import ReplicaFacts

    table = create_state_table(aws, "state")
    store = StateStore(table)
    store.set_serving(GROUP, "i-a", "10.0.1.1", 1.0, expected_version=0)
    for n in range(replicas):
        store.join_ready_set(GROUP, ReplicaFacts(f"i-{'ab'[n]}", f"10.0.1.{n + 1}", "us-east-1a"), 1.0)
    clock = ManualClock()
    settings = GatewaySettings.model_validate({"GROUP_NAME": GROUP, "STATE_TABLE_NAME": "state"})
    assert (settings.backend_cache_seconds, settings.ready_set_check_seconds) == (5.0, 1.0)
    resolver = state_table_backend(settings, lambda: table, clock=clock)
    calls = DynamoCalls(table)
    start, seen_after = clock.now, None

    async def traffic() -> None:
        nonlocal seen_after
        warned = False
        for step in range(int(seconds / every)):
            clock.now = start + step * every
            if not warned and clock.now - start >= warn_at:
                store.mark_warned(GROUP, "i-a", clock.now)
                warned, warned_at = True, clock.now
            candidates = await resolver.candidates()
            primary = next(backend for backend in candidates if backend.instance_id == "i-a")
            if warned and primary.warned and seen_after is None:
                seen_after = clock.now - warned_at

    calls.calls.clear()
    run(traffic())
    return [call for call in calls.calls if call in ("GetItem", "Query")], seen_after


def test_a_warned_replica_is_seen_within_the_check_period_for_one_query_per_period(aws: Any) -> None:
    calls, seen_after = play_traffic(aws, replicas=2)

    # The warning is seen within READY_SET_CHECK_SECONDS (1 s), not BACKEND_CACHE_SECONDS (5 s)
    assert seen_after is not None and seen_after <= 1.0
    # What it costs over 60 s of traffic (600 requests): a full read (endpoint, ready set, serving instance:
    # 2 GetItem + 1 Query) every 5 s and once on the change; between them one Query per second at most.
    # (Measured: 12 full reads and 47 checks, 83 calls; a read per request would be 1,800, the cache alone 36
    # with the warning seen up to 5 s late.)
    full_reads = calls.count("GetItem") // 2
    checks = calls.count("Query") - full_reads
    assert full_reads <= 60 // 5 + 1
    assert checks > 0 and full_reads + checks <= 60


def test_with_one_replica_nothing_more_is_read_than_the_cache_reads(aws: Any) -> None:
    calls, _ = play_traffic(aws, replicas=1)
    assert calls.count("Query") == calls.count("GetItem") // 2 == 60 // 5


def test_a_check_that_fails_keeps_the_cached_set_until_the_next_period() -> None:
    clock = ManualClock()
    table = ScriptedTable(Resolution(OLD, replicas=(NEW,), fingerprint=(("i-new", "ready", None),)))
    checks: list[float] = []

    def check() -> Any:
        checks.append(clock.now)
        raise RuntimeError("throttled")

    resolver = ServingInstanceBackend(table, 60, 3, clock, check=check, check_seconds=1)

    async def scenario() -> tuple[Backend, ...]:
        await resolver.candidates()
        for _ in range(4):
            clock.now += 0.6
            candidates = await resolver.candidates()
        return candidates

    assert run(scenario()) == (OLD, NEW)
    assert table.reads == 1
    assert checks == pytest.approx([101.2, 102.4])  # once per period, failed or not
