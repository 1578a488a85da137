"""Gateway overhead: the same generations sent straight to TGI and through the gateway, interleaved A/B.

Both arms use keep-alive clients (httpx) against the same TGI emulator process; the gateway is a second
process started the way the Lambda Web Adapter starts it. Each round sends ``clients`` concurrent requests to
one arm; rounds alternate ABBA so drift in the machine's load falls on both arms alike.

Non-streaming: ``POST /generate`` of ``max_new_tokens`` tokens, latency to the full answer.
Streaming: ``POST /generate_stream``, time to the first token event, and to the end of the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.stats import percentile, ratio, summary

DIRECT = "direct"
GATEWAY = "gateway"
PROMPT = "What does spotkeeper do when Spot reclaims the GPU instance that serves the model?"


class WorkloadError(RuntimeError):
    """A request of the workload did not get the answer TGI gives: the numbers would be meaningless."""


@dataclass(frozen=True)
class GatewayBenchConfig:
    levels: tuple[int, ...] = (1, 8, 32)
    # Rounds per arm at each level: every round is `clients` requests, so samples per arm = rounds * clients.
    rounds: dict[int, int] = field(default_factory=lambda: {1: 60, 8: 12, 32: 6})
    warmup_rounds: int = 2
    max_new_tokens: int = 64
    token_delay: float = 0.005
    log_dir: Path = Path("build/bench")


def _payload(max_new_tokens: int) -> dict[str, Any]:
    return {"inputs": PROMPT, "parameters": {"max_new_tokens": max_new_tokens, "details": False}}


async def _generate(client: httpx.AsyncClient, url: str, max_new_tokens: int) -> float:
    started = time.perf_counter()
    response = await client.post(url + "/generate", json=_payload(max_new_tokens))
    elapsed = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200:
        raise WorkloadError(f"{url}/generate answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    if not isinstance(body, dict) or not body.get("generated_text"):
        raise WorkloadError(f"{url}/generate answered without generated_text: {str(body)[:200]}")
    tokens = response.headers.get("x-generated-tokens")
    if tokens is not None and int(tokens) != max_new_tokens:
        raise WorkloadError(f"{url}/generate made {tokens} tokens, not {max_new_tokens}")
    return elapsed


async def _stream(client: httpx.AsyncClient, url: str, max_new_tokens: int) -> tuple[float, float]:
    """(time to first token, time to the end of the stream), milliseconds."""
    started = time.perf_counter()
    first: float | None = None
    tokens, finished = 0, False
    async with client.stream("POST", url + "/generate_stream", json=_payload(max_new_tokens)) as response:
        if response.status_code != 200:
            await response.aread()
            raise WorkloadError(f"{url}/generate_stream answered {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            if first is None:
                first = (time.perf_counter() - started) * 1000.0
            event = json.loads(line[5:])
            if event.get("error"):
                raise WorkloadError(f"{url}/generate_stream sent an error event: {event}")
            if isinstance(event.get("token"), dict):
                tokens += 1
            if event.get("generated_text") is not None:
                finished = True
    total = (time.perf_counter() - started) * 1000.0
    if first is None or not finished or tokens != max_new_tokens:
        raise WorkloadError(f"{url}/generate_stream: {tokens} token events, finished={finished}")
    return first, total


async def _round(clients: dict[str, httpx.AsyncClient], urls: dict[str, str], arm: str, n: int, stream: bool,
                 max_new_tokens: int) -> list[Any]:  # fmt: skip
    call = _stream if stream else _generate
    return list(await asyncio.gather(*(call(clients[arm], urls[arm], max_new_tokens) for _ in range(n))))


def _arm_order(round_index: int) -> tuple[str, str]:
    # ABBA: the arm that goes second in one round goes first in the next.
    return (DIRECT, GATEWAY) if round_index % 2 == 0 else (GATEWAY, DIRECT)


async def measure_level(
    urls: dict[str, str], clients_n: int, rounds: int, warmup: int, max_new_tokens: int
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients_n, max_keepalive_connections=clients_n, keepalive_expiry=60)
    timeout = httpx.Timeout(60.0)
    async with (
        httpx.AsyncClient(limits=limits, timeout=timeout) as direct,
        httpx.AsyncClient(limits=limits, timeout=timeout) as through,
    ):
        clients = {DIRECT: direct, GATEWAY: through}
        for index in range(warmup):
            for arm in _arm_order(index):
                await _round(clients, urls, arm, clients_n, False, max_new_tokens)
                await _round(clients, urls, arm, clients_n, True, max_new_tokens)
        generate: dict[str, list[float]] = {DIRECT: [], GATEWAY: []}
        ttft: dict[str, list[float]] = {DIRECT: [], GATEWAY: []}
        stream_total: dict[str, list[float]] = {DIRECT: [], GATEWAY: []}
        for index in range(rounds):
            for arm in _arm_order(index):
                generate[arm] += await _round(clients, urls, arm, clients_n, False, max_new_tokens)
            for arm in _arm_order(index + 1):
                for first, total in await _round(clients, urls, arm, clients_n, True, max_new_tokens):
                    ttft[arm].append(first)
                    stream_total[arm].append(total)
    return {
        "clients": clients_n,
        "generate": _compare(generate),
        "stream_ttft": _compare(ttft, absolute=True),
        "stream_total": _compare(stream_total),
    }


def _compare(samples: dict[str, list[float]], absolute: bool = False) -> dict[str, Any]:
    direct, through = samples[DIRECT], samples[GATEWAY]
    result: dict[str, Any] = {DIRECT: summary(direct), GATEWAY: summary(through)}
    p50_d, p50_g = percentile(direct, 0.5), percentile(through, 0.5)
    p99_d, p99_g = percentile(direct, 0.99), percentile(through, 0.99)
    result["p50_ratio"] = ratio(p50_g, p50_d)
    result["p99_ratio"] = ratio(p99_g, p99_d)
    result["p50_overhead_ms"] = round(p50_g - p50_d, 3)
    result["p99_overhead_ms"] = round(p99_g - p99_d, 3)
    if absolute:
        result["note"] = "time to the first token event; overhead is gateway p50 minus direct p50"
    return result


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def upstream_connections(gateway_pid: int, tgi_port: int) -> dict[str, int] | None:
    """The gateway process's TCP connections to TGI (Linux /proc): evidence of keep-alive reuse."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    mine = _socket_inodes(gateway_pid)
    established = time_wait = 0
    for line in lines:
        parts = line.split()
        remote_port = int(parts[2].split(":")[1], 16)
        if remote_port != tgi_port:
            continue
        if parts[3] == "01" and parts[9] in mine:
            established += 1
        elif parts[3] == "06":
            time_wait += 1
    return {"gateway_established_to_tgi": established, "time_wait_to_tgi_any_process": time_wait}


