"""A Hugging Face Text Generation Inference (TGI) server emulated on loopback.

A real HTTP server, one per emulated GPU instance, whose port stays closed while "the model loads", then answers
with TGI's JSON shapes, error bodies, SSE framing and metric names; it can be made unhealthy, made to fail
mid-generation, or killed (the instance reclaimed). Shapes follow TGI 2.x/3.x's router (router/src/server.rs):

* ``GET /health`` (200 empty, or 503 ``{"error":"unhealthy","error_type":"healthcheck"}``), ``GET /info``,
  ``GET /v1/models``, ``GET /metrics`` (Prometheus text, TGI's names).
* ``POST /tokenize`` (``[{id, text, start, stop}]``, byte offsets) and ``POST /chat_tokenize`` (TGI >= 2.3:
  ``{tokenize_response, templated_text}``, the chat template's prompt; counted in ``tgi_request_count`` as TGI
  does). The emulator's tokenizer adds no special tokens (ChatML, like Qwen's).
* ``POST /generate``, ``POST /generate_stream`` (SSE, one ``data:`` JSON per token), ``POST /`` (what
  ``huggingface_hub.InferenceClient`` posts: a JSON *list* unless streaming, ``return_full_text`` defaulting to
  true), ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming ones end with ``data: [DONE]``).
* Errors ``{"error", "error_type"}``: 422 validation, 424 generation, 429 overloaded; streaming routes answer 200
  and send the error as an SSE event, as TGI does. Unreadable bodies get axum's plain-text 415/400/422.

Generation is greedy and deterministic: each token (one word) is a pure function of (model_id, seed, the text so
far), so :func:`expected_text` / :func:`expected_tokens` give the output, and generating from the prompt plus
the first k generated tokens continues with exactly the tokens that followed them.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import prometheus_client
import uvicorn
from prometheus_client import CollectorRegistry, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

logger = logging.getLogger(__name__)

TGI_VERSION = "3.3.4"
DEFAULT_MODEL_ID = "mistralai/Mistral-7B-Instruct-v0.3"
DEFAULT_PORT = 8080
DEFAULT_MAX_NEW_TOKENS = 100  # GenerateParameters.max_new_tokens and the OpenAI routes' max_tokens
MAX_BEST_OF, MAX_STOP_SEQUENCES, MAX_CLIENT_BATCH_SIZE = 2, 4, 4
COMPUTE_TYPE = "gpu+optimized"
POLL_INTERVAL = 0.02  # real seconds between the loading watcher's looks at the clock

# Lifecycle states, readable through TgiEmulator.state.
CREATED, LOADING, READY, KILLED, STOPPED, FAILED = "created", "loading", "ready", "killed", "stopped", "failed"

_VOCABULARY = (
    "spot", "capacity", "instance", "model", "token", "stream", "gateway", "health", "probe", "replace",
    "drain", "serve", "cheap", "endpoint", "latency", "queue", "batch", "shard", "weights", "cache",
    "warning", "rebalance", "launch", "terminate", "address", "elastic", "group", "scale", "fallback",
    "demand", "recover", "alert", "metric", "signal", "answer", "request", "prompt", "deep", "learning",
    "is", "a", "the", "of", "and", "to", "in", "that", "it", "for", "on", "with", "as", "was", "at",
    "by", "this", "from", "we", "can", "will", "be", "more", "new", "fast",
)  # fmt: skip
_FIRST_TOKEN_ID = 1000

# TGI's exporter writes no `_created` series; prometheus_client would add one to every histogram.
prometheus_client.disable_created_metrics()


# ---------------------------------------------------------------------------------------- the "model"


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
    return len(text.split()) or (1 if text else 0)


def tokenize(text: str) -> list[dict[str, Any]]:
    """``POST /tokenize``'s answer for ``text`` (TGI's SimpleToken: id, text, byte offsets start/stop), one per
    :func:`count_tokens` token; a word of the vocabulary has the id generation gives it."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)] or ([(0, len(text))] if text else [])
    tokens = []
    for start, stop in spans:
        word = text[start:stop]
        if word in _VOCABULARY:
            token_id = _FIRST_TOKEN_ID + _VOCABULARY.index(word)
        else:
            token_id = _FIRST_TOKEN_ID + len(_VOCABULARY) + int(hashlib.sha256(word.encode()).hexdigest()[:6], 16)
        first, last = len(text[:start].encode()), len(text[:stop].encode())
        tokens.append({"id": token_id, "text": word, "start": first, "stop": last})
    return tokens


