"""Per-request metrics (EMF) and one structured log line per request.

The gateway runs as an ASGI app, not a Lambda handler, so Powertools' ``log_metrics`` decorator does not
apply: each request gets its own ``EphemeralMetrics`` (no state shared between concurrent requests) and is
flushed when the response, streamed or not, has ended.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spotkeeper.observability import MetricName, logger
from spotkeeper.settings import GatewaySettings

RECORD_KEY = "spotkeeper_request"
UNMATCHED_ROUTE = "unmatched"


@dataclass
class RequestRecord:
    """What one request did, filled in by the middleware and the route that served it."""

    started: float
    method: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    route: str = UNMATCHED_ROUTE
    status: int | None = None
    serving_instance_id: str | None = None
    first_token_at: float | None = None
    tokens_out: int | None = None
    stream_error: str | None = None
    retries: int = 0  # attempts after one that could not reach TGI (before its first byte)
    resumes: int = 0  # broken streams continued on another replica

    @property
    def failed(self) -> bool:
        return self.stream_error is not None or self.status is None or self.status >= 500

    def milliseconds_since_start(self, at: float) -> float:
        return round((at - self.started) * 1000.0, 3)


def request_record(scope: Scope) -> RequestRecord | None:
    return scope.get("state", {}).get(RECORD_KEY)


def publish(record: RequestRecord, settings: GatewaySettings, ended: float) -> None:
    latency_ms = record.milliseconds_since_start(ended)
    first_token_ms = (
        record.milliseconds_since_start(record.first_token_at) if record.first_token_at is not None else None
    )
    metrics = EphemeralMetrics(namespace=settings.metrics_namespace)
    metrics.add_dimension("AutoScalingGroupName", settings.group_name or "local")
    metrics.add_dimension("Route", record.route)
    metrics.add_metric(MetricName.GATEWAY_REQUESTS, MetricUnit.Count, 1)
    metrics.add_metric(MetricName.GATEWAY_ERRORS, MetricUnit.Count, 1 if record.failed else 0)
    metrics.add_metric(MetricName.GATEWAY_LATENCY, MetricUnit.Milliseconds, latency_ms)
    # Only when they happened: most requests are neither retried nor resumed (Sum over a period counts them).
    if record.retries:
        metrics.add_metric(MetricName.GATEWAY_RETRIES, MetricUnit.Count, record.retries)
    if record.resumes:
        metrics.add_metric(MetricName.GATEWAY_RESUMES, MetricUnit.Count, record.resumes)
    if first_token_ms is not None:
        metrics.add_metric(MetricName.TIME_TO_FIRST_TOKEN, MetricUnit.Milliseconds, first_token_ms)
    if record.tokens_out is not None:
        metrics.add_metric(MetricName.TOKENS_OUT, MetricUnit.Count, record.tokens_out)
    # Status stays out of the dimensions (one metric stream per route); it is searchable in the EMF record.
    metrics.add_metadata("status", record.status if record.status is not None else 0)
    metrics.flush_metrics()
    logger.info(
        "gateway request",
        extra={
            "route": record.route,
            "method": record.method,
            "request_id": record.request_id,
            "status": record.status,
            "latency_ms": latency_ms,
            "time_to_first_token_ms": first_token_ms,
            "tokens_out": record.tokens_out,
            "serving_instance_id": record.serving_instance_id,
            "stream_error": record.stream_error,
            "retries": record.retries,
            "resumes": record.resumes,
        },
    )


class RequestTelemetry:
    """ASGI middleware: times every request and publishes its metrics once the response has ended."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Callable[[], GatewaySettings | None],
        route_of: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(started=time.perf_counter(), method=scope["method"])
        scope.setdefault("state", {})[RECORD_KEY] = record

        async def observe_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_status)
        except Exception:
            # Starlette's outermost error middleware turns it into a 500 after we have returned.
            if record.status is None:
                record.status = 500
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            if template is None and self.route_of is not None:
                template = self.route_of(scope)
            record.route = template or UNMATCHED_ROUTE
            settings = self.settings()
            if settings is not None:
                publish(record, settings, time.perf_counter())
