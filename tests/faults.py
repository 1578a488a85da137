"""Fault injection for AWS calls: throttling and 5xx answers that go through botocore's real retry path.

A ``before-send`` handler answers instead of moto with the error body each protocol uses (query XML for
Auto Scaling and SNS, EC2's own XML, DynamoDB's JSON: ``spotkeeper_local.aws_faults``, which the drill's
scenario files use too). botocore parses it, its retry handler sees a retryable error and sends again.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse

from spotkeeper_local.aws_faults import SERVER_ERROR, THROTTLE, error_response


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