def generate_tokens(
    inputs: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    seed: int | None = None,
) -> Iterator[Token]:
    """The tokens greedy decoding produces for ``inputs`` (before any stop sequence cuts them short).

    Each token is drawn from a hash of everything before it (model, seed, prompt and the tokens so far), so
    ``generate_tokens(inputs + "".join(first k texts))`` yields the same tokens as the k+1-th onwards.
    """
    context = hashlib.sha256(f"{model_id}\x00{seed}\x00{inputs}".encode())
    after_space = not inputs or inputs[-1].isspace()
    for _ in range(max_new_tokens):
        draw = context.copy().digest()
        index = int.from_bytes(draw[:4], "big") % len(_VOCABULARY)
        # Like SentencePiece/BPE word tokens the separator is part of the token ("▁Deep" -> " Deep"), so joining
        # token texts gives the text; a token right after whitespace (chat templates end in "\n") has none.
        text = _VOCABULARY[index] if after_space else f" {_VOCABULARY[index]}"
        yield Token(id=_FIRST_TOKEN_ID + index, text=text, logprob=-round(draw[4] / 255 * 2.5, 4))
        context.update(text.encode())
        after_space = False


def expected_tokens(inputs: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, **model: Any) -> list[str]:
    """Token texts, in order, that ``/generate_stream`` emits (no stop sequences; ``model_id=``, ``seed=``)."""
    return [token.text for token in generate_tokens(inputs, max_new_tokens, **model)]


def expected_text(inputs: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, **model: Any) -> str:
    """``generated_text`` of ``/generate`` (no stop sequences, ``return_full_text`` false)."""
    return "".join(expected_tokens(inputs, max_new_tokens, **model))


def render_chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt the emulator's chat template (ChatML) builds from OpenAI-style messages."""

    def text(content: str | list[dict[str, Any]] | None) -> str:
        if content is None or isinstance(content, str):
            return content or ""
        # TGI flattens multi-part content the same way before templating.
        image = "![]({})".format
        return "".join(
            image(p.get("image_url", {}).get("url", "")) if p.get("type") == "image_url" else str(p.get("text", ""))
            for p in content
        )

    rendered = "".join(f"<|im_start|>{m['role']}\n{text(m.get('content'))}<|im_end|>\n" for m in messages)
    return rendered + "<|im_start|>assistant\n"


def expected_chat_text(
    messages: Sequence[Mapping[str, Any]], max_tokens: int = DEFAULT_MAX_NEW_TOKENS, **model: Any
) -> str:
    """``choices[0].message.content`` of ``/v1/chat/completions`` for these messages."""
    return expected_text(render_chat_prompt(messages), max_tokens, **model)


# ---------------------------------------------------------------------------------------- errors and bodies


class InferError(Exception):
    """An error TGI reports as ``{"error", "error_type"}`` (InferError in router/src/infer)."""

    def __init__(self, status: int, error: str, error_type: str) -> None:
        super().__init__(error)
        self.status, self.error_type = status, error_type
        self.body = {"error": error, "error_type": error_type}


# serde's view of TGI's request structs: strict types, unknown fields ignored, missing optionals defaulted.
_SERDE = ConfigDict(strict=True, extra="ignore")
_U32, _U64 = Annotated[int, Field(ge=0, le=2**32 - 1)], Annotated[int, Field(ge=0, le=2**64 - 1)]


