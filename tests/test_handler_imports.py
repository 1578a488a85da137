"""What a control handler imports at cold start: nothing its events do not need (README, cold start).

pydantic (with its schema building) cost a control function's import about as much as boto3 itself; the control
functions validate with msgspec, and only the gateway (FastAPI) loads pydantic. Each handler is imported in a fresh
interpreter, its folder and the layer's source first on sys.path, as Lambda orders /var/task and /opt/python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTROL_FUNCTIONS = ("interruption", "lifecycle", "health", "capacity", "authorizer")
HEAVY = ("pydantic", "pydantic_core", "fastapi", "aws_lambda_powertools.utilities.parser", "httpx", "aws_xray_sdk")

PROBE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import app
print(json.dumps(sorted(name for name in sys.modules if name in sys.argv[3].split(","))))
"""


def _imported(function: str, **variables: str) -> list[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("POWERTOOLS_", "PYTHON", "TRACE_"))}
    env.update(AWS_DEFAULT_REGION="us-east-1", POWERTOOLS_SERVICE_NAME="spotkeeper", PYTHONDONTWRITEBYTECODE="1")
    env.update(variables)
    done = subprocess.run(  # noqa: S603 - this interpreter importing the repository's handler
        [
            sys.executable,
            "-c",
            PROBE,
            str(ROOT / "functions" / function),
            str(ROOT / "layers" / "spotkeeper"),
            ",".join(HEAVY),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT / "functions" / function,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("function", CONTROL_FUNCTIONS)
def test_a_control_handler_imports_neither_pydantic_nor_httpx_nor_the_xray_sdk(function: str):
    # httpx is imported on a TGI probe's first use (tgi.TgiClient), never by the import of a handler; the X-Ray SDK
    # only when TRACE_AWS_CALLS asks for a subsegment per AWS call.
    assert _imported(function) == []
    assert _imported(function, TRACE_AWS_CALLS="false") == []


@pytest.mark.parametrize("function", ["interruption", "lifecycle", "health", "capacity"])
def test_trace_aws_calls_wraps_the_handler_in_powertools_tracer(function: str):
    assert _imported(function, TRACE_AWS_CALLS="true") == ["aws_xray_sdk"]


def test_the_probe_sees_what_the_gateway_imports():
    # The same probe on the gateway: it does load pydantic and FastAPI, so an empty list above means something.
    assert {"pydantic", "fastapi", "httpx"} <= set(_imported("gateway"))


def test_traced_is_the_handler_itself_unless_trace_aws_calls_is_true(monkeypatch: pytest.MonkeyPatch):
    from spotkeeper import observability

    def handler(event: dict, context: object) -> str:
        return "done"

    monkeypatch.delenv("TRACE_AWS_CALLS", raising=False)
    assert observability.traced(handler) is handler
    monkeypatch.setenv("TRACE_AWS_CALLS", "true")
    wrapped = observability.traced(handler)
    assert wrapped is not handler and wrapped.__wrapped__ is handler  # type: ignore[attr-defined]
