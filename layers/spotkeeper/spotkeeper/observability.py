"""Logger, Tracer and Metrics, created once; every module imports them from here.

The Tracer is built on first use: constructing it imports the X-Ray SDK and patches botocore, which only the
decorated control handlers need (the gateway logs and publishes metrics but is not traced per request).
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics

logger = Logger()
metrics = Metrics()


def __getattr__(name: str) -> Any:
    if name == "tracer":
        from aws_lambda_powertools import Tracer

        # Only AWS SDK calls are traced; TGI probes through httpx would add a subsegment per poll.
        tracer = Tracer(patch_modules=("botocore",))
        globals()["tracer"] = tracer
        return tracer
    raise AttributeError(name)