class _Parameters(BaseModel):
    """The GenerateParameters the emulator acts on (the gateway bounds the sampling ones itself)."""

    model_config = _SERDE
    best_of: _U32 | None = None
    temperature: float | None = None
    do_sample: bool = False
    max_new_tokens: _U32 | None = DEFAULT_MAX_NEW_TOKENS
    return_full_text: bool | None = None
    stop: list[str] = []
    details: bool = False
    seed: _U64 | None = None


class _GenerateBody(BaseModel):
    model_config = _SERDE
    inputs: str
    parameters: _Parameters = Field(default_factory=_Parameters)
    stream: bool = False  # read on the compat route only


class _OpenAiBody(BaseModel):
    model_config = _SERDE
    max_tokens: _U32 | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    seed: _U64 | None = None
    stream: bool = False

    def parameters(self) -> _Parameters:
        # TGI switches to greedy decoding for temperature 0 instead of rejecting it.
        return _Parameters(
            temperature=None if self.temperature == 0.0 else self.temperature,
            do_sample=self.temperature != 0.0,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS if self.max_tokens is None else self.max_tokens,
            stop=self.stop or [],
            seed=self.seed,
        )


class _Message(BaseModel):
    model_config = _SERDE
    role: str
    content: str | list[dict[str, Any]] | None = None


class _ChatBody(_OpenAiBody):
    messages: list[_Message]
    stream_options: dict[str, Any] | None = None


class _CompletionBody(_OpenAiBody):
    prompt: str | list[str]


async def _parse[T: BaseModel](request: Request, model: type[T]) -> T:
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise HTTPException(415, "Expected request with `Content-Type: application/json`")
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"Failed to parse the request body as JSON: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = f"missing field `{where}`" if error["type"] == "missing" else f"{where}: {error['msg']}"
        raise HTTPException(422, f"Failed to deserialize the JSON body into the target type: {message}") from exc


# ---------------------------------------------------------------------------------------- one generation


@dataclass(slots=True)
class _Job:
    """One generation as the router tracks it: the validated request and its progress."""

    inputs: str
    parameters: _Parameters
    stream: bool
    return_full_text: bool = False
    received_at: float = field(default_factory=time.monotonic)
    input_length: int = 0
    max_new_tokens: int = 0
    tokens: list[Token] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # set before the last token is handed out
    started_at: float = 0.0
    finished_at: float = 0.0

    def usage(self) -> dict[str, int]:
        prompt, generated = self.input_length, len(self.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    def tgi_body(self) -> dict[str, Any]:
        """The ``/generate`` answer (GenerateResponse)."""
        body: dict[str, Any] = {"generated_text": self._output()}
        if self.parameters.details:
            body["details"] = self._details(prefill=[], tokens=[token.as_json() for token in self.tokens])
        return body

    def tgi_event(self, _index: int, token: Token) -> dict[str, Any]:
        """One ``/generate_stream`` event (StreamResponse); the last carries the text and, if asked, details."""
        last = self.finish_reason is not None
        details = self._details(input_length=self.input_length) if last and self.parameters.details else None
        text = self._output() if last else None
        return {"index": len(self.tokens), "token": token.as_json(), "generated_text": text, "details": details}

    def _details(self, **extra: Any) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "generated_tokens": len(self.tokens),
            "seed": self.parameters.seed,
            **extra,
        }

    def _output(self) -> str:
        return self.inputs + self.text if self.return_full_text else self.text

    def headers(self) -> dict[str, str]:
        total, inference = self.finished_at - self.received_at, self.finished_at - self.started_at
        return {
            "x-compute-type": COMPUTE_TYPE,
            "x-compute-time": repr(total),
            "x-total-time": str(int(total * 1000)),
            "x-inference-time": str(int(inference * 1000)),
            "x-prompt-tokens": str(self.input_length),
            "x-generated-tokens": str(len(self.tokens)),
        }


