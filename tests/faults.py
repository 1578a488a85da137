"""Fault injection for AWS calls: throttling and 5xx answers that go through botocore's real retry path.

A ``before-send`` handler answers instead of moto with the error body each protocol uses (query XML for
Auto Scaling and SNS, EC2's own XML, DynamoDB's JSON). botocore parses it, its retry handler sees a
retryable error and sends again, as it would against AWS.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse

THROTTLE = {
    "autoscaling": (400, "Throttling", "Rate exceeded"),
    "sns": (400, "Throttling", "Rate exceeded"),
    "ec2": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "dynamodb": (400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."),
}
SERVER_ERROR = {
    "autoscaling": (500, "InternalFailure", "We encountered an internal error."),
    "sns": (500, "InternalError", "Internal error"),
    "ec2": (500, "InternalError", "An internal error has occurred"),
    "dynamodb": (500, "InternalServerError", "Internal server error"),
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def error_response(service: str, url: str, status: int, code: str, message: str) -> AWSResponse:
    if service == "dynamodb":
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": code}
    elif service == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            "<RequestID>fault</RequestID></Response>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    else:
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            "<RequestId>fault</RequestId></ErrorResponse>"
        ).encode()
        headers = {"Content-Type": "text/xml"}
    return AWSResponse(url, status, headers, _Raw(body))


@dataclass
class FaultInjector:
    """Fails the first ``failures_per_call`` attempts of every matching API call, alternating throttle and 5xx."""

    failures_per_call: int = 2
    only: set[str] | None = None  # operation names; None = every operation
    injected: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, client: Any) -> Any:
        service = client.meta.service_model.endpoint_prefix

        def before_send(request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
            operation = event_name.rsplit(".", 1)[-1]
            if self.only is not None and operation not in self.only:
                return None
            # botocore numbers the attempts of one call in this header (standard and adaptive retry modes).
            header = request.headers.get("amz-sdk-request", b"attempt=1")
            header = header.decode() if isinstance(header, bytes) else header
            attempt = int(header.split(";")[0].split("=")[1]) - 1
            if attempt >= self.failures_per_call:
                return None
            with self._lock:
                self.injected[f"{service}.{operation}"] += 1
            table = THROTTLE if attempt % 2 == 0 else SERVER_ERROR
            status, code, message = table[service]
            url = request.url
            # Every before-send handler runs; point this attempt elsewhere so moto does not also carry it out.
            request.url = "https://fault-injected.invalid/"
            return error_response(service, url, status, code, message)

        # First, so it answers before moto does.
        client.meta.events.register_first("before-send", before_send)
        return client

    @property
    def total(self) -> int:
        return sum(self.injected.values())
