"""The gateway's HTTP API: TGI's own routes and TGI's OpenAI-compatible ones, in front of the serving instance.

``create_app()`` builds the FastAPI app; settings, the keep-alive HTTP client and the backend resolver are
created in the lifespan (once per process, validated there: a misconfigured gateway does not start).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match
from starlette.types import Scope

from spotkeeper.gateway.backend import BackendResolver, resolver_for
from spotkeeper.gateway.body_limit import BodySizeLimit
from spotkeeper.gateway.chat_resume import plan_chat
from spotkeeper.gateway.errors import (
    ERROR_RESPONSES,
    VALIDATION,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    describe_validation_errors,
    error_response,
)
from spotkeeper.gateway.limits import chat_body, completion_body, generate_body
from spotkeeper.gateway.models import (
    ChatCompletionRequest,
    CompatGenerateRequest,
    CompletionRequest,
    GatewayHealth,
    GenerateRequest,
    GenerateResponse,
    Ping,
)
from spotkeeper.gateway.resume import Plan, plan_completion, plan_generate
from spotkeeper.gateway.streaming import OverloadRetry, Resumption, relay_events
from spotkeeper.gateway.telemetry import RequestRecord, RequestTelemetry, request_record
from spotkeeper.gateway.upstream import PROBE_READ_TIMEOUT_SECONDS, TgiUpstream, Upstream, new_client
from spotkeeper.observability import logger
from spotkeeper.settings import GatewaySettings

DESCRIPTION = """\
The spotkeeper gateway: Hugging Face TGI's API (`/generate`, `/generate_stream`, `/info`, `/health`) and its
OpenAI-compatible routes (`/v1/chat/completions`, `/v1/completions`), proxied to the serving instance.
During a failover it answers `503` with `Retry-After`; every error has TGI's shape
`{"error": "...", "error_type": "..."}`.
"""

# One server-sent event: TGI sends a JSON document per `data:` line (OpenAI routes end with `data: [DONE]`).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"data": {"type": "string", "description": "A JSON token event, TGI error event, or [DONE]"}},
    "required": ["data"],
}

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events, one `data:` JSON per token, as TGI emits them",
        "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
    }
}
JSON_OR_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or server-sent events when `stream` is true",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
        },
    }
}

COMPAT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A one-element JSON list (TGI's compatibility shape), or server-sent events when `stream`",
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "text/event-stream": {"schema": SSE_EVENT_SCHEMA},
        },
    }
}

TokenCounter = Callable[[httpx.Response, Any], int | None]


@dataclass(frozen=True)
class GatewayRuntime:
    settings: GatewaySettings
    upstream: TgiUpstream


def _runtime(request: Request) -> GatewayRuntime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise RuntimeError("the gateway's lifespan has not run: serve the app with an ASGI server")
    return runtime


# token counts for metrics -------------------------------------------------------------------------------


def _tgi_generated_tokens(response: httpx.Response, body: Any) -> int | None:
    header = response.headers.get("x-generated-tokens", "")
    if header.isdigit():
        return int(header)
    if isinstance(body, dict) and isinstance(body.get("details"), dict):
        tokens = body["details"].get("generated_tokens")
        return tokens if isinstance(tokens, int) else None
    return None


def _openai_completion_tokens(response: httpx.Response, body: Any) -> int | None:
    if isinstance(body, dict) and isinstance(body.get("usage"), dict):
        tokens = body["usage"].get("completion_tokens")
        return tokens if isinstance(tokens, int) else None
    return None


# relaying -----------------------------------------------------------------------------------------------


async def _open(
    runtime: GatewayRuntime,
    record: RequestRecord | None,
    method: str,
    path: str,
    payload: object | None = None,
    read_timeout: float | None = None,
) -> Upstream:
    upstream = await runtime.upstream.open(
        method, path, payload, request_id=record.request_id if record else None, read_timeout=read_timeout
    )
    if record is not None:
        record.serving_instance_id = upstream.backend.instance_id
        record.retries += int(upstream.retried)
    return upstream


def _resumption(runtime: GatewayRuntime, record: RequestRecord | None, plan: Plan | None) -> Resumption | None:
    """How a broken stream of this request continues on another replica (None: it ends with an error event)."""
    if plan is None:
        return None
    request_id = record.request_id if record else None

    async def open_(path: str, body: dict[str, Any], read_timeout: float | None, exclude: frozenset[str]) -> Upstream:
        return await runtime.upstream.open(
            "POST", path, body, request_id=request_id, read_timeout=read_timeout, exclude=exclude
        )

    return Resumption(plan, open_)


def _overload_retry(
    runtime: GatewayRuntime, record: RequestRecord | None, path: str, payload: dict[str, Any]
) -> OverloadRetry:
    async def retry(exclude: frozenset[str]) -> Upstream | None:
        request_id = record.request_id if record else None
        return await runtime.upstream.open_elsewhere("POST", path, payload, exclude=exclude, request_id=request_id)

    return retry


async def _finish_json(
    runtime: GatewayRuntime, upstream: Upstream, record: RequestRecord | None, count_tokens: TokenCounter | None
) -> Response:
    """Read TGI's (small, non-streamed) answer and pass it on: status, body and TGI's x-* headers."""
    try:
        content = await upstream.response.aread()
    except httpx.ReadTimeout as error:
        raise BackendTimeout("TGI did not finish answering in time") from error
    except httpx.HTTPError as error:
        raise BackendUnavailable(
            f"the backend failed during the request ({type(error).__name__}); retry the request",
            runtime.settings.retry_after_seconds,
        ) from error
    finally:
        await upstream.close()
    status = upstream.response.status_code
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if status >= 400 and not (isinstance(body, dict) and "error" in body):
        # Plain-text rejections (axum's 400/415, an empty 404) still reach clients in TGI's error shape.
        if status >= 500:
            raise BackendProtocolError(f"TGI answered {status} without an error body")
        detail = content.decode(errors="replace").strip()[:500] or upstream.response.reason_phrase
        return error_response(status, detail, _error_type_for(status), upstream.relay_headers())
    if status == 200 and count_tokens is not None and record is not None:
        record.tokens_out = count_tokens(upstream.response, body)
    return Response(
        content=content,
        status_code=status,
        headers=upstream.relay_headers(),
        media_type=upstream.response.headers.get("content-type", "application/json"),
    )


async def _relay(
    runtime: GatewayRuntime,
    request: Request,
    path: str,
    payload: dict[str, Any],
    *,
    stream: bool,
    count_tokens: TokenCounter,
    resume: Plan | None = None,
) -> Response:
    record = request_record(request.scope)
    upstream = await _open(runtime, record, "POST", path, payload)
    content_type = upstream.response.headers.get("content-type", "")
    if not stream or upstream.response.status_code != 200 or "text/event-stream" not in content_type:
        # Errors before the first token come as plain JSON, with TGI's status (422, 424, 429, ...).
        return await _finish_json(runtime, upstream, record, count_tokens)
    return StreamingResponse(
        relay_events(
            upstream,
            record,
            _resumption(runtime, record, resume),
            _overload_retry(runtime, record, path, payload),
        ),
        # Given as a header so Starlette does not add a charset TGI never sends.
        headers={
            **upstream.relay_headers(),
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        },
    )


# app ----------------------------------------------------------------------------------------------------


def _route_template(app: FastAPI, scope: Scope) -> str | None:
    """The route a request was (or would have been) served by, for requests refused before routing."""
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None)
    return None


def _error_type_for(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        status, VALIDATION if status == 422 else "http_error"
    )


def create_app(
    settings: GatewaySettings | None = None,
    resolver: BackendResolver | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway app. Without arguments, settings come from the environment when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = settings if settings is not None else GatewaySettings.from_environ()
        client = new_client(active, transport)
        backend = resolver if resolver is not None else resolver_for(active)
        app.state.runtime = GatewayRuntime(settings=active, upstream=TgiUpstream(client, backend, active))
        logger.info(
            "gateway started",
            extra={"fixed_backend": active.fixed_backend_url is not None, "group": active.group_name},
        )
        try:
            yield
        finally:
            app.state.runtime = None
            await client.aclose()

    app = FastAPI(title="spotkeeper gateway", version="1", description=DESCRIPTION, lifespan=lifespan)

    def current_settings() -> GatewaySettings | None:
        runtime = getattr(app.state, "runtime", None)
        return runtime.settings if runtime is not None else None

    def body_limit() -> int | None:
        active = current_settings()
        return active.max_body_bytes if active is not None else None

    # The last added middleware is the outermost: telemetry sees every response, including 413s.
    app.add_middleware(BodySizeLimit, limit=body_limit)
    app.add_middleware(RequestTelemetry, settings=current_settings, route_of=lambda scope: _route_template(app, scope))

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation_errors(list(error.errors())), VALIDATION)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), _error_type_for(error.status_code), error.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected gateway error")
        return error_response(500, "internal gateway error", "internal")

    runtime_dependency = Depends(_runtime)

    @app.post(
        "/generate",
        tags=["TGI"],
        summary="Generate tokens",
        response_model=None,
        responses={200: {"model": GenerateResponse}, **ERROR_RESPONSES},
    )
    async def generate(
        body: GenerateRequest, request: Request, runtime: GatewayRuntime = runtime_dependency
    ) -> Response:
        payload = generate_body(body, runtime.settings)
        return await _relay(runtime, request, "/generate", payload, stream=False, count_tokens=_tgi_generated_tokens)

    @app.post(
        "/generate_stream",
        tags=["TGI"],
        summary="Generate a stream of token events",
        response_model=None,
        responses={**SSE_RESPONSE, **ERROR_RESPONSES},
    )
    async def generate_stream(
        body: GenerateRequest, request: Request, runtime: GatewayRuntime = runtime_dependency
    ) -> Response:
        payload = generate_body(body, runtime.settings)
        return await _relay(
            runtime,
            request,
            "/generate_stream",
            payload,
            stream=True,
            count_tokens=_tgi_generated_tokens,
            resume=plan_generate("/generate_stream", payload, runtime.settings.max_new_tokens),
        )

    @app.post(
        "/",
        tags=["TGI"],
        summary="Generate tokens, streamed if `stream` is true (TGI's compatibility route)",
        response_model=None,
        responses={**COMPAT_RESPONSE, **ERROR_RESPONSES},
    )
    async def compat_generate(
        body: CompatGenerateRequest, request: Request, runtime: GatewayRuntime = runtime_dependency
    ) -> Response:
        payload = generate_body(body, runtime.settings)
        # Forwarded to TGI's own "/" rather than rewritten: that route has its own defaults (a list body,
        # return_full_text from the model's pipeline tag) that its clients expect.
        payload["stream"] = body.stream
        return await _relay(
            runtime,
            request,
            "/",
            payload,
            stream=body.stream,
            count_tokens=_tgi_generated_tokens,
            resume=plan_generate("/", payload, runtime.settings.max_new_tokens),
        )

    @app.post(
        "/v1/chat/completions",
        tags=["OpenAI"],
        summary="Chat completion (OpenAI-compatible)",
        response_model=None,
        responses={**JSON_OR_SSE_RESPONSE, **ERROR_RESPONSES},
    )
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, runtime: GatewayRuntime = runtime_dependency
    ) -> Response:
        payload = chat_body(body, runtime.settings)
        return await _relay(
            runtime,
            request,
            "/v1/chat/completions",
            payload,
            stream=body.stream,
            count_tokens=_openai_completion_tokens,
            resume=plan_chat(payload, runtime.settings.max_new_tokens),
        )

    @app.post(
        "/v1/completions",
        tags=["OpenAI"],
        summary="Text completion (OpenAI-compatible)",
        response_model=None,
        responses={**JSON_OR_SSE_RESPONSE, **ERROR_RESPONSES},
    )
    async def completions(
        body: CompletionRequest, request: Request, runtime: GatewayRuntime = runtime_dependency
    ) -> Response:
        payload = completion_body(body, runtime.settings)
        return await _relay(
            runtime,
            request,
            "/v1/completions",
            payload,
            stream=body.stream,
            count_tokens=_openai_completion_tokens,
            resume=plan_completion("/v1/completions", payload, runtime.settings.max_new_tokens),
        )

    @app.get(
        "/info",
        tags=["TGI"],
        summary="The served model (TGI's /info)",
        response_model=None,
        responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, 503: ERROR_RESPONSES[503]},
    )
    async def info(request: Request, runtime: GatewayRuntime = runtime_dependency) -> Response:
        record = request_record(request.scope)
        upstream = await _open(runtime, record, "GET", "/info", read_timeout=PROBE_READ_TIMEOUT_SECONDS)
        return await _finish_json(runtime, upstream, record, None)

    @app.get(
        "/v1/models",
        tags=["OpenAI"],
        summary="The served model (OpenAI-compatible model list)",
        response_model=None,
        responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}, 503: ERROR_RESPONSES[503]},
    )
    async def models(request: Request, runtime: GatewayRuntime = runtime_dependency) -> Response:
        record = request_record(request.scope)
        upstream = await _open(runtime, record, "GET", "/v1/models", read_timeout=PROBE_READ_TIMEOUT_SECONDS)
        return await _finish_json(runtime, upstream, record, None)

    @app.get(
        "/health",
        tags=["TGI"],
        summary="200 when the gateway and TGI on the serving instance are ready, 503 otherwise",
        response_model=None,
        responses={200: {"model": GatewayHealth}, 503: ERROR_RESPONSES[503]},
    )
    async def health(request: Request, runtime: GatewayRuntime = runtime_dependency) -> Response:
        record = request_record(request.scope)
        retry_after = {"Retry-After": str(runtime.settings.retry_after_seconds)}
        try:
            upstream = await _open(runtime, record, "GET", "/health", read_timeout=PROBE_READ_TIMEOUT_SECONDS)
            await upstream.response.aread()
            await upstream.close()
        except (BackendUnavailable, BackendTimeout, BackendProtocolError, httpx.HTTPError) as error:
            message = error.message if isinstance(error, GatewayError) else type(error).__name__
            return JSONResponse(
                status_code=503,
                content={"error": message, "error_type": "healthcheck", "gateway": "ok", "backend": "unavailable"},
                headers=retry_after,
            )
        if upstream.response.status_code != 200:
            return JSONResponse(
                status_code=503,
                content={
                    "error": f"TGI on the serving instance is unhealthy ({upstream.response.status_code})",
                    "error_type": "healthcheck",
                    "gateway": "ok",
                    "backend": "unhealthy",
                },
                headers=retry_after,
            )
        return JSONResponse(
            GatewayHealth(gateway="ok", backend="ok", serving_instance_id=upstream.backend.instance_id).model_dump()
        )

    @app.get("/gateway/ping", tags=["Gateway"], summary="The gateway process is up (no backend call)")
    async def ping() -> Ping:
        return Ping(status="ok")

    return app
