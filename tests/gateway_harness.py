"""Servers for the gateway tests: the gateway under a real uvicorn, TGI emulators, all on 127.0.0.0/8."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
