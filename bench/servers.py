"""The servers a benchmark talks to, each in its own process as in production: a TGI emulator, the gateway.

The gateway is started through ``functions/gateway/run.sh``, the command the Lambda Web Adapter runs, so the
numbers include the same uvicorn options (h11, asyncio loop, keep-alive) a deployed gateway has.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / "layers" / "spotkeeper"
LOCAL = ROOT / "local"
GATEWAY_TASK_ROOT = ROOT / "functions" / "gateway"


class ServerError(RuntimeError):
    """A server the benchmark needs did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def python_env(**extra: str) -> dict[str, str]:
    """This interpreter's environment with the shared layer and the local runtime importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(LAYER), str(LOCAL), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.update(extra)
    return env


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_until_answering(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + path, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise ServerError(f"{server.name} did not answer {path} within {timeout:g} s:\n{server.log_tail()}")


def _start(name: str, command: list[str], env: dict[str, str], url: str, ready_path: str, log_dir: Path) -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: S603 - the emulator and run.sh of this repository
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
        )
    server = Server(name, url, process, log)
    try:
        _wait_until_answering(server, ready_path, timeout=60.0)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def tgi_emulator(token_delay: float, log_dir: Path, max_concurrent_requests: int = 256) -> Iterator[Server]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "spotkeeper_local.tgi_emulator",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--token-delay={token_delay}",
        f"--max-concurrent-requests={max_concurrent_requests}",
        "--drain-seconds=0",
    ]
    server = _start("tgi-emulator", command, python_env(), f"http://127.0.0.1:{port}", "/health", log_dir)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def gateway(tgi_url: str, log_dir: Path, max_new_tokens: int = 1024) -> Iterator[Server]:
    """functions/gateway/run.sh with TGI_URL pointing at ``tgi_url`` (no state table, no AWS)."""
    port = free_port()
    env = python_env(
        LAMBDA_TASK_ROOT=str(GATEWAY_TASK_ROOT),
        PORT=str(port),
        TGI_URL=tgi_url,
        MAX_NEW_TOKENS=str(max_new_tokens),
        POWERTOOLS_SERVICE_NAME="spotkeeper-gateway",
        POWERTOOLS_METRICS_NAMESPACE="Spotkeeper",
        POWERTOOLS_LOG_LEVEL="INFO",
    )
    # run.sh puts the task root and /opt/python (the layer) first; here the layer comes from PYTHONPATH.
    env["PYTHONPATH"] = str(LAYER)
    for name in ("GROUP_NAME", "STATE_TABLE_NAME"):
        env.pop(name, None)
    command = ["bash", str(GATEWAY_TASK_ROOT / "run.sh")]
    server = _start("gateway", command, env, f"http://127.0.0.1:{port}", "/gateway/ping", log_dir)
    try:
        yield server
    finally:
        server.stop()
