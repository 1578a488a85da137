"""Relaying TGI's server-sent events to the client as they arrive, and never ending a stream silently.

Bytes are forwarded line by line (an event is sent as soon as its line is complete), so a token reaches the
client as soon as TGI emitted it, and a stream that breaks can still be closed with a whole error event
instead of half a JSON line. A stream is finished when TGI said so: ``data: [DONE]``, a TGI event with
``generated_text``, or an OpenAI chunk with a ``finish_reason``; anything else ending it is an error.

A stream that breaks (the connection drops, it ends unfinished, or TGI stops sending and fails its liveness check:
``Upstream.chunks``) is resumed once on another replica when
the route allows it (``resume.py``, ``chat_resume.py``): the client's stream goes on with the continuation's
events. Otherwise, or if no other replica can take it, the client gets TGI's error event.

TGI answers a stream it has no room for with 200 and "Model is overloaded" (its 429) as the first event; that
stream is sent once to another ready replica before anything reached the client (the one-retry budget of
``upstream.py``), else the client gets the error event as TGI sent it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from spotkeeper.gateway.errors import GENERATION, OVERLOADED_MESSAGE, GatewayError, sse_error_event
from spotkeeper.gateway.resume import Plan, Rewrite, Seam
from spotkeeper.gateway.telemetry import RequestRecord
from spotkeeper.gateway.upstream import Upstream
from spotkeeper.observability import logger


class StreamProgress:
    """What the events seen so far say about the generation."""

    def __init__(self, record: RequestRecord | None) -> None:
        self.record = record
        self.tokens = 0
        self.text = ""  # the generated text the client has received, token by token
        self.finished = False
        self.upstream_error: str | None = None
        self.events = 0  # data events other than errors and [DONE]
        self.envelope: dict[str, Any] = {}  # the last OpenAI chunk's fields but its choices and usage

    def seam(self) -> Seam:
        return Seam(self.text, self.tokens, self.events, dict(self.envelope))

    def observe(self, lines: bytes) -> None:
        for line in lines.split(b"\n"):
            if line.startswith(b"data:"):
                self._observe_event(line[5:].strip())

    def _observe_event(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.finished = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("error") is not None:
            self.upstream_error = str(event.get("error"))
            self.finished = True
            return
        self.events += 1
        if "choices" in event:
            self.envelope = {key: value for key, value in event.items() if key not in ("choices", "usage")}
        if _carries_token(event):
            self.tokens += 1
            self.text += _token_text(event)
            if self.record is not None and self.record.first_token_at is None:
                self.record.first_token_at = time.perf_counter()
        if event.get("generated_text") is not None or _has_finish_reason(event):
            self.finished = True


def _carries_token(event: dict[str, Any]) -> bool:
    if isinstance(event.get("token"), dict):
        return not event["token"].get("special", False)
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            return True
        if choice.get("text"):
            return True
    return False


def _token_text(event: dict[str, Any]) -> str:
    if isinstance(event.get("token"), dict):
        text = event["token"].get("text")
        return text if isinstance(text, str) else ""
    for choice in event.get("choices") or []:
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            return text if isinstance(text, str) else ""
    return ""


def _has_finish_reason(event: dict[str, Any]) -> bool:
    # TGI's streamed /v1/completions chunks carry "finish_reason": "" until the last one.
    return any(isinstance(choice, dict) and choice.get("finish_reason") for choice in event.get("choices") or [])


@dataclass(frozen=True)
class Resumption:
    """How to continue a broken stream: the plan, and a way to POST to a replica not in ``exclude``."""

    plan: Plan
    open: Callable[[str, dict[str, Any], float | None, frozenset[str]], Awaitable[Upstream]]


OverloadRetry = Callable[[frozenset[str]], Awaitable[Upstream | None]]
"""The request again on another ready replica not in ``exclude``; None when there is none."""


async def relay_events(
    upstream: Upstream,
    record: RequestRecord | None,
    resumption: Resumption | None = None,
    retry_overloaded: OverloadRetry | None = None,
) -> AsyncIterator[bytes]:
    """The client's stream. ``retry_overloaded``: TGI answers an overloaded stream with 200 and an error event
    (``Model is overloaded``, its 429) as the first event; before anything reached the client that request
    is sent once to another ready replica, unless it was already retried."""
    progress = StreamProgress(record)
    current = upstream
    rewrite: Rewrite | None = None  # the continuation's lines as the client gets them, once resumed
    resumed = False
    broken_on: set[str] = set()
    tail = b"\n\n"  # the last bytes the client got: whether it is at an event boundary
    sent = False
    broken: str | None = None
    try:
        while True:
            broken = None
            switched: Upstream | None = None
            pending = b""
            try:
                async for chunk in current.chunks():
                    pending += chunk
                    end = pending.rfind(b"\n")
                    if end < 0:
                        continue
                    complete, pending = pending[: end + 1], pending[end + 1 :]
                    if rewrite is not None:
                        complete = rewrite(complete)
                    if not sent and retry_overloaded is not None and not current.retried and _overloaded(complete):
                        switched = await _elsewhere(retry_overloaded, current)
                        retry_overloaded = None
                        if switched is not None:
                            break
                    progress.observe(complete)
                    tail = (tail + complete)[-2:]
                    sent = True
                    yield complete
                if switched is None:
                    if pending:
                        if rewrite is not None:
                            pending = rewrite(pending)
                        progress.observe(pending)
                        tail = b"\n\n"
                        sent = True
                        yield pending + b"\n\n"
                    if not progress.finished:
                        broken = "the backend closed the stream before the generation finished"
            except httpx.HTTPError as error:
                broken = f"the backend failed during the generation ({type(error).__name__})"
            finally:
                with anyio.CancelScope(shield=True):
                    await current.close()
            if switched is not None:
                current = switched
                if record is not None:
                    record.retries += 1
                    record.serving_instance_id = current.backend.instance_id
                continue
            if broken is None:
                break
            logger.warning(
                "generation stream broke",
                extra={"reason": broken, "serving_instance_id": current.backend.instance_id, "tokens": progress.tokens},
            )
            broken_on.add(current.backend.url)
            reopened = None if resumed else await _resume(resumption, progress.seam(), broken_on)
            if reopened is None:
                break
            if record is not None:
                record.resumes += 1
            (current, rewrite), resumed = reopened, True
            if not tail.endswith(b"\n\n"):
                tail = b"\n\n"
                yield b"\n"  # close the event the broken stream left open before the continuation's first
    finally:
        if record is not None:
            record.tokens_out = progress.tokens
            record.stream_error = broken or progress.upstream_error
    if broken is not None:
        boundary = b"" if tail.endswith(b"\n\n") else b"\n"
        yield boundary + sse_error_event(broken + "; retry the request", GENERATION)


def _overloaded(lines: bytes) -> bool:
    """Whether the first event of these lines is TGI's "Model is overloaded" (native or chat shape)."""
    for line in lines.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            event = json.loads(line[5:].strip())
        except ValueError:
            return False
        if not isinstance(event, dict):
            return False
        error = event.get("error")
        if isinstance(error, dict):  # TGI's chat route: {"error": {"message": ..., "http_status_code": ...}}
            return error.get("message") == OVERLOADED_MESSAGE
        return event.get("error_type") == "overloaded"
    return False


