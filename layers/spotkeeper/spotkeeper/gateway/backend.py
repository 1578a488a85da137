"""Which TGI the gateway talks to: a fixed URL, or the serving instance named in the state table.

The state table is read at most once per BACKEND_CACHE_SECONDS per process; a request that could not reach
the cached instance asks for a resolution made after its failure (``fresher_than``), so during a failover the
gateway follows the table within one retry, while concurrent failing requests share a single table read.
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
from spotkeeper.settings import GatewaySettings
from spotkeeper.state import StateStore

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Backend:
    url: str
    instance_id: str | None = None


@dataclass(frozen=True)
class Resolution:
    backend: Backend | None
    reason: str = ""


class BackendResolver(Protocol):
    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        """The backend to use; raises BackendUnavailable when there is none."""

    def now(self) -> float:
        """The resolver's clock, for ``fresher_than``."""


class FixedBackend:
    """TGI_URL: local runs and tests, or a deployment that fronts a single fixed address."""

    def __init__(self, url: str) -> None:
        self._backend = Backend(url=url.rstrip("/"))

    async def resolve(self, *, fresher_than: float | None = None) -> Backend:
        return self._backend

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
    """The serving instance from the state table, unless there is none or it is draining."""
    endpoint = store.get_endpoint(group)
    if not endpoint.serving_instance_id or not endpoint.serving_address:
        return Resolution(None, "no serving instance: a failover is in progress")
    record = store.get_instance(group, endpoint.serving_instance_id)
    if record.draining_since is not None:
        return Resolution(None, "the serving instance is draining: a failover is in progress")
    try:
        url = backend_url(endpoint.serving_address, port)
    except ValueError as error:
        return Resolution(None, f"the state table names an unusable serving address ({error})")
    return Resolution(Backend(url=url, instance_id=endpoint.serving_instance_id))


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
        async with self._lock:
            threshold = self._clock() - self._cache_seconds if fresher_than is None else fresher_than
            if self._cached is None or self._cached_at < threshold:
                await self._refresh()
            resolution = self._cached
        if resolution is None or resolution.backend is None:
            reason = resolution.reason if resolution else "serving instance unknown"
            raise BackendUnavailable(reason, self._retry_after_seconds)
        return resolution.backend

    async def _refresh(self) -> None:
        started = self._clock()
        try:
            resolution = await anyio.to_thread.run_sync(self._read)
        except Exception:
            # The table is only a pointer: while it is unreachable, keep using the last known instance.
            logger.exception("reading the serving instance from the state table failed")
            if self._cached is None or self._cached.backend is None:
                self._cached = Resolution(None, "serving instance unknown: the state table is unreachable")
            # Try the table again only after the cache period, not on every request of an outage.
            self._cached_at = started
            return
        if self._cached is None or resolution.backend != self._cached.backend:
            logger.info(
                "serving instance resolved",
                extra={
                    "serving_instance_id": resolution.backend.instance_id if resolution.backend else None,
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
