"""AWS API throttling and 5xx bursts for the drill: errors that go through botocore's real retry path.

A ``before-send`` handler answers instead of the embedded AWS with the error body each protocol uses (query XML
for Auto Scaling and SNS, EC2's own XML, DynamoDB's JSON); botocore parses it, its retry handler sees a retryable
error and sends again, as it would against AWS during a throttling or 5xx burst. ``tests/faults.py`` builds its
per-test injector on the same answers.

``FaultWindows`` is what a scenario file's ``aws-throttling`` / ``aws-5xx`` actions open: for ``seconds`` of
simulated time, the first ``failures_per_call`` attempts of every call to the service fail.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
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


def attempt_of(request: Any) -> int:
    """The attempt number (0 = first) botocore puts in the amz-sdk-request header (standard/adaptive retries)."""
    header = request.headers.get("amz-sdk-request", b"attempt=1")
    header = header.decode() if isinstance(header, bytes) else header
    return int(header.split(";")[0].split("=")[1]) - 1


def answer_instead(request: Any, service: str, table: dict[str, tuple[int, str, str]]) -> AWSResponse:
    status, code, message = table[service]
    url = request.url
    # Every before-send handler runs; point this attempt elsewhere so the embedded AWS does not also carry it out.
    request.url = "https://fault-injected.invalid/"
    return error_response(service, url, status, code, message)


@dataclass
class FaultWindows:
    """Open windows of throttling or 5xx per service, on a clock; installed on a session and its clients."""

    clock: Callable[[], float]
    windows: dict[str, tuple[float, str, int]] = field(default_factory=dict)  # service -> (until, kind, failures)
    injected: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, service: str, kind: str, seconds: float, failures_per_call: int) -> None:
        if service not in THROTTLE or kind not in ("throttling", "5xx"):
            raise ValueError(f"no {kind} faults for {service}")
        self.windows[service] = (self.clock() + seconds, kind, failures_per_call)

    def _before_send(self, request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
        parts = event_name.split(".")
        service = parts[1].replace("-", "") if len(parts) > 2 else ""  # "auto-scaling" is autoscaling
        window = self.windows.get(service)
        if window is None or self.clock() >= window[0]:
            return None
        until, kind, failures = window
        if attempt_of(request) >= failures:
            return None
        with self._lock:
            self.injected[f"{service}.{parts[-1]}"] += 1
        return answer_instead(request, service, THROTTLE if kind == "throttling" else SERVER_ERROR)

    @property
    def total(self) -> int:
        return sum(self.injected.values())

    def install(self, session: Any, clients: list[Any]) -> None:
        """On ``session`` (for the clients it builds from now on) and on each of ``clients`` built before."""
        session.events.register_first("before-send", self._before_send, unique_id="spotkeeper-drill-faults")
        for client in clients:
            client.meta.events.register_first("before-send", self._before_send, unique_id="spotkeeper-drill-faults")
