"""A Hugging Face Text Generation Inference (TGI) server emulated on loopback.

spotkeeper's tests, the local drill and `make demo` need something that behaves like TGI on a Spot
instance without a GPU: a real HTTP server whose port stays closed while "the model loads", then serves
TGI's router API with TGI's JSON shapes, error bodies, SSE framing and Prometheus metric names, and that
can be made unhealthy, made to fail mid-generation, or killed (the instance reclaimed) on demand.

Shapes follow TGI's router (router/src/server.rs, router/src/lib.rs, docs/openapi.json, 2.x/3.x):

* ``GET /health`` and ``GET /ping``: 200 with an empty body, 503 ``{"error":"unhealthy","error_type":"healthcheck"}``.
* ``GET /info``: the ``Info`` object; ``GET /v1/models``: OpenAI model list; ``GET /metrics``: Prometheus text.
* ``POST /generate``, ``POST /generate_stream`` (SSE, one ``data:`` JSON per token), ``POST /`` (TGI's compat
  route used by ``huggingface_hub.InferenceClient``: a JSON *list* when not streaming, and
  ``return_full_text`` defaulting to true for a ``text-generation`` model, as TGI does).
* ``POST /v1/chat/completions`` and ``POST /v1/completions``, streaming or not, ``data: [DONE]`` terminated.
* Errors ``{"error", "error_type"}``: 422 validation, 424 generation, 429 overloaded. Streaming routes answer
  200 and carry the error as an SSE event, because that is what TGI does. Body-extraction failures are
  axum's plain-text rejections (415 wrong content type, 400 malformed JSON, 422 wrong field types).

Generation is deterministic: one token per word, each a pure function of (model_id, inputs, seed, position),
so a test computes the expected output with :func:`expected_text` / :func:`expected_tokens`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

logger = logging.getLogger(__name__)

TGI_VERSION = "3.3.4"
ROUTER_NAME = "text-generation-router"
DEFAULT_MODEL_ID = "mistralai/Mistral-7B-Instruct-v0.3"
DEFAULT_PORT = 8080
# GenerateParameters.max_new_tokens and the OpenAI routes' max_tokens default to 100 in TGI.
DEFAULT_MAX_NEW_TOKENS = 100
COMPUTE_TYPE = "gpu+optimized"

# Lifecycle states, readable through TgiEmulator.state.
CREATED = "created"
LOADING = "loading"
READY = "ready"
KILLED = "killed"
STOPPED = "stopped"
FAILED = "failed"

_VOCABULARY = (
    "spot", "capacity", "instance", "model", "token", "stream", "gateway", "health", "probe", "replace",
    "drain", "serve", "cheap", "endpoint", "latency", "queue", "batch", "shard", "weights", "cache",
    "warning", "rebalance", "launch", "terminate", "address", "elastic", "group", "scale", "fallback",
    "demand", "recover", "alert", "metric", "signal", "answer", "request", "prompt", "deep", "learning",
    "is", "a", "the", "of", "and", "to", "in", "that", "it", "for", "on", "with", "as", "was", "at",
    "by", "this", "from", "we", "can", "will", "be", "more", "new", "fast",
)  # fmt: skip
_FIRST_TOKEN_ID = 1000


# --------------------------------------------------------------------------------------------------
# Deterministic "model"
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token, serialised exactly like TGI's ``Token``."""

    id: int
    text: str
    logprob: float
    special: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


def count_tokens(text: str) -> int:
    """The emulator's tokenizer: one token per whitespace-separated word (whitespace alone is one token)."""
    words = len(text.split())
    if words:
        return words
    return 1 if text else 0


def _generation_digest(model_id: str, inputs: str, seed: int | None) -> bytes:
    return hashlib.sha256(f"{model_id}\x00{seed}\x00{inputs}".encode()).digest()


def _token_at(digest: bytes, position: int, *, after_space: bool = False) -> Token:
    draw = hashlib.sha256(digest + position.to_bytes(4, "big")).digest()
    index = int.from_bytes(draw[:4], "big") % len(_VOCABULARY)
    word = _VOCABULARY[index]
    logprob = -round(draw[4] / 255 * 2.5, 4)
    # Like SentencePiece/BPE word tokens the separator is part of the token ("▁Deep" -> " Deep"), so joining
    # token texts gives the text; a first token right after whitespace (chat templates end in "\n") has none.
    text = word if position == 0 and after_space else f" {word}"
    return Token(id=_FIRST_TOKEN_ID + index, text=text, logprob=logprob)


def _starts_after_space(inputs: str) -> bool:
    return not inputs or inputs[-1].isspace()


def generate_tokens(
    inputs: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    seed: int | None = None,
) -> list[Token]:
    """The tokens the emulator generates for these inputs (before any stop sequence cuts them short)."""
    digest = _generation_digest(model_id, inputs, seed)
    after_space = _starts_after_space(inputs)
    return [_token_at(digest, position, after_space=after_space) for position in range(max_new_tokens)]


def expected_tokens(
    inputs: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    seed: int | None = None,
) -> list[str]:
    """Token texts, in order, that ``/generate_stream`` emits for ``inputs`` (no stop sequences)."""
    return [token.text for token in generate_tokens(inputs, max_new_tokens, model_id=model_id, seed=seed)]


def expected_text(
    inputs: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    seed: int | None = None,
) -> str:
    """``generated_text`` of ``/generate`` for ``inputs`` (no stop sequences, ``return_full_text`` false)."""
    return "".join(expected_tokens(inputs, max_new_tokens, model_id=model_id, seed=seed))


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # TGI flattens multi-part content the same way before templating.
    parts = []
    for chunk in content:
        if chunk.get("type") == "image_url":
            parts.append(f"![]({chunk['image_url']['url']})")
        else:
            parts.append(str(chunk.get("text", "")))
    return "".join(parts)


def render_chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt the emulator's chat template builds from OpenAI-style messages (ChatML layout)."""
    rendered = "".join(
        f"<|im_start|>{message['role']}\n{_message_text(message.get('content'))}<|im_end|>\n" for message in messages
    )
    return rendered + "<|im_start|>assistant\n"


def expected_chat_text(
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    seed: int | None = None,
) -> str:
    """``choices[0].message.content`` of ``/v1/chat/completions`` for these messages."""
    return expected_text(render_chat_prompt(messages), max_tokens, model_id=model_id, seed=seed)


