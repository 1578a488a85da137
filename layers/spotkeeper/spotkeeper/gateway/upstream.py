"""Talking to TGI on the replicas: one keep-alive client per process, least outstanding work, bounded failover.

Each request goes to the candidate replica with the fewest requests in flight from this process (a warned
replica only when no other is there). Ties, the rule at light load and always under Lambda (one request at a
time per execution environment), go round robin from a random start: a replica this process never picked
is drawn at random, then the one picked longest ago goes first. Without the random start every new process
(every new Lambda environment) would send its first request to the same replica.

A request that could not reach TGI at all (connection refused or reset, connect timeout, TGI answering 503)
is retried once, on another replica if the table names one, against a resolution made after the failure; if
that fails too the client gets 503 with Retry-After. The bound on that path is about two connect timeouts
plus one state-table read, never the generation's read timeout. The replica that failed is then avoided by
this process for RETRY_AFTER_SECONDS (used only if no other is left): an instance reclaimed without warning
stays in the ready set until the health checks notice, and without this every other request would pay a
connect timeout on it first.

A replica answering 429 (TGI's "Model is overloaded", before the first byte) is retried once on another ready,
un-warned replica within the same one-retry budget; with no other, or if that one fails too, the client gets
TGI's 429 as it came.

A replica that takes a request and never answers (TGI hung: the port open, nothing sent back) is noticed without
waiting out the read timeout (minutes: a non-streamed generation answers only when it ends). While TGI's
response headers have not come after LIVENESS_CHECK_AFTER_SECONDS, the replica's ``GET /health`` is asked
(LIVENESS_TIMEOUT_SECONDS; one check at a time per replica, shared by the requests waiting on it), again after
twice as long while the wait goes on (at most a minute apart). A 200 means TGI is alive and busy: the wait goes
on, however long the generation. No answer, or anything but 200, and the request gives up on that replica before
the client got a byte: it is retried once on another replica like an unreachable one, else the client gets 503
with Retry-After. The replica is then left out entirely for RETRY_AFTER_SECONDS (one replica: the requests of
that time get 503 at once, after one table read, instead of each waiting for its own liveness check). A request
answered within LIVENESS_CHECK_AFTER_SECONDS (every stream: TGI sends a stream's headers before validating it)
costs no extra call.

Why /health answers a busy TGI quickly (router/src/server.rs, infer/mod.rs, backends/v3/src/backend.rs): it
does not go through the request queue or the concurrency limit; it asks each shard's gRPC ``Health`` (a tiny CUDA
allocation), or after a failed generation runs a one-token prefill on the shards directly. The shard serves it
between two forward steps of the batch, so it waits for at most one step: tens of milliseconds for a decode, up
to seconds for a full --max-batch-prefill-tokens prefill on a large sharded model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from spotkeeper.gateway.backend import Backend, BackendResolver
from spotkeeper.gateway.errors import BackendProtocolError, BackendTimeout, BackendUnavailable, GatewayError
from spotkeeper.observability import logger
from spotkeeper.settings import GatewaySettings

# TGI's /health waits for at most one forward step of the model (see above), so it is quick unless TGI is stuck.
PROBE_READ_TIMEOUT_SECONDS = 10.0

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class _Unreachable(Exception):
    """The request never got an answer from TGI; safe to try another resolution."""


class _Hung(_Unreachable):
    """TGI took the request but answered neither it nor a liveness check: nothing was sent to the client."""


class _OnlyHung(BackendUnavailable):
    """Every candidate was found hung lately; ``fresher_than``: a table read made after the last was found."""

    def __init__(self, message: str, retry_after_seconds: int, fresher_than: float) -> None:
        super().__init__(message, retry_after_seconds)
        self.fresher_than = fresher_than


class StreamStalled(httpx.ReadTimeout):
    """TGI stopped sending in the middle of a response and did not answer its liveness check either."""


LIVENESS_RECHECK_MAX_SECONDS = 60.0


@dataclass
class Upstream:
    """An open response from TGI (body not read yet) and the backend that gave it."""

    response: httpx.Response
    backend: Backend
    retried: bool = False  # the first attempt could not reach TGI; this is the answer of the retry
    _release: Callable[[], None] | None = field(default=None, repr=False)
    # The replica's liveness check (False: it is hung, and marked so), once the body is this many seconds late.
    _liveness: Callable[[], Awaitable[bool]] | None = field(default=None, repr=False)
    _liveness_after: float = field(default=0.0, repr=False)

    def relay_headers(self) -> dict[str, str]:
        """TGI's own ``x-*`` headers (x-generated-tokens, x-compute-time, ...) are useful to clients."""
        return {
            name: value
            for name, value in self.response.headers.items()
            if name.lower().startswith("x-") and name.lower() not in _HOP_BY_HOP
        }

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes. A TGI that stops sending mid-way (hung in the middle of a stream) and does not
        answer its liveness check ends it with ``StreamStalled`` (an ``httpx.ReadTimeout``), not after the read
        timeout; a slow one that answers it is waited for."""
        source = self.response.aiter_bytes()
        if self._liveness is None:
            async for chunk in source:
                yield chunk
            return
        while True:
            reading = asyncio.ensure_future(_next_chunk(source))
            try:
                if not await _answered(reading, self._liveness, self._liveness_after):
                    raise StreamStalled(
                        f"TGI on {self.backend.instance_id or self.backend.url} stopped sending and did not answer "
                        "its liveness check"
                    )
            finally:
                await _abandon(reading)
            chunk = reading.result()
            if chunk is None:
                return
            yield chunk

    def __del__(self) -> None:
        # A streamed response whose client left before the stream began is never closed: stop counting it.
        release, self._release = self._release, None
        if release is not None:
            release()

    async def close(self) -> None:
        """Idempotent: the request stops counting as outstanding on its replica once, however often called."""
        release, self._release = self._release, None
        if release is not None:
            release()
        await self.response.aclose()


def new_client(settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_seconds,
        read=settings.read_timeout_seconds,
        write=settings.connect_timeout_seconds * 5,
        pool=settings.connect_timeout_seconds,
    )
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=32, keepalive_expiry=30.0)
    return httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport, follow_redirects=False)


class TgiUpstream:
    def __init__(
        self,
        client: httpx.AsyncClient,
        resolver: BackendResolver,
        settings: GatewaySettings,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._resolver = resolver
        self._settings = settings
        self._outstanding: dict[str, int] = {}  # requests in flight from this process, per backend URL
        self._last_pick: dict[str, int] = {}
        self._picks = itertools.count()
        self._rng = rng or random.Random()
        self._clock = clock
        self._avoid_until: dict[str, float] = {}  # replicas that could not be reached, avoided until then
        # Replicas found hung: not sent anything until then; the resolver's time they were found at.
        self._hung_until: dict[str, tuple[float, float]] = {}
        self._liveness: dict[str, asyncio.Future[bool]] = {}  # the liveness check in flight, per replica

    def outstanding(self, url: str) -> int:
        return self._outstanding.get(url, 0)

    async def _candidates(self, fresher_than: float | None) -> tuple[Backend, ...]:
        candidates = getattr(self._resolver, "candidates", None)
        if candidates is None:  # a resolver that only ever knows one backend
            return (await self._resolver.resolve(fresher_than=fresher_than),)
        return await candidates(fresher_than=fresher_than)

    def avoided(self, url: str) -> bool:
        """Whether the replica could not be reached lately (RETRY_AFTER_SECONDS)."""
        until = self._avoid_until.get(url)
        if until is not None and self._clock() >= until:
            del self._avoid_until[url]
            return False
        return until is not None

    def hung(self, url: str) -> bool:
        """Whether the replica was found hung lately (RETRY_AFTER_SECONDS): no request goes to it meanwhile."""
        entry = self._hung_until.get(url)
        if entry is not None and self._clock() >= entry[0]:
            del self._hung_until[url]
            return False
        return entry is not None

    def pick(
        self, candidates: tuple[Backend, ...], exclude: frozenset[str] = frozenset(), *, ready_only: bool = False
    ) -> Backend | None:
        """The un-warned candidate with the least outstanding work (a warned one, then one that was unreachable
        lately, if no other is left; never those with ``ready_only``); ties round robin from a random start."""
        pool = [backend for backend in candidates if backend.url not in exclude and not self.hung(backend.url)]
        if ready_only:
            pool = [backend for backend in pool if not backend.warned and not self.avoided(backend.url)]
        if not pool:
            return None
        best = min((self.avoided(b.url), b.warned) for b in pool)
        pool = [backend for backend in pool if (self.avoided(backend.url), backend.warned) == best]
        least = min(self.outstanding(backend.url) for backend in pool)
        tied = [backend for backend in pool if self.outstanding(backend.url) == least]
        never = [backend for backend in tied if backend.url not in self._last_pick]
        chosen = self._rng.choice(never) if never else min(tied, key=lambda b: self._last_pick[b.url])
        self._last_pick[chosen.url] = next(self._picks)
        return chosen

    def _unreachable(self, backend: Backend, *, hung: bool = False) -> None:
        until = self._clock() + self._settings.retry_after_seconds
        self._avoid_until[backend.url] = until
        if hung:
            self._hung_until[backend.url] = (until, self._resolver.now())

    def _no_backend(self, candidates: tuple[Backend, ...], exclude: frozenset[str]) -> BackendUnavailable:
        """Why no candidate can take the request; a replica found hung lately says so."""
        hung = [b for b in candidates if b.url not in exclude and b.url in self._hung_until and self.hung(b.url)]
        if hung:
            # A fresh table read, once per replica found hung: it may name another replica or a replacement.
            return _OnlyHung(
                f"TGI on {hung[0].instance_id or hung[0].url} stopped answering (hung): a failover is in progress",
                self._settings.retry_after_seconds,
                max(self._hung_until[b.url][1] for b in hung),
            )
        return BackendUnavailable("no other replica is ready", self._settings.retry_after_seconds)

    async def open(
        self,
        method: str,
        path: str,
        json_body: object | None = None,
        *,
        request_id: str | None = None,
        read_timeout: float | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> Upstream:
        """Send the request and return TGI's response with its body unread (so it can be streamed).

        ``exclude`` names backend URLs not to use (a stream being resumed avoids the replica that broke it);
        when only excluded backends are left, the request is unavailable.
        """
        failure: Exception
        tried: frozenset[str] = exclude
        try:
            candidates = await self._candidates(None)
            backend = self.pick(candidates, exclude)
            if backend is None:
                raise self._no_backend(candidates, exclude)
            tried = tried | {backend.url}
            upstream = await self._send(backend, method, path, json_body, request_id, read_timeout)
        except (_Unreachable, BackendUnavailable) as error:
            failure = error
        else:
            if upstream.response.status_code == 429:
                return await self._overloaded(upstream, candidates, tried, method, path, json_body, request_id)
            return upstream
        failed_at = failure.fresher_than if isinstance(failure, _OnlyHung) else self._resolver.now()
        logger.warning("TGI unreachable, retrying with a fresh resolution", extra={"reason": str(failure)})
        candidates = await self._candidates(failed_at)
        # Another replica if there is one; else the same one again (one replica: its TGI may be back, or the
        # table may name its replacement by now), unless it was found hung.
        backend = self.pick(candidates, tried) or self.pick(candidates, exclude)
        if backend is None:
            if isinstance(failure, _Hung):
                message = f"{failure}: a failover is in progress"
            elif isinstance(failure, BackendUnavailable):
                message = failure.message
            else:
                message = f"no other replica can take the request ({failure})"
            raise BackendUnavailable(message, self._settings.retry_after_seconds) from failure
        try:
            upstream = await self._send(backend, method, path, json_body, request_id, read_timeout)
        except _Unreachable as error:
            raise BackendUnavailable(
                f"TGI on the serving instance is unreachable ({error}): a failover is in progress",
                self._settings.retry_after_seconds,
            ) from error
        upstream.retried = True
        return upstream

    async def _overloaded(
        self,
        overloaded: Upstream,
        candidates: tuple[Backend, ...],
        tried: frozenset[str],
        method: str,
        path: str,
        json_body: object | None,
        request_id: str | None,
    ) -> Upstream:
        """A 429: the request once more on another ready replica, else the 429 as it came."""
        other = self.pick(candidates, tried, ready_only=True)
        if other is None:
            return overloaded
        with contextlib.suppress(httpx.HTTPError):
            await overloaded.response.aread()  # kept, in case the other replica cannot take it either
        try:
            upstream = await self._send(other, method, path, json_body, request_id, None)
        except (_Unreachable, GatewayError) as error:
            logger.warning("could not retry an overloaded request on another replica", extra={"reason": str(error)})
            return overloaded
        await overloaded.close()
        logger.info(
            "overloaded request sent to another replica",
            extra={"from": overloaded.backend.instance_id, "to": other.instance_id},
        )
        upstream.retried = True
        return upstream

    async def open_elsewhere(
        self,
        method: str,
        path: str,
        json_body: object | None,
        *,
        exclude: frozenset[str],
        request_id: str | None = None,
    ) -> Upstream | None:
        """One attempt on a ready, un-warned replica not in ``exclude`` (the cached ready set); None if there is
        none. For a request whose first replica answered it is overloaded: no fresh table read."""
        backend = self.pick(await self._candidates(None), exclude, ready_only=True)
        if backend is None:
            return None
        try:
            return await self._send(backend, method, path, json_body, request_id, None)
        except _Unreachable as error:
            raise BackendUnavailable(f"TGI unreachable ({error})", self._settings.retry_after_seconds) from error

    def _acquire(self, url: str) -> Callable[[], None]:
        self._outstanding[url] = self.outstanding(url) + 1

        def release() -> None:
            left = self.outstanding(url) - 1
            if left > 0:
                self._outstanding[url] = left
            else:
                self._outstanding.pop(url, None)

        return release

    async def _send(
        self,
        backend: Backend,
        method: str,
        path: str,
        json_body: object | None,
        request_id: str | None,
        read_timeout: float | None,
    ) -> Upstream:
        headers = {"accept-encoding": "identity"}
        if request_id:
            headers["x-request-id"] = request_id
        timeout = self._client.timeout
        if read_timeout is not None:
            timeout = httpx.Timeout(connect=timeout.connect, read=read_timeout, write=timeout.write, pool=timeout.pool)
        request = self._client.build_request(
            method, backend.url + path, json=json_body, headers=headers, timeout=timeout
        )
        release = self._acquire(backend.url)
        try:
            response = await self._request(backend, request, timeout)
            if response.status_code == 503:
                # TGI still loading or going away: as unreachable as a closed port.
                body = await _read_quietly(response)
                raise _Unreachable(f"TGI answered 503 {body[:200]!r}")
        except _Unreachable as error:
            release()
            self._unreachable(backend, hung=isinstance(error, _Hung))
            raise
        except BaseException:
            release()
            raise
        self._avoid_until.pop(backend.url, None)

        async def alive() -> bool:
            if await self._alive(backend):
                return True
            self._unreachable(backend, hung=True)
            return False

        return Upstream(
            response=response,
            backend=backend,
            _release=release,
            _liveness=alive,
            _liveness_after=self._settings.liveness_check_after_seconds,
        )

    async def _request(self, backend: Backend, request: httpx.Request, timeout: httpx.Timeout) -> httpx.Response:
        watch = self._settings.liveness_check_after_seconds
        # Not watched when the read timeout ends the wait about as soon (the gateway's GETs to /health, /info).
        watched = timeout.read is None or timeout.read > watch + self._settings.liveness_timeout_seconds
        try:
            if watched:
                return await self._watched(backend, request)
            return await self._client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            raise _Unreachable(_describe(error)) from error
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.WriteTimeout) as error:
            # The connection broke before TGI answered (instance gone, connection reset).
            raise _Unreachable(_describe(error)) from error
        except httpx.ReadTimeout as error:
            raise BackendTimeout(f"TGI did not answer within {timeout.read} s") from error
        except httpx.HTTPError as error:
            raise BackendProtocolError(f"unexpected answer from TGI: {_describe(error)}") from error

    async def _watched(self, backend: Backend, request: httpx.Request) -> httpx.Response:
        """TGI's response (headers read, body not), giving up with ``_Hung`` when TGI has not answered after
        LIVENESS_CHECK_AFTER_SECONDS and does not answer its liveness check either."""
        sending = asyncio.ensure_future(self._client.send(request, stream=True))
        handed_over = False
        try:
            if not await _answered(sending, lambda: self._alive(backend), self._settings.liveness_check_after_seconds):
                raise _Hung(
                    f"TGI on {backend.instance_id or backend.url} took the request but answered neither it "
                    f"nor its liveness check (GET /health within {self._settings.liveness_timeout_seconds} s)"
                )
            response = sending.result()
            handed_over = True
            return response
        finally:
            if not handed_over:
                await _abandon(sending)

    async def _alive(self, backend: Backend) -> bool:
        """Whether the replica's TGI answers ``GET /health`` with 200 in time; one check in flight per replica."""
        check = self._liveness.get(backend.url)
        if check is None or check.done():
            check = asyncio.ensure_future(self._check_liveness(backend))
            self._liveness[backend.url] = check
        return await asyncio.shield(check)

    async def _check_liveness(self, backend: Backend) -> bool:
        connect = self._settings.connect_timeout_seconds
        timeout = httpx.Timeout(
            connect=connect, read=self._settings.liveness_timeout_seconds, write=connect, pool=connect
        )
        try:
            response = await self._client.get(
                backend.url + "/health", headers={"accept-encoding": "identity"}, timeout=timeout
            )
        except httpx.HTTPError as error:
            logger.warning(
                "TGI did not answer its liveness check",
                extra={"instance_id": backend.instance_id, "reason": _describe(error)},
            )
            return False
        if response.status_code != 200:
            logger.warning(
                "TGI failed its liveness check",
                extra={"instance_id": backend.instance_id, "status": response.status_code},
            )
            return False
        return True


