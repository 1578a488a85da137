"""Clients of the endpoint during a drill: a steady stream of real generation requests, and the Elastic IP.

``LoadGenerator`` sends one real HTTP request per interval of *simulated* time (through the gateway, or to the
Elastic IP's address) and records what each got. ``ElasticIpRouter`` is the Elastic IP itself: a TCP listener on
the EIP's address that forwards every new connection to the private IP of whichever instance EC2 has the EIP
associated with at that moment, and drops it when the EIP is on nothing or on a dead instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPT = "In one word: what keeps a Spot endpoint alive?"


@dataclass(frozen=True)
class RequestOutcome:
    at: float  # simulated seconds since the scenario started
    ok: bool
    status: int | None
    detail: str = ""


@dataclass
class LoadGenerator:
    """Sends ``POST <base_url>/generate`` every ``interval`` simulated seconds while it is running."""

    base_url: str
    clock: Any
    origin: float  # simulated epoch second that is "t = 0" of the scenario
    interval: float = 2.0
    keep_alive: bool = True
    timeout: float = 10.0
    outcomes: list[RequestOutcome] = field(default_factory=list)
    _next: float | None = None
    _client: httpx.Client | None = None

    def start(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=8 if self.keep_alive else 0)
        self._client = httpx.Client(timeout=self.timeout, limits=limits)
        self._next = self.clock.now()

    def stop(self) -> None:
        self._next = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def due(self, now: float) -> None:
        """Send every request whose slot has come (the slot is claimed first: callers may nest)."""
        while self._next is not None and self._next <= now:
            slot = self._next
            self._next = slot + self.interval
            self.outcomes.append(self._send(slot - self.origin))

    def _send(self, at: float) -> RequestOutcome:
        assert self._client is not None
        try:
            response = self._client.post(
                f"{self.base_url}/generate",
                json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4}},
            )
        except httpx.HTTPError as error:
            return RequestOutcome(at, False, None, type(error).__name__)
        if response.status_code == 200:
            try:
                ok = isinstance(response.json().get("generated_text"), str)
            except ValueError:
                ok = False
            return RequestOutcome(at, ok, 200, "" if ok else "200 without generated_text")
        return RequestOutcome(at, False, response.status_code, response.text[:120])


class ElasticIpRouter:
    """The Elastic IP's address on loopback, forwarding to the instance it is associated with right now."""

    def __init__(self, address: str, port: int, target: Callable[[], tuple[str, int] | None]) -> None:
        self.address = address
        self.port = port
        self._target = target
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def start(self) -> ElasticIpRouter:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                self._server = await asyncio.start_server(self._connection, self.address, self.port)
            except OSError as error:
                failure.append(error)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            if not failure:
                loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"eip-{self.address}", daemon=True)
        self._thread.start()
        ready.wait(5)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None:
            return

        async def close() -> None:
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = self._thread = self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self._target()
        if target is None:
            writer.close()  # the EIP points at nothing: no one answers
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()  # associated with an instance that is gone
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@dataclass
class ClientPool:
    """``count`` clients of one address, each a ``LoadGenerator`` sending every ``interval`` simulated seconds,
    their slots spread evenly over the interval; requests due at the same simulated second go out concurrently
    (one thread per client), so the gateway sees concurrent work. The same interface as one generator."""

    base_url: str
    clock: Any
    origin: float
    count: int = 1
    interval: float = 2.0
    keep_alive: bool = True
    timeout: float = 10.0
    clients: list[LoadGenerator] = field(default_factory=list)
    _pool: Any = None

    def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        now = self.clock.now()
        self.clients = []
        for index in range(self.count):
            client = LoadGenerator(self.base_url, self.clock, self.origin, self.interval, self.keep_alive, self.timeout)
            client.start()
            client._next = now + self.interval * index / self.count
            self.clients.append(client)
        if self.count > 1:
            self._pool = ThreadPoolExecutor(max_workers=self.count, thread_name_prefix="client")

    def stop(self) -> None:
        for client in self.clients:
            client.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def due(self, now: float) -> None:
        if self._pool is None:
            for client in self.clients:
                client.due(now)
            return
        for future in [self._pool.submit(client.due, now) for client in self.clients]:
            future.result()

    @property
    def outcomes(self) -> list[RequestOutcome]:
        """Every client's outcomes, in time order."""
        merged = [outcome for client in self.clients for outcome in client.outcomes]
        return sorted(merged, key=lambda outcome: outcome.at)
