"""Resuming a generation stream that broke mid-way, on another replica, so the client sees one stream.

A replica that dies mid-stream has sent the client some tokens. The continuation is asked of another replica
as a new generation: the prompt plus the text already streamed, with the token budget left (the original
max_new_tokens / max_tokens minus the tokens already sent). With greedy decoding that continuation is the
text the first replica would have produced (up to tokenization at the seam); with sampling it is a valid
continuation of what the client has. Its events are rewritten to continue the first stream's numbering and
totals, so the client sees no repeated and no missing text.

Resumable: TGI's ``/generate_stream`` and ``/`` (stream), and ``/v1/completions`` with one prompt. Not:
a request with a grammar (the grammar would restart from the middle of its output) or several prompts.
``/v1/chat/completions`` streams are resumed through the model's chat template (``chat_resume.py``).

A request without max_new_tokens / max_tokens is resumed with the gateway's MAX_NEW_TOKENS as its budget
(TGI's own default depends on its version and launch options).

Known limit: a stop sequence that straddles the seam (its start already streamed) is not seen by the new
replica, which only checks the text it generates.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from spotkeeper.gateway.upstream import Upstream

TGI = "tgi"
COMPLETIONS = "completions"

Rewrite = Callable[[bytes], bytes]
"""Turns complete SSE lines of the continuation into the lines the client gets."""

Opener = Callable[[str, dict[str, Any], float | None], Awaitable[Upstream]]
"""POSTs ``(path, body, read_timeout)`` to a replica other than those the stream broke on."""


@dataclass(frozen=True)
class Seam:
    """Where the client's stream broke: what it has received."""

    text: str  # the generated text, token by token
    tokens: int
    events: int = 0  # data events that reached the client (tokens or not)
    envelope: dict[str, Any] = field(default_factory=dict)  # an OpenAI chunk's fields other than choices/usage


class Plan(Protocol):
    async def reopen(self, seam: Seam, open_: Opener) -> tuple[Upstream, Rewrite] | None:
        """The continuation's stream and how to rewrite its lines; None when nothing is left or it cannot be
        exact. Raises GatewayError when no replica can take it."""
        ...


@dataclass(frozen=True)
class ResumePlan:
    """How to ask another replica for the rest of a generation."""

    path: str
    payload: dict[str, Any]
    kind: Literal["tgi", "completions"]
    prompt: str
    budget: int  # tokens the client asked for in all

    def continuation(self, text: str, tokens: int) -> dict[str, Any] | None:
        """The request for the rest, after ``tokens`` tokens spelling ``text``; None if nothing is left."""
        remaining = self.budget - tokens
        if remaining <= 0:
            return None
        body = copy.deepcopy(self.payload)
        if self.kind == TGI:
            body["inputs"] = self.prompt + text
            body.setdefault("parameters", {})["max_new_tokens"] = remaining
        else:
            body["prompt"] = self.prompt + text
            body["max_tokens"] = remaining
        return body

    async def reopen(self, seam: Seam, open_: Opener) -> tuple[Upstream, Rewrite] | None:
        body = self.continuation(seam.text, seam.tokens)
        if body is None:
            return None
        upstream = await open_(self.path, body, None)
        return upstream, lambda lines: rewrite_lines(lines, self, seam.text, seam.tokens)

    def rewrite(self, event: dict[str, Any], text: str, tokens: int) -> dict[str, Any]:
        """An event of the continuation, as the first stream would have numbered and summed it."""
        if self.kind == TGI:
            return _rewrite_tgi(event, self.prompt, text, tokens, self.payload.get("parameters", {}))
        return _rewrite_completion(event, tokens)


def plan_generate(path: str, payload: dict[str, Any], default_budget: int) -> ResumePlan | None:
    parameters = payload.get("parameters") or {}
    if parameters.get("grammar") is not None:
        return None
    budget = parameters.get("max_new_tokens") or default_budget
    return ResumePlan(path=path, payload=payload, kind=TGI, prompt=payload["inputs"], budget=budget)


def plan_completion(path: str, payload: dict[str, Any], default_budget: int) -> ResumePlan | None:
    prompt = payload.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1:
            return None
        prompt = prompt[0]
        payload = {**payload, "prompt": prompt}
    if not isinstance(prompt, str) or payload.get("suffix") is not None:
        return None
    budget = payload.get("max_tokens") or default_budget
    return ResumePlan(path=path, payload=payload, kind=COMPLETIONS, prompt=prompt, budget=budget)


def _rewrite_tgi(
    event: dict[str, Any], prompt: str, text: str, tokens: int, parameters: dict[str, Any]
) -> dict[str, Any]:
    if isinstance(event.get("index"), int):
        event["index"] += tokens
    generated = event.get("generated_text")
    if isinstance(generated, str):
        # With return_full_text the continuation's inputs (prompt + text) already lead its generated text.
        full = parameters.get("return_full_text")
        if full is None:
            full = generated.startswith(prompt + text)
        if not full:
            event["generated_text"] = text + generated
    details = event.get("details")
    if isinstance(details, dict):
        if isinstance(details.get("generated_tokens"), int):
            details["generated_tokens"] += tokens
        if isinstance(details.get("input_length"), int):
            details["input_length"] = max(details["input_length"] - tokens, 0)
    return event


def _rewrite_completion(event: dict[str, Any], tokens: int) -> dict[str, Any]:
    usage = event.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            usage["completion_tokens"] += tokens
        if isinstance(usage.get("prompt_tokens"), int):
            usage["prompt_tokens"] = max(usage["prompt_tokens"] - tokens, 0)
    return event


def rewrite_lines(lines: bytes, plan: ResumePlan, text: str, tokens: int) -> bytes:
    """Rewrite the ``data:`` JSON lines of a chunk of the continuation; other lines pass unchanged."""
    out = []
    for line in lines.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:].strip()
            try:
                event = json.loads(data)
            except ValueError:
                event = None
            if isinstance(event, dict) and event.get("error") is None:
                rewritten = plan.rewrite(event, text, tokens)
                line = b"data: " + json.dumps(rewritten, separators=(",", ":"), ensure_ascii=False).encode()
        out.append(line)
    return b"\n".join(out)
