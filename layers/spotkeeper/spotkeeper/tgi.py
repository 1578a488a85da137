"""A small client for the TGI instances the control plane probes: /health, /info, /metrics.

Every TGI response is validated: a /info that does not name a model, or a /metrics that is not Prometheus
text, counts as not ready rather than being trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from spotkeeper.observability import logger


class TgiInfo(msgspec.Struct, kw_only=True):
    """The fields of TGI's ``GET /info`` the control plane reads; the others are accepted and ignored."""

    model_id: Annotated[str, msgspec.Meta(min_length=1)]
    max_total_tokens: int | None = None
    max_input_tokens: int | None = None
    max_concurrent_requests: int | None = None
    version: str | None = None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # "ready", "connection refused", "unhealthy 503", "model mismatch: x", ...
    latency_ms: float | None = None


@dataclass(frozen=True)
class Load:
    queue_size: float
    batch_size: float

    @property
    def idle(self) -> bool:
        return self.queue_size == 0 and self.batch_size == 0


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum each metric's samples over their labels (enough for TGI's gauges)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_part, _, value_part = line.rpartition(" ")
        name = name_part.split("{", 1)[0].strip()
        if not name:
            raise ValueError(f"not Prometheus text: {line[:80]!r}")
        try:
            value = float(value_part)
        except ValueError:
            # Prometheus lines may carry a timestamp after the value.
            name_part, _, value_text = name_part.rpartition(" ")
            name = name_part.split("{", 1)[0].strip()
            value = float(value_text)
        values[name] = values.get(name, 0.0) + value
    return values


class TgiClient:
    """Talks to TGI on an instance address. ``url_for`` maps an instance address to its base URL."""

    def __init__(self, url_for: Callable[[str], str], timeout: float = 3.0, http: Any = None) -> None:
        self._url_for = url_for
        self._timeout = timeout
        self._http = http

    @classmethod
    def on_port(cls, port: int, timeout: float = 3.0) -> TgiClient:
        return cls(lambda address: f"http://{address}:{port}", timeout=timeout)

    def _client(self) -> Any:
        if self._http is None:
            import httpx  # imported on first probe: the interruption handler never needs it

            self._http = httpx.Client(timeout=self._timeout)
        return self._http

    def readiness(self, address: str, expected_model: str | None) -> Readiness:
        """Ready means /health answers 200 and /info names the expected model."""
        import httpx

        base = self._url_for(address)
        started = time.perf_counter()
        try:
            health = self._client().get(f"{base}/health")
            latency_ms = (time.perf_counter() - started) * 1000
            if health.status_code != 200:
                return Readiness(False, f"unhealthy {health.status_code}", latency_ms)
            info_response = self._client().get(f"{base}/info")
        except httpx.ConnectError:
            return Readiness(False, "connection refused")
        except httpx.TimeoutException:
            return Readiness(False, "timeout")
        except httpx.HTTPError as error:
            return Readiness(False, f"http error: {type(error).__name__}")
        if info_response.status_code != 200:
            return Readiness(False, f"info answered {info_response.status_code}", latency_ms)
        try:
            info = msgspec.json.decode(info_response.content, type=TgiInfo)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            logger.warning("TGI /info is not valid", extra={"address": address, "error": str(error)[:300]})
            return Readiness(False, "invalid /info", latency_ms)
        if expected_model is not None and info.model_id != expected_model:
            return Readiness(False, f"model mismatch: {info.model_id}", latency_ms)
        return Readiness(True, "ready", latency_ms)

    def load(self, address: str) -> Load | None:
        """Queue and batch size from /metrics; None when TGI cannot be asked (gone, or not Prometheus)."""
        import httpx

        try:
            response = self._client().get(f"{self._url_for(address)}/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            values = parse_prometheus(response.text)
        except ValueError:
            logger.warning("TGI /metrics is not Prometheus text", extra={"address": address})
            return None
        return Load(
            queue_size=values.get("tgi_queue_size", 0.0),
            batch_size=values.get("tgi_batch_current_size", 0.0),
        )
