"""Runs the functions' real handlers in-process, the way Lambda would invoke them."""

from __future__ import annotations

import datetime
import importlib.util
import sys
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
        if self.clock is not None:
            return self.clock.now()
        import time

        return time.monotonic()

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


def invoke_async(
    name: str,
    event: dict[str, Any],
    deps: Any,
    on_failure: Any,
    retries: int = 2,
    clock: Any = None,
    function_arn: str | None = None,
) -> Any:
    """Lambda's asynchronous invocation, which moto cannot run: the first try plus ``retries`` retries, then
    the OnFailure destination receives AWS's invocation record with the original event as ``requestPayload``.

    ``on_failure(record)`` stands for the destination (e.g. a send to the SQS dead-letter queue).
    Returns the handler's result, or None when the event went to the destination.
    """
    error: BaseException | None = None
    for _attempt in range(1 + retries):
        try:
            return invoke(name, event, deps, clock=clock)
        except Exception as failure:  # Lambda records any unhandled error the same way
            error = failure
    arn = function_arn or f"arn:aws:lambda:us-east-1:123456789012:function:spotkeeper-{name}"
    on_failure(
        {
            "version": "1.0",
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": f"{arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 1 + retries,
            },
            "requestPayload": event,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": {"errorMessage": str(error), "errorType": type(error).__name__},
        }
    )
    return None