async def _elsewhere(retry: OverloadRetry, current: Upstream) -> Upstream | None:
    try:
        upstream = await retry(frozenset({current.backend.url}))
    except GatewayError as error:
        logger.warning("could not retry an overloaded stream on another replica", extra={"reason": error.message})
        return None
    if upstream is not None:
        upstream.retried = True
        logger.info(
            "overloaded stream sent to another replica",
            extra={"from": current.backend.instance_id, "to": upstream.backend.instance_id},
        )
    return upstream


async def _resume(resumption: Resumption | None, seam: Seam, broken_on: set[str]) -> tuple[Upstream, Rewrite] | None:
    """The continuation's stream on another replica, or None: not resumable, or nobody can take it."""
    if resumption is None:
        return None
    exclude = frozenset(broken_on)

    async def open_(path: str, body: dict[str, Any], read_timeout: float | None) -> Upstream:
        return await resumption.open(path, body, read_timeout, exclude)

    try:
        reopened = await resumption.plan.reopen(seam, open_)
    except GatewayError as error:
        logger.warning("could not resume the stream on another replica", extra={"reason": error.message})
        return None
    if reopened is None:
        return None
    upstream, rewrite = reopened
    content_type = upstream.response.headers.get("content-type", "")
    if upstream.response.status_code != 200 or "text/event-stream" not in content_type:
        logger.warning("the replica refused the continuation", extra={"status": upstream.response.status_code})
        with anyio.CancelScope(shield=True):
            await upstream.close()
        return None
    logger.info(
        "stream resumed on another replica",
        extra={"instance_id": upstream.backend.instance_id, "tokens_sent": seam.tokens},
    )
    return upstream, rewrite
