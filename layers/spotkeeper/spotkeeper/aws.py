"""boto3 clients, built lazily once per process with bounded retries: the one place boto3 is configured.

Standard retry mode retries throttling and 5xx with backoff and a retry quota. The control functions retry
patiently (RETRY_CONFIG), so a burst of throttling during a regional Spot event slows spotkeeper down instead
of failing the reaction half-way; the request path (gateway, authorizer) answers a waiting client, so it
gives up fast (REQUEST_PATH_CONFIG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config

RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 6},
    connect_timeout=3,
    read_timeout=10,
)
# A slow table must not hold a client's request longer than the gateway's failover bound.
REQUEST_PATH_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 2},
    connect_timeout=2,
    read_timeout=2,
)


@dataclass
class AwsClients:
    session: Any = None
    config: Config = field(default=RETRY_CONFIG)

    def boto3_session(self) -> Any:
        if self.session is None:
            self.session = boto3.session.Session()
        return self.session

    @cached_property
    def autoscaling(self) -> Any:
        return self.boto3_session().client("autoscaling", config=self.config)

    @cached_property
    def ec2(self) -> Any:
        return self.boto3_session().client("ec2", config=self.config)

    @cached_property
    def sns(self) -> Any:
        return self.boto3_session().client("sns", config=self.config)

    @cached_property
    def cloudwatch(self) -> Any:
        return self.boto3_session().client("cloudwatch", config=self.config)

    @cached_property
    def cloudformation(self) -> Any:
        return self.boto3_session().client("cloudformation", config=RETRY_CONFIG)

    def table(self, name: str) -> Any:
        return self.boto3_session().resource("dynamodb", config=self.config).Table(name)


class LazyClient:
    """Stands for a client or resource built on first use: a cold start only pays for what its path needs."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)


def error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))
