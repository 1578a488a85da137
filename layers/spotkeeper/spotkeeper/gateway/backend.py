"""Which TGI replicas the gateway talks to: a fixed URL, or the ready set and primary in the state table.

The state table is read at most once per BACKEND_CACHE_SECONDS per process; a request that could not reach
a cached replica asks for a resolution made after its failure (``fresher_than``), so during a failover the
gateway follows the table within one retry, while concurrent failing requests share a single table read.

A warned replica must stop getting requests at once, but it still answers (the Spot warning comes two minutes
before the reclaim), so no failure tells the gateway: only the table does. Between full reads, when the cached
set has two or more candidates, the ready set's records alone (one strongly consistent Query, ~1 read unit)
are read again at most once per READY_SET_CHECK_SECONDS (default 1 s); only if they changed (a replica warned,
gone or joined) is the whole resolution read again. The trade-off, per gateway process and only while requests
come: a warned replica gets requests for at most READY_SET_CHECK_SECONDS plus one Query's latency after the
table says so (instead of BACKEND_CACHE_SECONDS), for at most one Query per READY_SET_CHECK_SECONDS (86,400
a day at 1 s, about $0.01 at on-demand's $0.125 per million read units). A read per request would cost a
DynamoDB round trip (several ms) on every request; a push to the gateway has no channel to Lambda's
execution environments. With one replica (Replicas = 1) there is nothing to choose from, and nothing is read.

A resolution lists the candidates, the primary (the instance holding the Elastic IP) first: the ready set's
replicas, each flagged ``warned`` once a Spot warning or rebalance recommendation named it. The upstream
picks among them; a warned replica only gets requests when no other is there (one replica: it keeps serving
until its replacement is ready, as before the ready set existed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio.to_thread

from spotkeeper.gateway.errors import BackendUnavailable
from spotkeeper.observability import logger
from spotkeeper.records import READY, WARNED, Replica
from spotkeeper.settings import GatewaySettings
from spotkeeper.state import StateStore

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Backend:
    url: str
    instance_id: str | None = None
    warned: bool = False  # a Spot warning or rebalance recommendation named it: a last resort only


ReadySetFingerprint = tuple[tuple[str, str, str | None], ...]


def ready_set_fingerprint(replicas: list[Replica]) -> ReadySetFingerprint:
    """What of the replica records decides routing: each one's state and address."""
    return tuple(sorted((replica.instance_id, replica.state, replica.address) for replica in replicas))


@dataclass(frozen=True)
class Resolution:
    backend: Backend | None  # the primary, when it can serve
    reason: str = ""
    replicas: tuple[Backend, ...] = ()  # the other replicas of the ready set
    fingerprint: ReadySetFingerprint | None = None  # the replica records it was made from

    @property
    def candidates(self) -> tuple[Backend, ...]:
        """Every backend a request may go to, the primary first."""
        return ((self.backend,) if self.backend is not None else ()) + self.replicas


class BackendResolver(Protocol):
    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        """The backend to use; raises BackendUnavailable when there is none.

        A resolver that knows several replicas also has ``candidates(fresher_than=...)``: every backend a
        request may go to, the primary first (``TgiUpstream`` uses it when it is there).
        """

    def now(self) -> float:
        """The resolver's clock, for ``fresher_than``."""


class FixedBackend:
    """TGI_URL: local runs and tests, or a deployment that fronts a single fixed address."""

    def __init__(self, url: str) -> None:
        self._backend = Backend(url=url.rstrip("/"))

    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        return self._backend

    async def candidates(self, *, fresher_than: float | None = None) -> tuple[Backend, ...]:
        return (self._backend,)

    def now(self) -> float:
        return time.monotonic()


