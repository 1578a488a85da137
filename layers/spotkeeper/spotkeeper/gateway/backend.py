"""Which TGI replicas the gateway talks to: a fixed URL, or the ready set and primary in the state table.

The state table is read at most once per BACKEND_CACHE_SECONDS per process; a request that could not reach
a cached replica asks for a resolution made after its failure (``fresher_than``), so during a failover the
gateway follows the table within one retry, while concurrent failing requests share a single table read.

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
from spotkeeper.records import READY, WARNED
from spotkeeper.settings import GatewaySettings
from spotkeeper.state import StateStore

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Backend:
    url: str
    instance_id: str | None = None
    warned: bool = False  # a Spot warning or rebalance recommendation named it: a last resort only


@dataclass(frozen=True)
class Resolution:
    backend: Backend | None  # the primary, when it can serve
    reason: str = ""
    replicas: tuple[Backend, ...] = ()  # the other replicas of the ready set

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
    replicas = {replica.instance_id: replica for replica in store.replicas(group)}
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
    return Resolution(primary, reason, tuple(others))


class ServingInstanceBackend:
    """The serving instance from the state table, cached for ``cache_seconds``."""

    def __init__(
        self,
        read: Callable[[], Resolution],
        cache_seconds: float,
        retry_after_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._cache_seconds = cache_seconds
        self._retry_after_seconds = retry_after_seconds
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cached: Resolution | None = None
        self._cached_at = float("-inf")

    def now(self) -> float:
        return self._clock()

    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        return (await self.candidates(fresher_than=fresher_than))[0]

    async def candidates(self, *, fresher_than: float | None = None) -> tuple[Backend, ...]:
        """The backends a request may go to, the primary first; BackendUnavailable when there is none."""
        async with self._lock:
            threshold = self._clock() - self._cache_seconds if fresher_than is None else fresher_than
            if self._cached is None or self._cached_at < threshold:
                await self._refresh()
            resolution = self._cached
        if resolution is None or not resolution.candidates:
            reason = resolution.reason if resolution else "serving instance unknown"
            raise BackendUnavailable(reason, self._retry_after_seconds)
        return resolution.candidates

    async def _refresh(self) -> None:
        started = self._clock()
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
    settings: GatewaySettings, table_factory: Callable[[], Any] | None = None
) -> ServingInstanceBackend:
    """A resolver over the state table, whose DynamoDB resource is built on first use."""
    if not settings.group_name or not settings.state_table_name:
        raise ValueError("GROUP_NAME and STATE_TABLE_NAME are required to read the serving instance")
    group, table_name, port = settings.group_name, settings.state_table_name, settings.tgi_port
    store: StateStore | None = None

    def read() -> Resolution:
        nonlocal store
        if store is None:
            table = table_factory() if table_factory is not None else _dynamodb_table(table_name)
            store = StateStore(table)
        return read_serving_instance(store, group, port)

    return ServingInstanceBackend(read, settings.backend_cache_seconds, settings.retry_after_seconds)


def _dynamodb_table(name: str) -> Any:
    # Imported here so a gateway with TGI_URL never pays for boto3 at cold start.
    from spotkeeper.aws import REQUEST_PATH_CONFIG, AwsClients

    return AwsClients(config=REQUEST_PATH_CONFIG).table(name)


def resolver_for(settings: GatewaySettings) -> BackendResolver:
    fixed = settings.fixed_backend_url
    return FixedBackend(fixed) if fixed is not None else state_table_backend(settings)
