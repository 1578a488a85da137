"""Servers for the gateway tests: the gateway under a real uvicorn, TGI emulators, all on 127.0.0.0/8."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import httpx
import uvicorn
from fastapi import FastAPI

from spotkeeper.gateway.api import create_app
from spotkeeper.gateway.backend import BackendResolver
from spotkeeper.settings import GatewaySettings
from spotkeeper_local.tgi_emulator import TgiEmulator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServedApp:
    """An ASGI app served by uvicorn in a thread, lifespan included (like run.sh under the adapter)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it every keep-alive response waits ~40 ms for a delayed ACK (uvicorn binding its own
        # --host/--port, as run.sh does, gets this right by itself).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self.exit_code: int | str | None = None
        self._thread = threading.Thread(target=self._serve, name="gateway", daemon=True)

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except SystemExit as exit_:
            # uvicorn exits when the app's lifespan fails (a misconfigured gateway).
            self.exit_code = exit_.code

    def start(self, timeout: float = 10.0) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10.0)
        self._socket.close()


@contextmanager
def served_gateway(settings: GatewaySettings, resolver: BackendResolver | None = None) -> Iterator[ServedApp]:
    served = ServedApp(create_app(settings, resolver)).start()
    try:
        yield served
    finally:
        served.stop()


@contextmanager
def running_emulator(host: str = "127.0.0.1", port: int = 0, **options: object) -> Iterator[TgiEmulator]:
    emulator = TgiEmulator(host=host, port=port, **options)  # type: ignore[arg-type]
    without_delayed_acks(emulator)
    emulator.boot()
    try:
        if not emulator.wait_ready(10.0):
            raise RuntimeError(f"TGI emulator on {emulator.url} did not become ready")
        yield emulator
    finally:
        emulator.stop()


def without_delayed_acks(emulator: TgiEmulator) -> TgiEmulator:
    """Test-only: the emulator's reserved socket is created without proto=IPPROTO_TCP, so asyncio leaves
    TCP_NODELAY off and each keep-alive request costs ~40 ms of delayed ACK (real TGI's hyper sets it).
    Accepted connections inherit the option from the listening socket on Linux."""
    sock = getattr(emulator, "_sock", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return emulator


def gateway_settings(tgi_url: str | None = None, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {"TGI_URL": tgi_url, "MAX_NEW_TOKENS": 64, "RETRY_AFTER_SECONDS": 3}
    values.update(overrides)
    return GatewaySettings.model_validate({name: value for name, value in values.items() if value is not None})


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The gateway's real upstream transport, recording each attempt: its connect timeout and what came of it
    (a status code, or the name of the transport error). Bounds on how long the gateway waits are read from
    these, never from a wall clock."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[float | None, int | str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        connect_timeout = (request.extensions.get("timeout") or {}).get("connect")
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as error:
            self.attempts.append((connect_timeout, type(error).__name__))
            raise
        self.attempts.append((connect_timeout, response.status_code))
        return response


class StepByStepTransport(httpx.AsyncHTTPTransport):
    """The gateway's upstream transport, releasing a streamed TGI body one read at a time: the next read waits
    until the client has received something since the previous one was handed to the gateway.

    A gateway that streams passes each read on at once, and the client's `received()` releases the next. One
    that buffers the stream never gets it to the client, and the wait gives up after ``patience`` seconds
    (marking ``stalled``) only so that a broken gateway fails the test instead of hanging it. No assertion here
    reads a clock: streaming is shown by the order of events, not by how fast they came.
    """

    def __init__(self, patience: float = 10.0) -> None:
        super().__init__()
        self.patience = patience
        self.stalled = False
        self._received = 0
        self._changed = threading.Condition()

    def received(self) -> None:
        with self._changed:
            self._received += 1
            self._changed.notify_all()

    def _wait_beyond(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._received > count, timeout=self.patience)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_StepByStep(self, response.stream),  # type: ignore[arg-type]
            extensions=response.extensions,
        )


class _StepByStep(httpx.AsyncByteStream):
    def __init__(self, gate: StepByStepTransport, upstream: httpx.AsyncByteStream) -> None:
        self._gate = gate
        self._upstream = upstream

    async def __aiter__(self):  # type: ignore[override]
        handed_over_at: int | None = None
        async for chunk in self._upstream:
            if handed_over_at is not None and not await anyio.to_thread.run_sync(
                self._gate._wait_beyond, handed_over_at
            ):
                self._gate.stalled = True
            handed_over_at = self._gate._received
            yield chunk

    async def aclose(self) -> None:
        await self._upstream.aclose()