def run(config: GatewayBenchConfig, progress: Any = print) -> dict[str, Any]:
    with (
        servers.tgi_emulator(config.token_delay, config.log_dir) as tgi,
        servers.gateway(tgi.url, config.log_dir) as gw,
    ):
        urls = {DIRECT: tgi.url, GATEWAY: gw.url}
        tgi_port = int(tgi.url.rsplit(":", 1)[1])
        levels = []
        for clients_n in config.levels:
            rounds = config.rounds.get(clients_n, 4)
            progress(f"  gateway overhead: {clients_n} client(s), {rounds} rounds per arm and workload")
            started = time.monotonic()
            level = asyncio.run(measure_level(urls, clients_n, rounds, config.warmup_rounds, config.max_new_tokens))
            level["wall_seconds"] = round(time.monotonic() - started, 1)
            level["connections_after"] = upstream_connections(gw.process.pid, tgi_port)
            levels.append(level)
    return {
        "workload": {
            "max_new_tokens": config.max_new_tokens,
            "emulator_token_delay_ms": config.token_delay * 1000.0,
            "order": "ABBA rounds; each round is `clients` concurrent requests to one arm",
            "gateway": "functions/gateway/run.sh (uvicorn, h11, asyncio) with TGI_URL at the emulator",
            "note": "deployed, each Lambda execution environment serves one request at a time; here one gateway "
            "process serves every concurrent client, on the same cores as the emulator and the clients",
        },
        "levels": levels,
    }
