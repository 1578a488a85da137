"""Logger, Tracer and Metrics, created once, and the names of the metrics; every module imports them from here.

The Tracer is built on first use: constructing it imports the X-Ray SDK (with wrapt and asyncio) and patches
botocore, about 0.15x `import boto3` at a control function's cold start, even with POWERTOOLS_TRACE_DISABLED
(Powertools imports the SDK's recorder either way). Lambda's own segments for each invocation need no SDK
(`Tracing: Active`), so a control handler is traced with the SDK, one subsegment per AWS call, only when
TRACE_AWS_CALLS is "true" (template parameter TraceAwsCalls); see ``traced``. The gateway logs and publishes
metrics but is not traced per request.
"""

import os
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger, Metrics

logger = Logger()
metrics = Metrics()


class MetricName(StrEnum):
    """Every metric spotkeeper publishes: the alarms and the dashboard in template.yaml watch these names."""

    # the health probe
    HEALTHY = "Healthy"
    PROBE_LATENCY = "ProbeLatency"
    QUEUE_SIZE = "QueueSize"
    # interruptions
    INTERRUPTIONS = "Interruptions"
    REBALANCE_RECOMMENDATIONS = "RebalanceRecommendations"
    # capacity (the probe publishes the mode too)
    CAPACITY_MODE = "CapacityMode"
    FALLBACK_ACTIVE = "FallbackActive"
    # the gateway, per route
    GATEWAY_REQUESTS = "GatewayRequests"
    GATEWAY_ERRORS = "GatewayErrors"
    GATEWAY_LATENCY = "GatewayLatency"
    GATEWAY_RETRIES = "GatewayRetries"  # a request retried on another replica before its first byte
    GATEWAY_RESUMES = "GatewayResumes"  # a broken stream continued on another replica
    TIME_TO_FIRST_TOKEN = "TimeToFirstToken"  # noqa: S105 - a metric name, not a secret
    TOKENS_OUT = "TokensOut"


def traces_aws_calls() -> bool:
    return os.environ.get("TRACE_AWS_CALLS", "false").strip().lower() == "true"


def traced[F: Callable[..., Any]](handler: F) -> F:
    """``tracer.capture_lambda_handler`` when TRACE_AWS_CALLS is "true", else the handler itself (no X-Ray SDK)."""
    if not traces_aws_calls():
        return handler
    return _tracer().capture_lambda_handler(handler)


def _tracer() -> Any:
    built = globals().get("tracer")
    if built is None:
        from aws_lambda_powertools import Tracer

        # Only AWS SDK calls are traced; TGI probes through httpx would add a subsegment per poll.
        built = Tracer(patch_modules=("botocore",))
        globals()["tracer"] = built
    return built


def __getattr__(name: str) -> Any:
    if name == "tracer":
        return _tracer()
    raise AttributeError(name)
