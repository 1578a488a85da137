"""Logger, Tracer and Metrics, created once, and the names of the metrics; every module imports them from here.

The Tracer is built on first use: constructing it imports the X-Ray SDK and patches botocore, which only the
decorated control handlers need (the gateway logs and publishes metrics but is not traced per request).
"""

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


def __getattr__(name: str) -> Any:
    if name == "tracer":
        from aws_lambda_powertools import Tracer

        # Only AWS SDK calls are traced; TGI probes through httpx would add a subsegment per poll.
        tracer = Tracer(patch_modules=("botocore",))
        globals()["tracer"] = tracer
        return tracer
    raise AttributeError(name)
