"""Runs the functions' real handlers in-process, the way Lambda would invoke them."""

from __future__ import annotations

import datetime
import importlib.util
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"


def load_function(name: str) -> ModuleType:
    """Import functions/<name>/app.py under a unique module name (every function's module is called app)."""
    module_name = f"spotkeeper_function_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, FUNCTIONS_DIR / name / "app.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"no function named {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools use; time can be simulated."""

    function_name: str
    timeout_seconds: float = 300.0
    clock: Any = None
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _started: float = 0.0

    def __post_init__(self) -> None:
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
        self.function_version = "$LATEST"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"
        self._started = self._now()

    def _now(self) -> float:
        return self.clock.now() if self.clock is not None else time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self.timeout_seconds - (self._now() - self._started)) * 1000)


def invoke(name: str, event: dict[str, Any], deps: Any = None, clock: Any = None, timeout: float = 300.0) -> Any:
    """Invoke function ``name`` with ``event``. ``deps`` replaces the wiring the handler builds from its
    environment (the local runtime's clients, clock and TGI addresses); exceptions propagate as in Lambda."""
    module = load_function(name)
    if deps is not None:
        for attribute in ("control_deps", "capacity_deps"):
            if hasattr(module, attribute):
                setattr(module, attribute, lambda deps=deps: deps)
    return module.lambda_handler(
        event, LambdaContext(function_name=f"spotkeeper-{name}", timeout_seconds=timeout, clock=clock)
    )


# Lambda's asynchronous invocation, which moto cannot run (the template's EventInvokeConfig: MaximumRetryAttempts
# 2): a failed event is tried again about one, then two minutes later; then its record goes to the OnFailure
# destination. The drill schedules the retries on its clock; ``invoke_async`` sleeps them on the one it is given.
RETRY_DELAYS = (60.0, 120.0)


def retry_delay(attempt: int, retries: int = len(RETRY_DELAYS)) -> float | None:
    """Seconds until the next try after try ``attempt`` (1 = the first) failed; None once retries are exhausted."""
    if attempt > retries:
        return None
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1]


def failure_record(name: str, event: dict[str, Any], error: BaseException | str, tries: int, at: float) -> dict:
    """What Lambda sends the OnFailure destination once the retries are exhausted: the original event is the
    ``requestPayload``; ``error`` is the last exception (or its "Type: message" text)."""
    if isinstance(error, BaseException):
        error_type, message = type(error).__name__, str(error)
    else:
        error_type, _, message = error.partition(": ")
    return {
        **_record_head(name, event, "RetriesExhausted", tries, at),
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": message, "errorType": error_type},
    }


def expiry_record(name: str, event: dict[str, Any], tries: int, at: float) -> dict:
    """What Lambda sends the OnFailure destination for an event that grew older than MaximumEventAgeInSeconds
    in its queue (throttled all that time): never run, so no response."""
    return _record_head(name, event, "EventAgeExceeded", tries, at)


def _record_head(name: str, event: dict[str, Any], condition: str, tries: int, at: float) -> dict:
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")
    return {
        "version": "1.0",
        "timestamp": stamp.replace("+00:00", "Z"),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"arn:aws:lambda:us-east-1:123456789012:function:spotkeeper-{name}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": tries,
        },
        "requestPayload": event,
    }


# Lambda's asynchronous invocation when the function has no concurrency free (a function's reserved concurrency
# is its ceiling, per function): the throttled event goes back to the function's queue and is tried again, "1
# second after the first attempt" and exponentially longer "to a maximum of 5 minutes", until it is older than
# the function's MaximumEventAgeInSeconds (6 hours by default); then it is dropped to the OnFailure destination.
# https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html
THROTTLE_FIRST_RETRY = 1.0
THROTTLE_MAX_RETRY = 300.0
DEFAULT_MAXIMUM_EVENT_AGE = 21600.0


@dataclass(eq=False)
class QueuedEvent:
    """An event in a function's asynchronous queue: when it arrived, when it is tried next, how often it was
    throttled."""

    function: str
    event: dict[str, Any]
    arrived: float
    next_try: float
    throttles: int = 0

    def throttled(self, now: float) -> None:
        """No concurrency was free at ``now``: tried again later, the interval doubling from 1 s to 5 minutes."""
        self.throttles += 1
        self.next_try = now + min(THROTTLE_MAX_RETRY, THROTTLE_FIRST_RETRY * 2 ** (self.throttles - 1))

    def expired(self, now: float, maximum_age: float = DEFAULT_MAXIMUM_EVENT_AGE) -> bool:
        return now - self.arrived > maximum_age


class AsyncQueues:
    """Lambda's asynchronous queues of the functions: which queued event runs next, which wait throttled (a
    function at its concurrency ceiling), which expire (``maximum_age``: function -> MaximumEventAgeInSeconds)."""

    def __init__(self, maximum_age: dict[str, float] | None = None) -> None:
        self.maximum_age = maximum_age or {}
        self.queued: list[QueuedEvent] = []
        self.running: dict[str, int] = {}

    def put(self, function: str, event: dict[str, Any], now: float) -> None:
        self.queued.append(QueuedEvent(function, event, now, now))

    def next(self, now: float, limit: int | None = None) -> tuple[QueuedEvent | None, list[QueuedEvent]]:
        """The oldest event due whose function has an execution free (``limit`` per function, None: no ceiling;
        None: nothing can run now), and the events that expired meanwhile (removed: the caller sends them to the
        OnFailure destination). An event due whose function has none free is throttled: tried again later."""
        age = self.maximum_age
        expired = [q for q in self.queued if q.expired(now, age.get(q.function, DEFAULT_MAXIMUM_EVENT_AGE))]
        self.queued = [q for q in self.queued if q not in expired]
        for queued in sorted(self.queued, key=lambda q: (q.next_try, q.arrived)):
            if queued.next_try > now:
                break
            if limit is not None and self.running.get(queued.function, 0) >= limit:
                queued.throttled(now)
                continue
            self.queued.remove(queued)
            return queued, expired
        return None, expired

    def started(self, function: str) -> None:
        self.running[function] = self.running.get(function, 0) + 1

    def ended(self, function: str) -> None:
        self.running[function] -= 1


def invoke_async(
    name: str, event: dict[str, Any], deps: Any, on_failure: Any, retries: int = len(RETRY_DELAYS), clock: Any = None
) -> Any:
    """Invoke ``name`` as Lambda's asynchronous invocation does: the first try plus ``retries`` retries (slept on
    ``clock`` when given), then ``on_failure(record)`` (the OnFailure destination, e.g. a send to the DLQ).

    Returns the handler's result, or None when the event went to the destination.
    """
    attempt = 1
    while True:
        try:
            return invoke(name, event, deps, clock=clock)
        except Exception as error:  # Lambda records any unhandled error the same way
            delay = retry_delay(attempt, retries)
            if delay is None:
                on_failure(failure_record(name, event, error, attempt, clock.now() if clock else time.time()))
                return None
        if clock is not None:
            clock.sleep(delay)
        attempt += 1