def _prefill_tokens(model_id: str, inputs: str) -> list[dict[str, Any]]:
    digest = _generation_digest(model_id, inputs, None)
    prefill = []
    for position, word in enumerate(inputs.split() or [inputs]):
        token = _token_at(digest + b"prefill", position)
        # TGI has no logprob for the first prompt token and serialises the NaN as null.
        prefill.append({"id": token.id, "text": word, "logprob": None if position == 0 else token.logprob})
    return prefill


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class InferError(Exception):
    """An error TGI reports as ``{"error", "error_type"}`` (InferError in router/src/infer)."""

    def __init__(self, status: int, error: str, error_type: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.error_type = error_type

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_type": self.error_type}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _validation_error(message: str) -> InferError:
    return InferError(422, f"Input validation error: {message}", "validation")


def _generation_error(message: str) -> InferError:
    return InferError(424, f"Request failed during generation: {message}", "generation")


def _overloaded_error() -> InferError:
    return InferError(429, "Model is overloaded", "overloaded")


class _BodyRejection(Exception):
    """axum's Json extractor rejection: plain text, not TGI's error JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> PlainTextResponse:
        return PlainTextResponse(self.message, status_code=self.status)


def _deserialize_error(message: str) -> _BodyRejection:
    return _BodyRejection(422, f"Failed to deserialize the JSON body into the target type: {message}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "sequence"
    return "map"


_EXPECTED = {
    "str": "a string",
    "uint": "u32",
    "int": "i32",
    "float": "f32",
    "bool": "a boolean",
    "str_list": "a sequence",
    "object": "a map",
    "list": "a sequence",
}


def _type_ok(value: Any, kind: str) -> bool:
    match kind:
        case "str":
            return isinstance(value, str)
        case "uint":
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0
        case "int":
            return isinstance(value, int) and not isinstance(value, bool)
        case "float":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "bool":
            return isinstance(value, bool)
        case "str_list":
            return isinstance(value, list) and all(isinstance(item, str) for item in value)
        case "object":
            return isinstance(value, dict)
        case "list":
            return isinstance(value, list)
    raise AssertionError(kind)


def _take(
    data: Mapping[str, Any],
    name: str,
    kind: str,
    *,
    path: str = "",
    default: Any = None,
    nullable: bool = True,
    required: bool = False,
) -> Any:
    """Read one field the way serde would deserialize it into TGI's request structs."""
    where = f"{path}{name}"
    if name not in data:
        if required:
            raise _deserialize_error(f"missing field `{name}`")
        return default
    value = data[name]
    if value is None:
        if nullable:
            return None
        raise _deserialize_error(f"{where}: invalid type: null, expected {_EXPECTED[kind]}")
    if not _type_ok(value, kind):
        raise _deserialize_error(f"{where}: invalid type: {_describe(value)}, expected {_EXPECTED[kind]}")
    return float(value) if kind == "float" else value


async def _json_body(request: Request) -> dict[str, Any]:
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise _BodyRejection(415, "Expected request with `Content-Type: application/json`")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BodyRejection(400, f"Failed to parse the request body as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _deserialize_error(f"invalid type: {_describe(data)}, expected a map")
    return data


# --------------------------------------------------------------------------------------------------
# Requests as the router sees them after deserialisation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parameters:
    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS
    return_full_text: bool | None = None
    stop: tuple[str, ...] = ()
    truncate: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None


def _parse_parameters(raw: Any) -> _Parameters:
    if raw is None:
        raise _deserialize_error("parameters: invalid type: null, expected struct GenerateParameters")
    if not isinstance(raw, dict):
        raise _deserialize_error(f"parameters: invalid type: {_describe(raw)}, expected struct GenerateParameters")
    path = "parameters."
    _take(raw, "grammar", "object", path=path)
    _take(raw, "adapter_id", "str", path=path)
    _take(raw, "watermark", "bool", path=path, default=False, nullable=False)
    return _Parameters(
        best_of=_take(raw, "best_of", "uint", path=path),
        temperature=_take(raw, "temperature", "float", path=path),
        repetition_penalty=_take(raw, "repetition_penalty", "float", path=path),
        frequency_penalty=_take(raw, "frequency_penalty", "float", path=path),
        top_k=_take(raw, "top_k", "int", path=path),
        top_p=_take(raw, "top_p", "float", path=path),
        typical_p=_take(raw, "typical_p", "float", path=path),
        do_sample=_take(raw, "do_sample", "bool", path=path, default=False, nullable=False),
        max_new_tokens=_take(raw, "max_new_tokens", "uint", path=path, default=DEFAULT_MAX_NEW_TOKENS),
        return_full_text=_take(raw, "return_full_text", "bool", path=path),
        stop=tuple(_take(raw, "stop", "str_list", path=path, default=[], nullable=False)),
        truncate=_take(raw, "truncate", "uint", path=path),
        details=_take(raw, "details", "bool", path=path, default=False, nullable=False),
        decoder_input_details=_take(raw, "decoder_input_details", "bool", path=path, default=False, nullable=False),
        seed=_take(raw, "seed", "uint", path=path),
        top_n_tokens=_take(raw, "top_n_tokens", "uint", path=path),
    )


def _parse_generate_request(data: Mapping[str, Any], *, compat: bool = False) -> tuple[str, _Parameters, bool]:
    inputs = _take(data, "inputs", "str", required=True, nullable=False)
    parameters = _parse_parameters(data["parameters"]) if "parameters" in data else _Parameters()
    stream = _take(data, "stream", "bool", default=False, nullable=False) if compat else False
    return inputs, parameters, stream


@dataclass(frozen=True, slots=True)
class _Job:
    """A validated generation request (ValidGenerateRequest)."""

    inputs: str
    input_length: int
    max_new_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    details: bool
    decoder_input_details: bool
    return_full_text: bool


@dataclass(slots=True)
class _Step:
    token: Token
    index: int
    generated_text: str | None = None
    finish_reason: str | None = None
    generated_tokens: int = 0


@dataclass(slots=True)
class _Generation:
    tokens: list[Token]
    text: str
    finish_reason: str
    queued_at: float
    started_at: float
    finished_at: float


def _openai_finish_reason(finish_reason: str) -> str:
    # FinishReason::format(use_stop=true): only eos_token becomes "stop".
    return "stop" if finish_reason == "eos_token" else finish_reason


# --------------------------------------------------------------------------------------------------
# Prometheus metrics with TGI's names
# --------------------------------------------------------------------------------------------------


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class _Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for position, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[position] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines = [
            f'{name}_bucket{{le="{_format_number(bound)}"}} {count}'
            for bound, count in zip(self.bounds, self.counts, strict=True)
        ]
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_format_number(self.total)}")
        lines.append(f"{name}_count {self.count}")
        return lines


def _duration_buckets() -> list[float]:
    # Same geometric series as TGI's PrometheusBuilder setup (35 buckets from 0.00015 s).
    buckets, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        buckets.append(value)
    return buckets


_HELP = {
    "tgi_request_count": "Total number of requests",
    "tgi_request_success": "Number of successful requests",
    "tgi_request_failure": "Number of failed requests",
    "tgi_queue_size": "Current queue size",
    "tgi_batch_current_size": "Current batch size",
    "tgi_batch_current_max_tokens": "Maximum tokens for the current batch",
    "tgi_request_duration": "Total time spent processing the request",
    "tgi_request_validation_duration": "Time spent validating the request",
    "tgi_request_queue_duration": "Time spent in the queue per request",
    "tgi_request_inference_duration": "Request inference duration",
    "tgi_request_mean_time_per_token_duration": "Mean time per token per request",
    "tgi_request_generated_tokens": "Generated tokens per request",
    "tgi_request_input_length": "Input token length per request",
    "tgi_request_max_new_tokens": "Maximum new tokens per request",
}


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """A consistent snapshot of the emulator's counters."""

    requests_total: int
    requests_served: int
    requests_failed: dict[str, int]
    in_flight: int
    queue_size: int
    batch_size: int


@dataclass
class _Counters:
    requests_total: int = 0
    requests_served: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    queue_size: int = 0
    batch_size: int = 0
    batch_max_tokens: int = 0


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------


class _DroppedByKill(logging.Filter):
    """Hide uvicorn's "Exception in ASGI application" for requests cancelled because the instance died."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


_KILL_FILTER = _DroppedByKill()


def _loopback_host(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"host must be an IPv4 loopback address (127.0.0.0/8), got {host!r}") from exc
    if address.version != 4 or not address.is_loopback:
        raise ValueError(f"host must be an IPv4 loopback address (127.0.0.0/8), got {host!r}")
    return str(address)


class TgiEmulator:
    """One emulated TGI server (one GPU instance's ``text-generation-launcher``) on a loopback address.

    Lifecycle: constructed (port reserved but refusing connections) -> :meth:`boot` -> ``loading`` (port
    still refusing) -> ``ready`` once ``clock() - boot_time >= load_seconds`` -> :meth:`kill` (reclaimed:
    listener closed, in-flight connections dropped) or :meth:`stop` (graceful). ``boot()`` may be called
    again after either, like a restarted container.

    The server runs on its own event loop in a daemon thread; every public method is thread-safe.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        model_id: str = DEFAULT_MODEL_ID,
        load_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        token_delay: float = 0.0,
        prefill_delay: float = 0.0,
        max_concurrent_requests: int = 128,
        max_batch_size: int | None = None,
        max_input_tokens: int = 1024,
        max_total_tokens: int = 2048,
        max_best_of: int = 2,
        max_stop_sequences: int = 4,
        max_client_batch_size: int = 4,
        model_sha: str | None = None,
        model_pipeline_tag: str | None = "text-generation",
        version: str = TGI_VERSION,
        api_key: str | None = None,
        poll_interval: float = 0.02,
    ) -> None:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError("model_id must be a non-empty string")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {port}")
        for name, value in (("load_seconds", load_seconds), ("token_delay", token_delay),
                            ("prefill_delay", prefill_delay)):  # fmt: skip
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        if max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1 or None")
        if not 0 < max_input_tokens < max_total_tokens:
            # text-generation-launcher refuses the same combination.
            raise ValueError("max_input_tokens must be > 0 and < max_total_tokens")

        self.host = _loopback_host(host)
        self.model_id = model_id
        self.load_seconds = float(load_seconds)
        self.token_delay = float(token_delay)
        self.prefill_delay = float(prefill_delay)
        self.max_concurrent_requests = max_concurrent_requests
        self.max_batch_size = max_batch_size
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_best_of = max_best_of
        self.max_stop_sequences = max_stop_sequences
        self.max_client_batch_size = max_client_batch_size
        self.model_sha = model_sha
        self.model_pipeline_tag = model_pipeline_tag
        self.version = version
        self._api_key = api_key
        self._clock = clock
        self._poll_interval = poll_interval

        self._control_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._counters = _Counters()
        self._histograms = self._new_histograms()
        self._unhealthy = False
        self._fail_after: int | None = None
        self._fail_message = ""

        self._state = CREATED
        self._boot_time: float | None = None
        self._ready_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._batch_slots: asyncio.Semaphore | None = None
        self._app = self._build_app()

        # Reserve the port now (bound, not listening: connections are refused) so `.port`/`.url` are known
        # before boot even with port=0, and a clash surfaces here rather than when loading finishes.
        self._sock: socket.socket | None = None
        self.port = port
        self._bind_socket()

    # ---------------------------------------------------------------- public surface

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> str:
        """``created``, ``loading``, ``ready``, ``killed``, ``stopped`` or ``failed``."""
        return self._state

    @property
    def is_serving(self) -> bool:
        return self._state == READY

    @property
    def boot_time(self) -> float | None:
        """``clock()`` when :meth:`boot` was last called."""
        return self._boot_time

    @property
    def unhealthy(self) -> bool:
        return self._unhealthy

    @property
    def requests_total(self) -> int:
        """Generation requests received (``tgi_request_count``)."""
        return self._counters.requests_total

    @property
    def requests_served(self) -> int:
        """Generations completed successfully (``tgi_request_success``)."""
        return self._counters.requests_served

    @property
    def requests_failed(self) -> int:
        """Generation requests that ended in an error (sum of ``tgi_request_failure``)."""
        with self._stats_lock:
            return sum(self._counters.failures.values())

    @property
    def in_flight(self) -> int:
        """Generations currently holding one of the ``max_concurrent_requests`` permits."""
        return self._counters.in_flight

    def stats(self) -> EmulatorStats:
        with self._stats_lock:
            counters = self._counters
            return EmulatorStats(
                requests_total=counters.requests_total,
                requests_served=counters.requests_served,
                requests_failed=dict(counters.failures),
                in_flight=counters.in_flight,
                queue_size=counters.queue_size,
                batch_size=counters.batch_size,
            )

    def boot(self) -> TgiEmulator:
        """Start loading the model: the port stays closed until ``load_seconds`` have passed on ``clock``."""
        with self._control_lock:
            if self._state in (LOADING, READY):
                raise RuntimeError(f"TGI emulator on {self.url} is already {self._state}")
            if self._sock is None:
                self._bind_socket()
            self._start_loop()
            self._ready_event.clear()
            self._boot_time = self._clock()
            self._state = LOADING
            self._call_in_loop(self._begin_loading())
        return self

    def poll(self) -> bool:
        """Open the port now if loading is over on ``clock``; return whether the server is serving.

        The background watcher does the same every ``poll_interval`` seconds of real time; a drill driving a
        simulated clock calls this after advancing it so the outcome does not depend on thread timing.
        """
        loop = self._loop
        if self._state != LOADING or loop is None:
            return self._state == READY
        if threading.current_thread() is self._thread:
            loop.create_task(self._check_loaded())
            return False
        try:
            return self._call_in_loop(self._check_loaded())
        except RuntimeError:  # the loop closed under us: killed or stopped meanwhile
            return self._state == READY

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block up to ``timeout`` real seconds until the server serves (for real-clock callers)."""
        return self._ready_event.wait(timeout)

    def set_unhealthy(self, unhealthy: bool = True) -> None:
        """Make ``/health`` answer 503 and generations fail with 424, like a TGI whose shard broke."""
        self._unhealthy = bool(unhealthy)

    def fail_generation_after(self, n_tokens: int | None, message: str = "Server error: injected fault") -> None:
        """From now on every generation fails after ``n_tokens`` tokens (``None`` clears the fault).

        Streams emit ``n_tokens`` token events then TGI's SSE error event; non-streaming calls answer 424.
        """
        if n_tokens is not None and n_tokens < 0:
            raise ValueError("n_tokens must be >= 0 or None")
        self._fail_message = message
        self._fail_after = n_tokens

    def kill(self) -> None:
        """The instance is gone: close the listener and drop every connection, in-flight or idle, at once."""
        self._shut_down(KILLED, drain_seconds=0.0)

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop like ``docker stop``: refuse new connections, let in-flight generations finish for up to
        ``drain_seconds``, then drop what is left. Safe to call in any state, repeatedly."""
        if drain_seconds < 0:
            raise ValueError("drain_seconds must be >= 0")
        self._shut_down(STOPPED, drain_seconds=drain_seconds)

    def __enter__(self) -> TgiEmulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TgiEmulator(url={self.url!r}, model_id={self.model_id!r}, state={self._state!r})"

    # ---------------------------------------------------------------- lifecycle internals

    def _bind_socket(self) -> None:
        # IPPROTO_TCP explicitly: asyncio then sets TCP_NODELAY, as TGI (axum) does; without it every
        # keep-alive request waits ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            # A replaced server rebinds the same address while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock

    def _start_loop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name=f"tgi-emulator-{self.host}:{self.port}", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        started.wait(5.0)

    def _call_in_loop(self, coroutine: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _begin_loading(self) -> None:
        self._batch_slots = asyncio.Semaphore(self.max_batch_size) if self.max_batch_size else None
        if not await self._check_loaded():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_loading())

    async def _watch_loading(self) -> None:
        while self._state == LOADING:
            await asyncio.sleep(self._poll_interval)
            await self._check_loaded()

    async def _check_loaded(self) -> bool:
        if self._state == LOADING:
            try:
                if self._clock() - (self._boot_time or 0.0) >= self.load_seconds:
                    await self._open_port()
            except Exception:
                logger.exception("TGI emulator on %s failed to start serving", self.url)
                self._state = FAILED
        return self._state == READY

    async def _open_port(self) -> None:
        assert self._sock is not None
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            http="h11",
            ws="none",
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=5,
        )
        config.load()
        uvicorn_errors = logging.getLogger("uvicorn.error")
        if _KILL_FILTER not in uvicorn_errors.filters:
            uvicorn_errors.addFilter(_KILL_FILTER)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])
        self._server = server
        self._state = READY
        self._ready_event.set()
        logger.info("TGI emulator %s serving %s on %s", self.version, self.model_id, self.url)

    def _shut_down(self, final_state: str, *, drain_seconds: float) -> None:
        with self._control_lock:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                self._call_in_loop(self._close_network(final_state, drain_seconds), timeout=drain_seconds + 10)
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(5.0)
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._loop = self._thread = None
            self._ready_event.clear()
            self._state = final_state

    async def _close_network(self, final_state: str, drain_seconds: float) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        server, self._server = self._server, None
        self._state = final_state
        if server is None:
            return
        for listener in server.servers:
            listener.close()  # closes the bound socket too: from here on connections are refused
        self._sock = None
        state = server.server_state
        if drain_seconds > 0:
            for connection in list(state.connections):
                connection.shutdown()  # idle keep-alive connections close, busy ones finish first
            deadline = time.monotonic() + drain_seconds
            while state.tasks and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        logger.info("TGI emulator on %s %s", self.url, final_state)

    # ---------------------------------------------------------------- accounting

    def _new_histograms(self) -> dict[str, _Histogram]:
        durations = _duration_buckets()
        per_total = [self.max_total_tokens / 100 * (x + 1) for x in range(100)]
        return {
            "tgi_request_duration": _Histogram(durations),
            "tgi_request_validation_duration": _Histogram(durations),
            "tgi_request_queue_duration": _Histogram(durations),
            "tgi_request_inference_duration": _Histogram(durations),
            "tgi_request_mean_time_per_token_duration": _Histogram(durations),
            "tgi_request_generated_tokens": _Histogram(per_total),
            "tgi_request_input_length": _Histogram([self.max_input_tokens / 100 * (x + 1) for x in range(100)]),
            "tgi_request_max_new_tokens": _Histogram(per_total),
        }

    def _count_request(self) -> None:
        with self._stats_lock:
            self._counters.requests_total += 1

    def _count_failure(self, error_type: str) -> None:
        key = {"incomplete_generation": "incomplete"}.get(error_type, error_type)
        with self._stats_lock:
            self._counters.failures[key] = self._counters.failures.get(key, 0) + 1

    def _count_success(self, job: _Job, generation: _Generation, received_at: float) -> None:
        generated = len(generation.tokens)
        inference = generation.finished_at - generation.started_at
        with self._stats_lock:
            self._counters.requests_served += 1
            observe = {
                "tgi_request_duration": generation.finished_at - received_at,
                "tgi_request_validation_duration": max(generation.queued_at - received_at, 0.0),
                "tgi_request_queue_duration": generation.started_at - generation.queued_at,
                "tgi_request_inference_duration": inference,
                "tgi_request_mean_time_per_token_duration": inference / max(generated, 1),
                "tgi_request_generated_tokens": generated,
            }
            for name, value in observe.items():
                self._histograms[name].observe(value)

    @contextlib.asynccontextmanager
    async def _permit(self) -> AsyncIterator[None]:
        # Infer::generate_stream takes a semaphore permit before validating: overload wins over bad input.
        with self._stats_lock:
            if self._counters.in_flight >= self.max_concurrent_requests:
                overloaded = True
            else:
                overloaded = False
                self._counters.in_flight += 1
        if overloaded:
            self._count_failure("overloaded")
            raise _overloaded_error()
        try:
            yield
        finally:
            with self._stats_lock:
                self._counters.in_flight -= 1

    @contextlib.asynccontextmanager
    async def _batch_slot(self, job: _Job) -> AsyncIterator[None]:
        slots = self._batch_slots
        if slots is not None:
            with self._stats_lock:
                self._counters.queue_size += 1
            try:
                await slots.acquire()
            finally:
                with self._stats_lock:
                    self._counters.queue_size -= 1
        with self._stats_lock:
            self._counters.batch_size += 1
            self._counters.batch_max_tokens += job.input_length + job.max_new_tokens
        try:
            yield
        finally:
            with self._stats_lock:
                self._counters.batch_size -= 1
                self._counters.batch_max_tokens -= job.input_length + job.max_new_tokens
            if slots is not None:
                slots.release()

    # ---------------------------------------------------------------- validation and generation

    def _validate(self, inputs: str, parameters: _Parameters, *, stream: bool, return_full_text: bool) -> _Job:
        try:
            return self._validate_unchecked(inputs, parameters, stream=stream, return_full_text=return_full_text)
        except InferError:
            self._count_failure("validation")
            raise

    def _validate_unchecked(
        self, inputs: str, parameters: _Parameters, *, stream: bool, return_full_text: bool
    ) -> _Job:
        # Same checks, messages and order as router/src/validation.rs.
        best_of = parameters.best_of
        if stream and best_of is not None and best_of != 1:
            raise _validation_error("`best_of` != 1 is not allowed for this endpoint")
        if stream and parameters.decoder_input_details:
            raise _validation_error("`decoder_input_details` == true is not supported when streaming tokens")
        if best_of is not None and (best_of == 0 or best_of > self.max_best_of):
            raise _validation_error(f"`best_of` must be > 0 and <= {self.max_best_of}. Given: {best_of}")
        if best_of is not None and best_of > 1 and not parameters.do_sample:
            raise _validation_error("you must use sampling when `best_of` is > 1")
        if parameters.temperature is not None and parameters.temperature <= 0:
            raise _validation_error("`temperature` must be strictly positive")
        if parameters.repetition_penalty is not None and parameters.repetition_penalty <= 0:
            raise _validation_error("`repetition_penalty` must be strictly positive")
        if parameters.frequency_penalty is not None and not -2.0 <= parameters.frequency_penalty <= 2.0:
            raise _validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
        if parameters.top_p is not None and not 0.0 < parameters.top_p <= 1.0:
            raise _validation_error("`top_p` must be > 0.0 and < 1.0")
        if parameters.typical_p is not None and not 0.0 < parameters.typical_p <= 1.0:
            raise _validation_error("`typical_p` must be > 0.0 and < 1.0")
        if parameters.top_k is not None and parameters.top_k <= 0:
            raise _validation_error("`top_k` must be strictly positive")
        if parameters.max_new_tokens == 0:
            raise _validation_error("`max_new_tokens` must be strictly positive")
        if len(parameters.stop) > self.max_stop_sequences:
            raise _validation_error(
                f"`stop` supports up to {self.max_stop_sequences} stop sequences. Given: {len(parameters.stop)}"
            )
        if not inputs:
            raise _validation_error("`inputs` cannot be empty")
        input_length = count_tokens(inputs)
        if parameters.truncate is not None:
            if parameters.truncate == 0 or parameters.truncate > self.max_input_tokens:
                raise _validation_error(
                    f"`truncate` must be strictly positive and less than {self.max_input_tokens}. "
                    f"Given: {parameters.truncate}"
                )
            input_length = min(input_length, parameters.truncate)
        max_new_tokens = parameters.max_new_tokens
        if max_new_tokens is None:
            max_new_tokens = max(self.max_total_tokens - input_length, 0)
        if input_length + max_new_tokens > self.max_total_tokens:
            raise _validation_error(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        if input_length > self.max_input_tokens:
            raise _validation_error(
                f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {input_length}"
            )
        with self._stats_lock:
            self._histograms["tgi_request_input_length"].observe(input_length)
            self._histograms["tgi_request_max_new_tokens"].observe(max_new_tokens)
        return _Job(
            inputs=inputs,
            input_length=input_length,
            max_new_tokens=max_new_tokens,
            stop=parameters.stop,
            seed=parameters.seed,
            details=parameters.details,
            decoder_input_details=parameters.decoder_input_details,
            return_full_text=return_full_text,
        )

    def _check_generation_fault(self, position: int) -> None:
        if self._unhealthy:
            raise _generation_error("Server error: the shard is unhealthy")
        fail_after = self._fail_after
        if fail_after is not None and position >= fail_after:
            raise _generation_error(self._fail_message)

    async def _steps(self, job: _Job, timing: dict[str, float]) -> AsyncIterator[_Step]:
        """Generate token by token, paced by ``prefill_delay``/``token_delay`` (real time)."""
        timing["queued_at"] = time.monotonic()
        try:
            async with self._batch_slot(job):
                timing["started_at"] = time.monotonic()
                if self.prefill_delay:
                    await asyncio.sleep(self.prefill_delay)
                digest = _generation_digest(self.model_id, job.inputs, job.seed)
                after_space = _starts_after_space(job.inputs)
                text = ""
                for position in range(job.max_new_tokens):
                    self._check_generation_fault(position)
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    token = _token_at(digest, position, after_space=after_space)
                    text += token.text
                    finish_reason = None
                    if any(text.endswith(stop) for stop in job.stop):
                        finish_reason = "stop_sequence"
                    elif position == job.max_new_tokens - 1:
                        finish_reason = "length"
                    step = _Step(token=token, index=position + 1)
                    if finish_reason is not None:
                        step.generated_text = text
                        step.finish_reason = finish_reason
                        step.generated_tokens = position + 1
                        timing["finished_at"] = time.monotonic()
                        yield step
                        return
                    yield step
        except InferError as exc:
            self._count_failure(exc.error_type)
            raise

    async def _generate(self, job: _Job, received_at: float) -> _Generation:
        timing: dict[str, float] = {}
        tokens: list[Token] = []
        text, finish_reason = "", "length"
        async for step in self._steps(job, timing):
            tokens.append(step.token)
            if step.finish_reason is not None:
                text, finish_reason = step.generated_text or "", step.finish_reason
        generation = _Generation(
            tokens=tokens,
            text=text,
            finish_reason=finish_reason,
            queued_at=timing["queued_at"],
            started_at=timing["started_at"],
            finished_at=timing["finished_at"],
        )
        self._count_success(job, generation, received_at)
        return generation

    # ---------------------------------------------------------------- HTTP app

    def _build_app(self) -> Starlette:
        routes = [
            Route("/", self._health, methods=["GET"]),
            Route("/", self._compat_generate, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/ping", self._health, methods=["GET"]),
            Route("/info", self._info, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/generate", self._generate_route, methods=["POST"]),
            Route("/generate_stream", self._generate_stream_route, methods=["POST"]),
            Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
        ]
        app = Starlette(routes=routes)
        app.router.default = self._not_found
        return app

    async def _not_found(self, scope: Any, receive: Any, send: Any) -> None:
        # axum answers unknown routes with an empty 404.
        await Response(status_code=404)(scope, receive, send)

    def _unauthorized(self, request: Request) -> Response | None:
        if self._api_key is None:
            return None
        # TGI's --api-key middleware compares the whole header case-insensitively.
        if request.headers.get("authorization", "").lower() == f"bearer {self._api_key}".lower():
            return None
        return Response(status_code=401)

    def info(self) -> dict[str, Any]:
        """The body of ``GET /info``."""
        return {
            "model_id": self.model_id,
            "model_sha": self.model_sha,
            "model_pipeline_tag": self.model_pipeline_tag,
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": self.max_best_of,
            "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": self.max_client_batch_size,
            "router": ROUTER_NAME,
            "version": self.version,
            "sha": None,
            "docker_label": None,
        }

    @property
    def system_fingerprint(self) -> str:
        return f"{self.version}-native"

    async def _health(self, request: Request) -> Response:
        if self._unhealthy:
            return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
        return Response(status_code=200)

    async def _info(self, request: Request) -> Response:
        return JSONResponse(self.info())

    async def _models(self, request: Request) -> Response:
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}
        return JSONResponse({"object": "list", "data": [model]})

    def render_metrics(self) -> str:
        """The body of ``GET /metrics`` (Prometheus text format, TGI's metric names)."""
        lines: list[str] = []

        def family(name: str, kind: str, samples: list[str]) -> None:
            lines.append(f"# HELP {name} {_HELP[name]}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
            lines.append("")

        with self._stats_lock:
            counters = self._counters
            family("tgi_request_count", "counter", [f"tgi_request_count {counters.requests_total}"])
            family("tgi_request_success", "counter", [f"tgi_request_success {counters.requests_served}"])
            if counters.failures:
                family(
                    "tgi_request_failure",
                    "counter",
                    [f'tgi_request_failure{{err="{err}"}} {n}' for err, n in sorted(counters.failures.items())],
                )
            family("tgi_queue_size", "gauge", [f"tgi_queue_size {counters.queue_size}"])
            family("tgi_batch_current_size", "gauge", [f"tgi_batch_current_size {counters.batch_size}"])
            family(
                "tgi_batch_current_max_tokens",
                "gauge",
                [f"tgi_batch_current_max_tokens {counters.batch_max_tokens}"],
            )
            for name, histogram in self._histograms.items():
                family(name, "histogram", histogram.render(name))
        return "\n".join(lines)

    async def _metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.render_metrics())

    def _generation_headers(self, job: _Job, generation: _Generation, received_at: float) -> dict[str, str]:
        total = generation.finished_at - received_at
        inference = generation.finished_at - generation.started_at
        generated = max(len(generation.tokens), 1)

        def ms(seconds: float) -> str:
            return str(int(max(seconds, 0.0) * 1000))

        return {
            "x-compute-type": COMPUTE_TYPE,
            "x-compute-time": repr(total),
            "x-compute-characters": str(len(job.inputs)),
            "x-total-time": ms(total),
            "x-validation-time": ms(generation.queued_at - received_at),
            "x-queue-time": ms(generation.started_at - generation.queued_at),
            "x-inference-time": ms(inference),
            "x-time-per-token": ms(inference / generated),
            "x-prompt-tokens": str(job.input_length),
            "x-generated-tokens": str(len(generation.tokens)),
        }

    def _stream_headers(self, inputs: str) -> dict[str, str]:
        return {
            # Set explicitly so Starlette does not append a charset that axum's Sse never sends.
            "content-type": "text/event-stream",
            "x-compute-type": COMPUTE_TYPE,
            "x-compute-characters": str(len(inputs)),
            "x-accel-buffering": "no",
            "cache-control": "no-cache",
        }

    def _generate_response_body(self, job: _Job, generation: _Generation) -> dict[str, Any]:
        text = job.inputs + generation.text if job.return_full_text else generation.text
        body: dict[str, Any] = {"generated_text": text}
        if job.details or job.decoder_input_details:
            body["details"] = {
                "finish_reason": generation.finish_reason,
                "generated_tokens": len(generation.tokens),
                "seed": job.seed,
                "prefill": _prefill_tokens(self.model_id, job.inputs) if job.decoder_input_details else [],
                "tokens": [token.as_json() for token in generation.tokens],
            }
        return body

    async def _run_generate(
        self, inputs: str, parameters: _Parameters, return_full_text: bool, received_at: float
    ) -> tuple[_Job, _Generation]:
        async with self._permit():
            job = self._validate(inputs, parameters, stream=False, return_full_text=return_full_text)
            return job, await self._generate(job, received_at)

    async def _generate_route(self, request: Request) -> Response:
        received_at = time.monotonic()
        if (rejection := self._unauthorized(request)) is not None:
            return rejection
        try:
            inputs, parameters, _ = _parse_generate_request(await _json_body(request))
        except _BodyRejection as exc:
            return exc.response()
        self._count_request()
        try:
            job, generation = await self._run_generate(
                inputs, parameters, bool(parameters.return_full_text), received_at
            )
        except InferError as exc:
            return exc.response()
        return JSONResponse(
            self._generate_response_body(job, generation),
            headers=self._generation_headers(job, generation, received_at),
        )

    async def _generate_stream_route(self, request: Request) -> Response:
        if (rejection := self._unauthorized(request)) is not None:
            return rejection
        try:
            inputs, parameters, _ = _parse_generate_request(await _json_body(request))
        except _BodyRejection as exc:
            return exc.response()
        return self._generate_stream_response(inputs, parameters, bool(parameters.return_full_text))

    async def _compat_generate(self, request: Request) -> Response:
        received_at = time.monotonic()
        if (rejection := self._unauthorized(request)) is not None:
            return rejection
        try:
            inputs, parameters, stream = _parse_generate_request(await _json_body(request), compat=True)
        except _BodyRejection as exc:
            return exc.response()
        return_full_text = parameters.return_full_text
        if return_full_text is None:
            # TGI defaults return_full_text on this route from the model's pipeline tag.
            return_full_text = self.model_pipeline_tag in (None, "text-generation")
        if stream:
            return self._generate_stream_response(inputs, parameters, return_full_text)
        self._count_request()
        try:
            job, generation = await self._run_generate(inputs, parameters, return_full_text, received_at)
        except InferError as exc:
            return exc.response()
        return JSONResponse(
            [self._generate_response_body(job, generation)],
            headers=self._generation_headers(job, generation, received_at),
        )

    def _generate_stream_response(self, inputs: str, parameters: _Parameters, return_full_text: bool) -> Response:
        self._count_request()
        received_at = time.monotonic()

        async def events() -> AsyncIterator[bytes]:
            try:
                async with self._permit():
                    job = self._validate(inputs, parameters, stream=True, return_full_text=return_full_text)
                    timing: dict[str, float] = {}
                    tokens: list[Token] = []
                    async for step in self._steps(job, timing):
                        tokens.append(step.token)
                        event: dict[str, Any] = {
                            "index": step.index,
                            "token": step.token.as_json(),
                            "generated_text": None,
                            "details": None,
                        }
                        if step.finish_reason is not None:
                            generated = step.generated_text or ""
                            event["generated_text"] = inputs + generated if return_full_text else generated
                            if job.details:
                                event["details"] = {
                                    "finish_reason": step.finish_reason,
                                    "generated_tokens": step.generated_tokens,
                                    "seed": job.seed,
                                    "input_length": job.input_length,
                                }
                            self._count_success(
                                job,
                                _Generation(
                                    tokens=tokens,
                                    text=generated,
                                    finish_reason=step.finish_reason,
                                    queued_at=timing["queued_at"],
                                    started_at=timing["started_at"],
                                    finished_at=timing["finished_at"],
                                ),
                                received_at,
                            )
                        yield _sse(event)
            except InferError as exc:
                yield _sse(exc.body())

        return StreamingResponse(events(), headers=self._stream_headers(inputs))

    # ---------------------------------------------------------------- OpenAI-compatible routes

    async def _chat_completions(self, request: Request) -> Response:
        received_at = time.monotonic()
        if (rejection := self._unauthorized(request)) is not None:
            return rejection
        try:
            data = await _json_body(request)
            messages = _take(data, "messages", "list", required=True, nullable=False)
            for position, message in enumerate(messages):
                where = f"messages[{position}]."
                if not isinstance(message, dict):
                    raise _deserialize_error(f"messages[{position}]: invalid type: {_describe(message)}, "
                                             "expected struct Message")  # fmt: skip
                _take(message, "role", "str", path=where, required=True, nullable=False)
                content = message.get("content")
                if content is not None and not isinstance(content, str | list):
                    raise _deserialize_error(f"{where}content: data did not match any variant of untagged enum "
                                             "MessageContent")  # fmt: skip
            stream = _take(data, "stream", "bool", default=False, nullable=False)
            stream_options = _take(data, "stream_options", "object")
            include_usage = bool(stream_options and stream_options.get("include_usage"))
            logprobs = bool(_take(data, "logprobs", "bool"))
            parameters = self._openai_parameters(data)
        except _BodyRejection as exc:
            return exc.response()
        prompt = render_chat_prompt(messages)
        self._count_request()
        if stream:
            return StreamingResponse(
                self._chat_events(prompt, parameters, include_usage, logprobs, received_at),
                headers=self._stream_headers(prompt),
            )
        try:
            job, generation = await self._run_generate(prompt, parameters, False, received_at)
        except InferError as exc:
            return exc.response()
        generated = len(generation.tokens)
        body = {
            "object": "chat.completion",
            "id": "",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": self.system_fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "logprobs": _chat_logprobs(generation.tokens) if logprobs else None,
                    "finish_reason": _openai_finish_reason(generation.finish_reason),
                }
            ],
            "usage": {
                "prompt_tokens": job.input_length,
                "completion_tokens": generated,
                "total_tokens": job.input_length + generated,
            },
        }
        return JSONResponse(body, headers=self._generation_headers(job, generation, received_at))

    def _openai_parameters(self, data: Mapping[str, Any]) -> _Parameters:
        _take(data, "model", "str")
        max_tokens = _take(data, "max_tokens", "uint")
        temperature = _take(data, "temperature", "float")
        presence_penalty = _take(data, "presence_penalty", "float")
        stop = _take(data, "stop", "str_list") or []
        return _Parameters(
            # TGI switches to greedy decoding for temperature 0 instead of rejecting it.
            temperature=None if temperature == 0.0 else temperature,
            do_sample=temperature != 0.0,
            repetition_penalty=None if presence_penalty is None else presence_penalty + 2.0,
            frequency_penalty=_take(data, "frequency_penalty", "float"),
            top_p=_take(data, "top_p", "float"),
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if max_tokens is None else max_tokens,
            stop=tuple(stop),
            seed=_take(data, "seed", "uint"),
            details=True,
            top_n_tokens=_take(data, "top_logprobs", "uint"),
        )

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": self.system_fingerprint,
            "choices": choices,
            "usage": usage,
        }

    async def _chat_events(
        self, prompt: str, parameters: _Parameters, include_usage: bool, logprobs: bool, received_at: float
    ) -> AsyncIterator[bytes]:
        try:
            async with self._permit():
                job = self._validate(prompt, parameters, stream=True, return_full_text=False)
                timing: dict[str, float] = {}
                tokens: list[Token] = []
                async for step in self._steps(job, timing):
                    tokens.append(step.token)
                    usage = None
                    finish_reason = None
                    if step.finish_reason is not None:
                        finish_reason = _openai_finish_reason(step.finish_reason)
                        if include_usage:
                            usage = {
                                "prompt_tokens": job.input_length,
                                "completion_tokens": step.generated_tokens,
                                "total_tokens": job.input_length + step.generated_tokens,
                            }
                        self._count_success(job, _finished(tokens, step, timing), received_at)
                    choice = {
                        "index": 0,
                        "delta": {"role": "assistant", "content": step.token.text},
                        "logprobs": _chat_logprobs([step.token]) if logprobs else None,
                        "finish_reason": finish_reason,
                    }
                    yield _sse(self._chunk([choice], usage))
        except InferError as exc:
            yield _sse(exc.body())
        yield b"data: [DONE]\n\n"

    async def _completions(self, request: Request) -> Response:
        received_at = time.monotonic()
        if (rejection := self._unauthorized(request)) is not None:
            return rejection
        try:
            data = await _json_body(request)
            if "prompt" not in data:
                raise _deserialize_error("missing field `prompt`")
            raw_prompt = data["prompt"]
            if isinstance(raw_prompt, str):
                prompts = [raw_prompt]
            elif isinstance(raw_prompt, list) and all(isinstance(p, str) for p in raw_prompt):
                prompts = list(raw_prompt)
            else:
                raise _deserialize_error("prompt: data did not match any variant of untagged enum Prompt")
            stream = _take(data, "stream", "bool", default=False, nullable=False)
            suffix = _take(data, "suffix", "str")
            parameters = self._openai_parameters(data)
        except _BodyRejection as exc:
            return exc.response()
        self._count_request()
        if suffix is not None:
            self._count_failure("validation")
            return JSONResponse(
                {
                    "error": "Suffix is not supported and can be achieved by preprocessing the prompt.",
                    "error_type": "suffix not supported",
                },
                status_code=422,
            )
        if len(prompts) > self.max_client_batch_size:
            self._count_failure("validation")
            return JSONResponse(
                {
                    "error": "Number of prompts exceeds the maximum allowed batch size of "
                    f"{self.max_client_batch_size}",
                    "error_type": "batch size exceeded",
                },
                status_code=422,
            )
        if stream:
            return StreamingResponse(
                self._completion_events(prompts, parameters, received_at),
                headers=self._stream_headers("".join(prompts)),
            )
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        headers: dict[str, str] = {}
        for index, prompt in enumerate(prompts):
            try:
                job, generation = await self._run_generate(prompt, parameters, False, received_at)
            except InferError as exc:
                return exc.response()
            generated = len(generation.tokens)
            choices.append(
                {
                    "finish_reason": _openai_finish_reason(generation.finish_reason),
                    "index": index,
                    "logprobs": None,
                    "text": generation.text,
                }
            )
            usage["prompt_tokens"] += job.input_length
            usage["completion_tokens"] += generated
            usage["total_tokens"] += job.input_length + generated
            headers = headers or self._generation_headers(job, generation, received_at)
        body = {
            "object": "text_completion",
            "id": "",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": self.system_fingerprint,
            "choices": choices,
            "usage": usage,
        }
        return JSONResponse(body, headers=headers)

    async def _completion_events(
        self, prompts: list[str], parameters: _Parameters, received_at: float
    ) -> AsyncIterator[bytes]:
        for index, prompt in enumerate(prompts):
            try:
                async with self._permit():
                    job = self._validate(prompt, parameters, stream=True, return_full_text=False)
                    timing: dict[str, float] = {}
                    tokens: list[Token] = []
                    async for step in self._steps(job, timing):
                        tokens.append(step.token)
                        body: dict[str, Any] = {
                            "object": "text_completion",
                            "id": "",
                            "created": int(time.time()),
                            "model": self.model_id,
                            "system_fingerprint": self.system_fingerprint,
                        }
                        if step.finish_reason is None:
                            body["choices"] = [
                                {"finish_reason": "", "index": index, "logprobs": None, "text": step.token.text}
                            ]
                        else:
                            # The streamed final chunk keeps the raw finish reason (Display, not format(true)).
                            body["choices"] = [
                                {
                                    "finish_reason": step.finish_reason,
                                    "index": index,
                                    "logprobs": None,
                                    "text": step.token.text,
                                }
                            ]
                            body["usage"] = {
                                "prompt_tokens": job.input_length,
                                "completion_tokens": step.generated_tokens,
                                "total_tokens": job.input_length + step.generated_tokens,
                            }
                            self._count_success(job, _finished(tokens, step, timing), received_at)
                        yield _sse(body)
            except InferError as exc:
                yield _sse(exc.body())
        yield b"data: [DONE]\n\n"


