"""Errors the gateway answers with, all in TGI's own shape: ``{"error": "...", "error_type": "..."}``.

Clients written for TGI (huggingface_hub, text-generation) parse that shape, so the gateway's own failures
(validation, limits, an unreachable backend) look exactly like TGI's.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse

VALIDATION = "validation"
UNAVAILABLE = "unavailable"
GENERATION = "generation"
PAYLOAD_TOO_LARGE = "payload_too_large"
TIMEOUT = "timeout"
BACKEND = "backend"

# TGI's InferError::Overloaded (429), also the message of its chat route's error event.
OVERLOADED_MESSAGE = "Model is overloaded"


class ErrorBody(BaseModel):
    """TGI's error body."""

    error: str
    error_type: str


class GatewayError(Exception):
    """An error the gateway answers itself, with a status and TGI's error shape."""

    status_code = 500
    error_type = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        return {}

    def response(self) -> JSONResponse:
        return error_response(self.status_code, self.message, self.error_type, self.headers())


class InputValidationError(GatewayError):
    status_code = 422
    error_type = VALIDATION


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = PAYLOAD_TOO_LARGE


class BackendUnavailable(GatewayError):
    """No serving instance, or it cannot be reached: the client should come back after a failover."""

    status_code = 503
    error_type = UNAVAILABLE

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class BackendTimeout(GatewayError):
    """The backend accepted the request but did not answer in time."""

    status_code = 504
    error_type = TIMEOUT


class BackendProtocolError(GatewayError):
    """The backend answered something that is not HTTP/TGI."""

    status_code = 502
    error_type = BACKEND


def error_response(
    status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"error": message, "error_type": error_type}, headers=headers)


def sse_error_event(message: str, error_type: str = GENERATION) -> bytes:
    """The event TGI itself sends when a generation fails after the stream started."""
    return b"data: " + json.dumps({"error": message, "error_type": error_type}).encode() + b"\n\n"


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One readable line from pydantic/FastAPI validation errors, e.g. ``parameters.top_p: must be < 1``."""
    parts = []
    for problem in errors[:5]:
        if problem.get("type") == "json_invalid":
            detail = (problem.get("ctx") or {}).get("error", "")
            parts.append(f"body is not valid JSON ({detail})" if detail else "body is not valid JSON")
            continue
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        where = ".".join(location) or "body"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "Input validation error: " + "; ".join(parts)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Request body is not decodable"},
    413: {"model": ErrorBody, "description": "Request body larger than MAX_BODY_BYTES"},
    422: {"model": ErrorBody, "description": "Input validation error (gateway limits or TGI's own)"},
    424: {"model": ErrorBody, "description": "Generation error (from TGI)"},
    429: {"model": ErrorBody, "description": "Model is overloaded (from TGI)"},
    503: {"model": ErrorBody, "description": "No reachable serving instance (failover); see Retry-After"},
}