async def _answered(task: asyncio.Future[Any], alive: Callable[[], Awaitable[bool]], after: float) -> bool:
    """Wait for ``task``; while it is ``after`` seconds late (then twice as long, up to a minute) ask ``alive``.
    False as soon as ``alive`` says no (``task`` left running); True when ``task`` is done."""
    interval = after
    done, _ = await asyncio.wait((task,), timeout=interval)
    while not done:
        checking = asyncio.ensure_future(alive())
        try:
            done, _ = await asyncio.wait((task, checking), return_when=asyncio.FIRST_COMPLETED)
        finally:
            checking.cancel()  # only this wait: a check shared by other requests goes on for them
        if task in done:
            return True
        if not checking.result():
            return False
        interval = min(interval * 2, LIVENESS_RECHECK_MAX_SECONDS)
        done, _ = await asyncio.wait((task,), timeout=interval)
    return True


async def _next_chunk(source: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(source)
    except StopAsyncIteration:
        return None


async def _abandon(task: asyncio.Future[Any]) -> None:
    """Stop a read or send nobody will use: cancel it, or close the response it got meanwhile."""
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
    if task.cancelled() or task.exception() is not None:
        return
    if isinstance(task.result(), httpx.Response):
        await task.result().aclose()


async def _read_quietly(response: httpx.Response) -> bytes:
    try:
        return await response.aread()
    except httpx.HTTPError:
        return b""
    finally:
        await response.aclose()


def _describe(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
