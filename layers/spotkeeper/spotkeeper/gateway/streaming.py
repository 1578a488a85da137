"""Relaying TGI's server-sent events to the client as they arrive, and never ending a stream silently.

Bytes are forwarded line by line (an event is sent as soon as its line is complete), so a token reaches the
client as soon as TGI emitted it, and a stream that breaks can still be closed with a whole error event
instead of half a JSON line. A stream is finished when TGI said so: ``data: [DONE]``, a TGI event with
``generated_text``, or an OpenAI chunk with a ``finish_reason``; anything else ending it is an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from spotkeeper.gateway.errors import GENERATION, sse_error_event
from spotkeeper.gateway.telemetry import RequestRecord
from spotkeeper.gateway.upstream import Upstream
from spotkeeper.observability import logger


class StreamProgress:
    """What the events seen so far say about the generation."""

    def __init__(self, record: RequestRecord | None) -> None:
        self.record = record
        self.tokens = 0
        self.finished = False
        self.upstream_error: str | None = None

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
        if _carries_token(event):
            self.tokens += 1
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


def _has_finish_reason(event: dict[str, Any]) -> bool:
    return any(
        isinstance(choice, dict) and choice.get("finish_reason") is not None for choice in event.get("choices") or []
    )


async def relay_events(upstream: Upstream, record: RequestRecord | None) -> AsyncIterator[bytes]:
    progress = StreamProgress(record)
    pending = b""
    broken: str | None = None
    try:
        async for chunk in upstream.response.aiter_bytes():
            pending += chunk
            end = pending.rfind(b"\n")
            if end < 0:
                continue
            complete, pending = pending[: end + 1], pending[end + 1 :]
            progress.observe(complete)
            yield complete
        if pending:
            progress.observe(pending)
            yield pending + b"\n\n"
        if not progress.finished:
            broken = "the backend closed the stream before the generation finished"
    except httpx.HTTPError as error:
        broken = f"the backend failed during the generation ({type(error).__name__})"
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.close()
        if record is not None:
            record.tokens_out = progress.tokens
            record.stream_error = broken or progress.upstream_error
    if broken is not None:
        logger.warning(
            "generation stream broke",
            extra={"reason": broken, "serving_instance_id": upstream.backend.instance_id, "tokens": progress.tokens},
        )
        yield sse_error_event(broken + "; retry the request", GENERATION)