_Event = Callable[["_Job", int, Token], dict[str, Any]]  # one SSE event for a token of a job (its index)


class _Metrics:
    """TGI's Prometheus series in one registry per emulator (each instance has its own /metrics)."""

    def __init__(self, max_total_tokens: int) -> None:
        self.registry = registry = CollectorRegistry()
        # TGI's exporter writes counters without the `_total` suffix prometheus_client's Counter adds: the
        # counts are gauges here so that scrapers see TGI's names.
        self.requests = Gauge("tgi_request_count", "Total number of requests", registry=registry)
        self.success = Gauge("tgi_request_success", "Number of successful requests", registry=registry)
        self.failure = Gauge("tgi_request_failure", "Number of failed requests", ["err"], registry=registry)
        # No queue: every request the permits admit joins the running batch at once.
        Gauge("tgi_queue_size", "Current queue size", registry=registry)
        self.batch_size = Gauge("tgi_batch_current_size", "Current batch size", registry=registry)
        # Same geometric series as TGI's PrometheusBuilder (35 buckets from 0.00015 s); tokens in 100ths.
        seconds = [0.0001 * 1.5**n for n in range(1, 36)]
        self.duration = Histogram(
            "tgi_request_duration", "Total time spent processing the request", buckets=seconds, registry=registry
        )
        tokens = [max_total_tokens / 100 * n for n in range(1, 101)]
        self.generated = Histogram(
            "tgi_request_generated_tokens", "Generated tokens per request", buckets=tokens, registry=registry
        )

    def value(self, name: str) -> int:
        return int(self.registry.get_sample_value(name) or 0)


# ---------------------------------------------------------------------------------------- the emulator


def _loopback_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        if (address := ipaddress.ip_address(host)).version == 4 and address.is_loopback:
            return str(address)
    raise ValueError(f"host must be an IPv4 loopback address (127.0.0.0/8), got {host!r}")


async def _drop_pending() -> None:
    """Cancel what a stopped server left on its loop (the watcher, dropped streams) before the loop closes."""
    pending = asyncio.all_tasks() - {asyncio.current_task()}
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


def _not_cancelled(record: logging.LogRecord) -> bool:
    """Hides uvicorn's "Exception in ASGI application" for requests cancelled because the instance died."""
    return not isinstance(record.exc_info[1] if record.exc_info else None, asyncio.CancelledError)