def backend_url(address: str, port: int) -> str:
    """``http://<address>:<port>`` for the serving instance's private address, refusing anything else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if not _HOSTNAME.match(address):
            raise ValueError(f"serving_address {address!r} is neither an IP address nor a host name") from None
        return f"http://{address}:{port}"
    return f"http://[{ip}]:{port}" if ip.version == 6 else f"http://{ip}:{port}"


def read_serving_instance(store: StateStore, group: str, port: int) -> Resolution:
    """The primary and the ready set from the state table.

    The primary is the serving instance as recorded (unless it is draining), whether or not it is in the
    ready set (a table written before the ready set existed still works); if the set says it is warned or
    gone it is flagged warned, a last resort.
    """
    endpoint = store.get_endpoint(group)
    records = store.replicas(group)
    replicas = {replica.instance_id: replica for replica in records}
    primary: Backend | None = None
    reason = ""
    if not endpoint.serving_instance_id or not endpoint.serving_address:
        reason = "no serving instance: a failover is in progress"
    elif store.get_instance(group, endpoint.serving_instance_id).draining_since is not None:
        reason = "the serving instance is draining: a failover is in progress"
    else:
        try:
            url = backend_url(endpoint.serving_address, port)
        except ValueError as error:
            reason = f"the state table names an unusable serving address ({error})"
        else:
            recorded = replicas.get(endpoint.serving_instance_id)
            leaving = recorded is not None and recorded.state != READY
            primary = Backend(url, endpoint.serving_instance_id, warned=leaving)
    others = []
    for replica in sorted(replicas.values(), key=lambda r: r.instance_id):
        if replica.instance_id == endpoint.serving_instance_id or not replica.in_set:
            continue
        assert replica.address is not None
        try:
            others.append(Backend(backend_url(replica.address, port), replica.instance_id, replica.state == WARNED))
        except ValueError:
            logger.warning("ready set names an unusable address", extra={"instance_id": replica.instance_id})
    return Resolution(primary, reason, tuple(others), ready_set_fingerprint(records))


class ServingInstanceBackend:
    """The serving instance from the state table, cached for ``cache_seconds``."""

    def __init__(
        self,
        read: Callable[[], Resolution],
        cache_seconds: float,
        retry_after_seconds: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        check: Callable[[], ReadySetFingerprint] | None = None,
        check_seconds: float = 1.0,
    ) -> None:
        self._read = read
        self._cache_seconds = cache_seconds
        self._retry_after_seconds = retry_after_seconds
        self._clock = clock
        self._check = check
        self._check_seconds = check_seconds
        self._lock = asyncio.Lock()
        self._cached: Resolution | None = None
        self._cached_at = float("-inf")
        self._checked_at = float("-inf")

    def now(self) -> float:
        return self._clock()

    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        return (await self.candidates(fresher_than=fresher_than))[0]

    async def candidates(self, *, fresher_than: float | None = None) -> tuple[Backend, ...]:
        """The backends a request may go to, the primary first; BackendUnavailable when there is none."""
        async with self._lock:
            now = self._clock()
            threshold = now - self._cache_seconds if fresher_than is None else fresher_than
            if self._cached is None or self._cached_at < threshold:
                await self._refresh()
            elif self._checked_at < now - self._check_seconds and len(self._cached.candidates) > 1:
                await self._check_ready_set()
            resolution = self._cached
        if resolution is None or not resolution.candidates:
            reason = resolution.reason if resolution else "serving instance unknown"
            raise BackendUnavailable(reason, self._retry_after_seconds)
        return resolution.candidates

    async def _check_ready_set(self) -> None:
        """The whole resolution again if the ready set's records changed since it was read."""
        started = self._clock()
        if self._check is None or self._cached is None or self._cached.fingerprint is None:
            return
        try:
            fingerprint = await anyio.to_thread.run_sync(self._check)
        except Exception:
            logger.exception("checking the ready set in the state table failed")
            self._checked_at = started
            return
        if fingerprint != self._cached.fingerprint:
            await self._refresh()
        else:
            self._checked_at = started

    async def _refresh(self) -> None:
        started = self._clock()
        self._checked_at = started
        try:
            resolution = await anyio.to_thread.run_sync(self._read)
        except Exception:
            # The table is only a pointer: while it is unreachable, keep using the last known instances.
            logger.exception("reading the serving instance from the state table failed")
            if self._cached is None or not self._cached.candidates:
                self._cached = Resolution(None, "serving instance unknown: the state table is unreachable")
            # Try the table again only after the cache period, not on every request of an outage.
            self._cached_at = started
            return
        if self._cached is None or resolution.candidates != self._cached.candidates:
            logger.info(
                "serving instance resolved",
                extra={
                    "serving_instance_id": resolution.backend.instance_id if resolution.backend else None,
                    "replicas": {b.instance_id: "warned" if b.warned else "ready" for b in resolution.candidates},
                    "reason": resolution.reason or None,
                },
            )
        self._cached = resolution
        self._cached_at = started


def state_table_backend(
    settings: GatewaySettings,
    table_factory: Callable[[], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ServingInstanceBackend:
    """A resolver over the state table, whose DynamoDB resource is built on first use."""
    if not settings.group_name or not settings.state_table_name:
        raise ValueError("GROUP_NAME and STATE_TABLE_NAME are required to read the serving instance")
    group, table_name, port = settings.group_name, settings.state_table_name, settings.tgi_port
    store: StateStore | None = None

    def store_() -> StateStore:
        nonlocal store
        if store is None:
            table = table_factory() if table_factory is not None else _dynamodb_table(table_name)
            store = StateStore(table)
        return store

    def read() -> Resolution:
        return read_serving_instance(store_(), group, port)

    def check() -> ReadySetFingerprint:
        return ready_set_fingerprint(store_().replicas(group))

    return ServingInstanceBackend(
        read,
        settings.backend_cache_seconds,
        settings.retry_after_seconds,
        clock,
        check=check,
        check_seconds=settings.ready_set_check_seconds,
    )


def _dynamodb_table(name: str) -> Any:
    # Imported here so a gateway with TGI_URL never pays for boto3 at cold start.
    from spotkeeper.aws import REQUEST_PATH_CONFIG, AwsClients

    return AwsClients(config=REQUEST_PATH_CONFIG).table(name)


def resolver_for(settings: GatewaySettings) -> BackendResolver:
    fixed = settings.fixed_backend_url
    return FixedBackend(fixed) if fixed is not None else state_table_backend(settings)
