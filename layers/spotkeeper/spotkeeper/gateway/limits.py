"""The gateway's own limits, applied before anything reaches TGI, and the bodies sent upstream.

Bodies sent to TGI are rebuilt from the validated models, so only what the gateway checked reaches the
backend.
"""

from __future__ import annotations

from typing import Any

from spotkeeper.gateway.errors import InputValidationError
from spotkeeper.gateway.models import ChatCompletionRequest, CompletionRequest, GenerateRequest
from spotkeeper.settings import GatewaySettings


def _check_input_length(length: int, settings: GatewaySettings) -> None:
    if length > settings.max_input_chars:
        raise InputValidationError(
            f"Input validation error: inputs must have less than {settings.max_input_chars} characters. Given: {length}"
        )


def _check_new_tokens(requested: int | None, field: str, settings: GatewaySettings) -> None:
    if requested is not None and requested > settings.max_new_tokens:
        raise InputValidationError(
            f"Input validation error: `{field}` must be <= {settings.max_new_tokens}. Given: {requested}"
        )


def _stop_list(stop: str | list[str] | None) -> list[str] | None:
    # OpenAI allows a single string; TGI's OpenAI routes take a list.
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else stop


def generate_body(request: GenerateRequest, settings: GatewaySettings) -> dict[str, Any]:
    _check_input_length(len(request.inputs), settings)
    _check_new_tokens(request.parameters.max_new_tokens, "max_new_tokens", settings)
    return {
        "inputs": request.inputs,
        "parameters": request.parameters.model_dump(mode="json", exclude_none=True),
    }


def chat_body(request: ChatCompletionRequest, settings: GatewaySettings) -> dict[str, Any]:
    _check_input_length(request.input_length(), settings)
    requested = request.requested_tokens()
    _check_new_tokens(requested, "max_tokens", settings)
    body = request.model_dump(mode="json", exclude_none=True, exclude={"max_completion_tokens", "stop"})
    # Without max_tokens TGI generates up to its max_total_tokens; the gateway's cap bounds every request.
    body["max_tokens"] = requested if requested is not None else settings.max_new_tokens
    stop = _stop_list(request.stop)
    if stop is not None:
        body["stop"] = stop
    return body


def completion_body(request: CompletionRequest, settings: GatewaySettings) -> dict[str, Any]:
    _check_input_length(request.input_length(), settings)
    _check_new_tokens(request.max_tokens, "max_tokens", settings)
    body = request.model_dump(mode="json", exclude_none=True, exclude={"stop"})
    body["max_tokens"] = request.max_tokens if request.max_tokens is not None else settings.max_new_tokens
    stop = _stop_list(request.stop)
    if stop is not None:
        body["stop"] = stop
    return body