class TgiEmulator:
    """One emulated TGI server (one GPU instance's ``text-generation-launcher``) on a loopback address.

    Lifecycle: constructed (port reserved but refusing connections) -> :meth:`boot` -> ``loading`` (port still
    refusing) -> ``ready`` once ``clock() - boot time >= load_seconds`` -> :meth:`kill` (reclaimed: listener
    closed, connections dropped) or :meth:`stop` (graceful); ``boot()`` again restarts it like a container.
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
        max_concurrent_requests: int = 128,
        max_input_tokens: int = 1024,
        max_total_tokens: int = 2048,
    ) -> None:
        if not model_id.strip() or not 0 <= port <= 65535 or max_concurrent_requests < 1:
            raise ValueError(f"need a model_id, a port in 0..65535 and max_concurrent_requests >= 1 ({model_id!r})")
        if load_seconds < 0 or token_delay < 0:
            raise ValueError(f"load_seconds and token_delay must be >= 0, got {load_seconds}, {token_delay}")
        if not 0 < max_input_tokens < max_total_tokens:  # text-generation-launcher refuses the same
            raise ValueError("max_input_tokens must be > 0 and < max_total_tokens")
        self.host, self.port, self.model_id = _loopback_host(host), port, model_id
        self.load_seconds, self.token_delay = float(load_seconds), float(token_delay)
        self.max_concurrent_requests = max_concurrent_requests
        self.max_input_tokens, self.max_total_tokens = max_input_tokens, max_total_tokens
        self._clock = clock
        self._metrics = _Metrics(max_total_tokens)
        self._in_flight = 0  # changed only on the server's event loop
        self._unhealthy = False
        self._hung = False
        self._fault: tuple[int, str] | None = None  # (after how many tokens, message)
        self._control_lock = threading.Lock()
        self._state = CREATED
        self._boot_time = 0.0
        self._ready_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._watcher: concurrent.futures.Future[None] | None = None
        self._app = self._build_app()
        # Reserve the port now (bound, not listening: connections are refused) so `.port`/`.url` are known
        # before boot even with port=0, and a clash surfaces here rather than when loading finishes.
        self._sock: socket.socket | None = None
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
    def unhealthy(self) -> bool:
        return self._unhealthy

    @property
    def requests_total(self) -> int:
        """Generation requests received (``tgi_request_count``)."""
        return self._metrics.value("tgi_request_count")

    @property
    def requests_served(self) -> int:
        """Generations completed successfully (``tgi_request_success``)."""
        return self._metrics.value("tgi_request_success")

    @property
    def in_flight(self) -> int:
        """Generations holding one of the ``max_concurrent_requests`` permits."""
        return self._in_flight

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
            # Check once now (load_seconds=0 serves on return), then watch the clock in the background.
            self._call_in_loop(self._check_loaded())
            self._watcher = asyncio.run_coroutine_threadsafe(self._load(), self._loop)
        return self

    def poll(self) -> bool:
        """Open the port now if loading is over on ``clock``; return whether the server is serving.

        The background watcher does the same every ``POLL_INTERVAL`` real seconds; a drill driving a simulated
        clock calls this after advancing it, so the outcome does not depend on thread timing.
        """
        if self._state != LOADING or self._loop is None:
            return self._state == READY
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

    def set_hung(self, hung: bool = True) -> None:
        """The process hangs: the port still accepts connections, but no request gets an answer (until unhung)."""
        self._hung = bool(hung)

    def fail_generation_after(self, n_tokens: int | None, message: str = "Server error: injected fault") -> None:
        """From now on every generation fails after ``n_tokens`` tokens (``None`` clears the fault): streams
        send that many token events then TGI's SSE error event; other calls answer 424."""
        if n_tokens is not None and n_tokens < 0:
            raise ValueError("n_tokens must be >= 0 or None")
        self._fault = None if n_tokens is None else (n_tokens, message)

    def kill(self) -> None:
        """The instance is gone: close the listener and drop every connection, in-flight or idle, at once."""
        self._shut_down(KILLED, drain_seconds=0.0)

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop like ``docker stop``: refuse new connections, let in-flight generations finish for up to
        ``drain_seconds``, then drop what is left. Safe to call in any state, repeatedly."""
        if drain_seconds < 0:
            raise ValueError("drain_seconds must be >= 0")
        self._shut_down(STOPPED, drain_seconds=drain_seconds)

    def info(self) -> dict[str, Any]:
        """The body of ``GET /info``."""
        return {
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": MAX_BEST_OF,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": MAX_CLIENT_BATCH_SIZE,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": None,
            "docker_label": None,
        }

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
        loop = self._loop = asyncio.new_event_loop()
        self._opening = asyncio.Lock()

        def run() -> None:  # run_coroutine_threadsafe queues work even before this starts: no handshake
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(_drop_pending())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"tgi-emulator-{self.url}", daemon=True)
        self._thread.start()

    def _call_in_loop(self, coroutine: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _load(self) -> None:
        while not await self._check_loaded() and self._state == LOADING:
            await asyncio.sleep(POLL_INTERVAL)

    async def _check_loaded(self) -> bool:
        async with self._opening:  # poll() and the watcher may both find the load over
            if self._state == LOADING and self._clock() - self._boot_time >= self.load_seconds:
                try:
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
        if _not_cancelled not in uvicorn_errors.filters:
            uvicorn_errors.addFilter(_not_cancelled)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])
        self._server, self._state = server, READY
        self._ready_event.set()
        logger.info("TGI emulator %s serving %s on %s", TGI_VERSION, self.model_id, self.url)

    def _shut_down(self, final_state: str, *, drain_seconds: float) -> None:
        with self._control_lock:
            if (loop := self._loop) is not None and self._thread is not None:
                self._call_in_loop(self._close_network(final_state, drain_seconds), timeout=drain_seconds + 10)
                loop.call_soon_threadsafe(loop.stop)
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
            if (transport := getattr(connection, "transport", None)) is not None:
                transport.abort()
        if tasks := list(state.tasks):
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)
        logger.info("TGI emulator on %s %s", self.url, final_state)

    # ---------------------------------------------------------------- generation, shared by every route

    def _validate(self, job: _Job) -> None:
        # Same messages and order as router/src/validation.rs, for the checks the gateway leaves to TGI.
        p = job.parameters
        job.input_length = count_tokens(job.inputs)
        job.max_new_tokens = self.max_total_tokens - job.input_length if p.max_new_tokens is None else p.max_new_tokens
        failed = (
            (job.stream and p.best_of not in (None, 1), "`best_of` != 1 is not allowed for this endpoint"),
            (
                p.best_of is not None and not 0 < p.best_of <= MAX_BEST_OF,
                f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {p.best_of}",
            ),
            ((p.best_of or 1) > 1 and not p.do_sample, "you must use sampling when `best_of` is > 1"),
            (p.temperature is not None and p.temperature <= 0, "`temperature` must be strictly positive"),
            (p.max_new_tokens == 0, "`max_new_tokens` must be strictly positive"),
            (
                len(p.stop) > MAX_STOP_SEQUENCES,
                f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p.stop)}",
            ),
            (not job.inputs, "`inputs` cannot be empty"),
            (
                job.input_length + job.max_new_tokens > self.max_total_tokens,
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {job.input_length} `inputs` tokens and {job.max_new_tokens} `max_new_tokens`",
            ),
            (
                job.input_length > self.max_input_tokens,
                f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {job.input_length}",
            ),
        )
        if message := next((message for bad, message in failed if bad), None):
            raise InferError(422, f"Input validation error: {message}", "validation")

    async def _generate(self, job: _Job) -> AsyncIterator[Token]:
        """The one generation loop: permit, validation, then a token every ``token_delay`` real seconds.

        Raises :class:`InferError` (counted in ``tgi_request_failure``): 429 overloaded, 422 bad input, 424
        generation fault; sets ``job.finish_reason`` (and counts the success) before yielding the last token.
        """
        try:
            # Infer::generate_stream takes a permit before validating: overload wins over bad input.
            if self._in_flight >= self.max_concurrent_requests:
                raise InferError(429, "Model is overloaded", "overloaded")
            self._in_flight += 1
            try:
                self._validate(job)
                job.started_at = time.monotonic()
                with self._metrics.batch_size.track_inprogress():
                    tokens = generate_tokens(
                        job.inputs, job.max_new_tokens, model_id=self.model_id, seed=job.parameters.seed
                    )
                    for position, token in enumerate(tokens):
                        if self._unhealthy or (self._fault and position >= self._fault[0]):
                            reason = "Server error: the shard is unhealthy" if self._unhealthy else self._fault[1]
                            raise InferError(424, f"Request failed during generation: {reason}", "generation")
                        if self.token_delay:
                            await asyncio.sleep(self.token_delay)
                        job.tokens.append(token)
                        job.text += token.text
                        if any(job.text.endswith(stop) for stop in job.parameters.stop):
                            job.finish_reason = "stop_sequence"
                        elif position == job.max_new_tokens - 1:
                            job.finish_reason = "length"
                        if job.finish_reason is not None:
                            job.finished_at = time.monotonic()
                            self._metrics.success.inc()
                            self._metrics.duration.observe(job.finished_at - job.received_at)
                            self._metrics.generated.observe(len(job.tokens))
                        yield token
                        if job.finish_reason is not None:
                            return
            finally:
                self._in_flight -= 1
        except InferError as exc:
            self._metrics.failure.labels(err=exc.error_type).inc()
            raise

    async def _respond(
        self, jobs: Sequence[_Job], event: _Event, body: Callable[[], Any], done: bool = False
    ) -> Response:
        """Run ``jobs`` (one per prompt) and answer: SSE (one ``event`` per token, errors as an event, then
        ``[DONE]`` if ``done``) when they stream, else JSON ``body()`` or the first error."""
        self._metrics.requests.inc()
        if not jobs[0].stream:
            try:
                for job in jobs:
                    async with contextlib.aclosing(self._generate(job)) as generation:
                        async for _ in generation:
                            pass
            except InferError as exc:
                return JSONResponse(exc.body, status_code=exc.status)
            return JSONResponse(body(), headers=jobs[0].headers())

        async def events() -> AsyncIterator[bytes]:
            for index, job in enumerate(jobs):
                try:
                    async with contextlib.aclosing(self._generate(job)) as generation:
                        async for token in generation:
                            yield _sse(event(job, index, token))
                except InferError as exc:
                    yield _sse(exc.body)
            if done:
                yield b"data: [DONE]\n\n"

        # content-type set explicitly so Starlette does not append a charset that axum's Sse never sends.
        headers = {
            "content-type": "text/event-stream",
            "x-compute-type": COMPUTE_TYPE,
            "cache-control": "no-cache",
            "x-compute-characters": str(sum(len(job.inputs) for job in jobs)),
            "x-accel-buffering": "no",
        }
        return StreamingResponse(events(), headers=headers)

    # ---------------------------------------------------------------- HTTP routes

    def _build_app(self) -> Any:
        get, post = ["GET"], ["POST"]
        routes = [
            Route("/health", self._health, methods=get),
            Route("/info", self._info, methods=get),
            Route("/metrics", self._prometheus, methods=get),
            Route("/v1/models", self._models, methods=get),
            Route("/", self._compat_generate, methods=post),
            Route("/generate", self._generate_route, methods=post),
            Route("/generate_stream", self._generate_route, methods=post),
            Route("/tokenize", self._tokenize, methods=post),
            Route("/chat_tokenize", self._chat_tokenize, methods=post),
            Route("/v1/chat/completions", self._chat_completions, methods=post),
            Route("/v1/completions", self._completions, methods=post),
        ]
        # Starlette answers HTTPException in plain text, like axum's Json extractor rejections.
        app = Starlette(routes=routes)
        app.router.default = _not_found

        async def hanging(scope: Any, receive: Any, send: Any) -> None:
            while scope["type"] == "http" and self._hung:
                await asyncio.sleep(0.05)
            await app(scope, receive, send)

        return hanging

    async def _health(self, request: Request) -> Response:
        if self._unhealthy:
            return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
        return Response(status_code=200)

    async def _info(self, request: Request) -> Response:
        return JSONResponse(self.info())

    async def _models(self, request: Request) -> Response:
        model = {"id": self.model_id, "object": "model", "created": 0, "owned_by": self.model_id}
        return JSONResponse({"object": "list", "data": [model]})

    async def _prometheus(self, request: Request) -> Response:
        exposition = prometheus_client.generate_latest(self._metrics.registry)
        return Response(exposition, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def _generate_route(self, request: Request) -> Response:
        body = await _parse(request, _GenerateBody)
        stream = request.url.path == "/generate_stream"
        job = _Job(body.inputs, body.parameters, stream, return_full_text=bool(body.parameters.return_full_text))
        return await self._respond([job], _Job.tgi_event, job.tgi_body)

    async def _tokenize(self, request: Request) -> Response:
        body = await _parse(request, _GenerateBody)
        return JSONResponse(tokenize(body.inputs))

    async def _chat_tokenize(self, request: Request) -> Response:
        # TGI counts it as a request (get_chat_tokenize increments tgi_request_count) but generates nothing.
        self._metrics.requests.inc()
        body = await _parse(request, _ChatBody)
        prompt = render_chat_prompt([message.model_dump() for message in body.messages])
        return JSONResponse({"tokenize_response": tokenize(prompt), "templated_text": prompt})

    async def _compat_generate(self, request: Request) -> Response:
        body = await _parse(request, _GenerateBody)
        # TGI defaults return_full_text on this route from the model's pipeline tag (text-generation: true).
        job = _Job(
            body.inputs, body.parameters, body.stream, return_full_text=body.parameters.return_full_text is not False
        )
        return await self._respond([job], _Job.tgi_event, lambda: [job.tgi_body()])

    def _openai(self, kind: str, choices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        envelope = {"object": kind, "id": "", "created": int(time.time()), "model": self.model_id}
        return {**envelope, "system_fingerprint": f"{TGI_VERSION}-native", "choices": choices, **fields}

    async def _chat_completions(self, request: Request) -> Response:
        body = await _parse(request, _ChatBody)
        prompt = render_chat_prompt([message.model_dump() for message in body.messages])
        job = _Job(prompt, body.parameters(), body.stream)
        include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))

        def chunk(job: _Job, _index: int, token: Token) -> dict[str, Any]:
            delta = {"role": "assistant", "content": token.text}
            usage = job.usage() if include_usage and job.finish_reason else None
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": job.finish_reason}
            return self._openai("chat.completion.chunk", [choice], usage=usage)

        def answer() -> dict[str, Any]:
            message = {"role": "assistant", "content": job.text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": job.finish_reason}
            return self._openai("chat.completion", [choice], usage=job.usage())

        return await self._respond([job], chunk, answer, done=True)

    async def _completions(self, request: Request) -> Response:
        body = await _parse(request, _CompletionBody)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        jobs = [_Job(prompt, body.parameters(), body.stream) for prompt in prompts]

        def chunk(job: _Job, index: int, token: Token) -> dict[str, Any]:
            # Streamed chunks say "" until the last, which keeps the raw finish reason.
            choice = {"finish_reason": job.finish_reason or "", "index": index, "logprobs": None, "text": token.text}
            return self._openai("text_completion", [choice], **({"usage": job.usage()} if job.finish_reason else {}))

        def answer() -> dict[str, Any]:
            choices = [
                {"finish_reason": job.finish_reason, "index": index, "logprobs": None, "text": job.text}
                for index, job in enumerate(jobs)
            ]
            usage = {key: sum(job.usage()[key] for job in jobs) for key in jobs[0].usage()}
            return self._openai("text_completion", choices, usage=usage)

        return await self._respond(jobs, chunk, answer, done=True)


async def _not_found(scope: Any, receive: Any, send: Any) -> None:
    # axum answers unknown routes with an empty 404.
    await Response(status_code=404)(scope, receive, send)


def _sse(payload: Mapping[str, Any]) -> bytes:
    # axum's Event::json_data framing as served by TGI 2.x/3.x: "data: <compact json>\n\n".
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
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
    parser.add_argument("--max-input-tokens", type=int, default=1024)
    parser.add_argument("--max-total-tokens", type=int, default=2048)
    parser.add_argument("--drain-seconds", type=float, default=5.0, help="grace period on SIGTERM/SIGINT")
    options = vars(parser.parse_args(argv))
    drain_seconds = options.pop("drain_seconds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        emulator = TgiEmulator(**options)
    except (ValueError, OSError) as exc:
        logger.error("cannot start the TGI emulator: %s", exc)
        return 2
    shutdown = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: shutdown.set())
    emulator.boot()
    logger.info("loading %s for %.1f s; %s opens when loaded", emulator.model_id, emulator.load_seconds, emulator.url)
    while not shutdown.wait(0.5):
        pass
    emulator.stop(drain_seconds=drain_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