def _finished(tokens: list[Token], step: _Step, timing: Mapping[str, float]) -> _Generation:
    return _Generation(
        tokens=list(tokens),
        text=step.generated_text or "",
        finish_reason=step.finish_reason or "length",
        queued_at=timing["queued_at"],
        started_at=timing["started_at"],
        finished_at=timing["finished_at"],
    )


def _chat_logprobs(tokens: Sequence[Token]) -> dict[str, Any]:
    return {"content": [{"token": t.text, "logprob": t.logprob, "top_logprobs": []} for t in tokens]}


def _sse(payload: Mapping[str, Any]) -> bytes:
    # axum's Event::json_data framing as served by TGI 2.x/3.x: "data: <compact json>\n\n".
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def parse_sse_data(lines: Iterator[str] | Sequence[str]) -> Iterator[Any]:
    """Decode the ``data:`` payloads of an SSE body (JSON objects, or the string ``"[DONE]"``)."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        yield data if data == "[DONE]" else json.loads(data)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spotkeeper_local.tgi_emulator",
        description="Serve an emulated Hugging Face TGI on a loopback address (no GPU, deterministic text).",
    )
    parser.add_argument("--model-id", default=DEFAULT_MODEL_ID)
    parser.add_argument("--host", default="127.0.0.1", help="an IPv4 loopback address (127.0.0.0/8)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--load-seconds", type=float, default=0.0, help="port stays closed this long")
    parser.add_argument("--token-delay", type=float, default=0.02, help="real seconds between tokens")
    parser.add_argument("--max-concurrent-requests", type=int, default=128)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--max-input-tokens", type=int, default=1024)
    parser.add_argument("--max-total-tokens", type=int, default=2048)
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer <key>` like TGI")
    parser.add_argument("--drain-seconds", type=float, default=5.0, help="grace period on SIGTERM/SIGINT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        emulator = TgiEmulator(
            host=args.host,
            port=args.port,
            model_id=args.model_id,
            load_seconds=args.load_seconds,
            token_delay=args.token_delay,
            max_concurrent_requests=args.max_concurrent_requests,
            max_batch_size=args.max_batch_size,
            max_input_tokens=args.max_input_tokens,
            max_total_tokens=args.max_total_tokens,
            api_key=args.api_key,
        )
    except (ValueError, OSError) as exc:
        logger.error("cannot start the TGI emulator: %s", exc)
        return 2
    shutdown = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: shutdown.set())
    emulator.boot()
    logger.info("loading %s for %.1f s; %s opens when loaded", args.model_id, args.load_seconds, emulator.url)
    while not shutdown.wait(0.5):
        pass
    emulator.stop(drain_seconds=args.drain_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
