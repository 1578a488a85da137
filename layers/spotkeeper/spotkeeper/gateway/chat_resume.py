"""Resuming a broken ``/v1/chat/completions`` stream on another replica, through the model's chat template.

TGI's chat route renders the conversation with the model's chat template and runs it as a plain generation
(router/src/lib.rs, ``ChatRequest::try_into_generate``). The continuation does the same by hand:

1. ``POST /chat_tokenize`` (TGI >= 2.3) with the client's chat request gives ``templated_text``, the prompt the
   chat route generated from, and its tokens (tokenized without special tokens, as the chat route does);
2. ``POST /tokenize`` checks that ``/generate_stream`` (which always adds the tokenizer's special tokens) sees
   the same tokens for that prompt. A tokenizer that adds a BOS the template already wrote (Llama, Mistral)
   would see it twice: the template's leading BOS text is then left out and the check made again;
3. ``POST /generate_stream`` with the prompt plus the text already streamed, the token budget left and the
   chat route's own mapping of the sampling parameters (``temperature`` 0 is greedy, ``presence_penalty``
   + 2 is ``repetition_penalty``, ``top_logprobs`` is ``top_n_tokens``, ``model`` other than "tgi" is
   ``adapter_id``);
4. each TGI-native event is written back as the ``chat.completion.chunk`` TGI's chat route would have sent
   (router/src/chat.rs), with the id, created, model and system_fingerprint of the broken stream's chunks:
   the finish reason ``eos_token`` reads ``stop``, the usage chunk (``stream_options.include_usage``) counts
   every token of the client's stream, and ``data: [DONE]`` ends it.

With greedy decoding the client gets the text an unbroken stream gives (up to tokenization at the seam, as for
``/v1/completions``); with sampling and no seed, a valid continuation of what it has.

Not resumed (the stream ends with the SSE error event, as with one replica), where the continuation could not
be exact:

* ``tools`` or ``response_format``: a grammar restarts from the middle of its output, and TGI's tool stream
  buffers text before its first chunk;
* ``logprobs``: the gateway does not rebuild the chunks' log probabilities;
* ``n`` > 1 (TGI itself refuses it);
* a ``seed`` with sampling: a seeded stream is reproducible, its continuation from a new seed state is not;
* image parts in a message (the templated text of a vision model is not checked to be a valid prompt);
* a replica without ``/chat_tokenize`` or ``/tokenize`` (TGI < 2.3, or no fast tokenizer: 404), or whose
  tokens for the prompt differ from the chat route's in any other way.

If the stream broke before any chunk reached the client, the chat request itself is sent again.
Cost: two or three small JSON calls on the replica that takes over, only on the resume path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from spotkeeper.gateway.resume import Opener, Rewrite, Seam
from spotkeeper.gateway.upstream import PROBE_READ_TIMEOUT_SECONDS, Upstream
from spotkeeper.observability import logger

CHAT_PATH = "/v1/chat/completions"
_ENVELOPE = ("object", "id", "created", "model", "system_fingerprint")


@dataclass(frozen=True)
class ChatResumePlan:
    payload: dict[str, Any]  # the chat request sent to TGI (the gateway's own, validated body)
    budget: int  # max_tokens

    async def reopen(self, seam: Seam, open_: Opener) -> tuple[Upstream, Rewrite] | None:
        remaining = self.budget - seam.tokens
        if remaining <= 0:
            return None
        if seam.events == 0:  # the client has nothing yet: the request itself, on another replica
            return await open_(CHAT_PATH, self.payload, None), _unchanged
        if not seam.envelope:
            return None
        prompt = await self._prompt(open_)
        if prompt is None:
            return None
        body = {"inputs": prompt + seam.text, "parameters": self.parameters(remaining)}
        upstream = await open_("/generate_stream", body, None)
        include_usage = bool((self.payload.get("stream_options") or {}).get("include_usage"))
        return upstream, ChatTranslation(seam, include_usage).lines

    def parameters(self, max_new_tokens: int) -> dict[str, Any]:
        """The ``/generate_stream`` parameters TGI's chat route derives from the request (try_into_generate)."""
        payload = self.payload
        temperature = payload.get("temperature")
        greedy = temperature is not None and temperature == 0
        parameters: dict[str, Any] = {"do_sample": not greedy, "max_new_tokens": max_new_tokens, "details": True}
        if temperature is not None and not greedy:
            parameters["temperature"] = temperature
        if payload.get("presence_penalty") is not None:
            parameters["repetition_penalty"] = payload["presence_penalty"] + 2.0
        for name in ("frequency_penalty", "top_p", "seed", "stop"):
            if payload.get(name) is not None:
                parameters[name] = payload[name]
        if payload.get("top_logprobs") is not None:
            parameters["top_n_tokens"] = payload["top_logprobs"]
        if payload.get("model") not in (None, "tgi"):
            parameters["adapter_id"] = payload["model"]
        return parameters

    async def _prompt(self, open_: Opener) -> str | None:
        """The templated prompt, spelled so that ``/generate_stream`` sees the chat route's tokens; or None."""
        request = {key: value for key, value in self.payload.items() if key not in ("stream", "stream_options")}
        templated = await _json(open_("/chat_tokenize", request, PROBE_READ_TIMEOUT_SECONDS), "/chat_tokenize")
        if not isinstance(templated, dict) or not isinstance(templated.get("templated_text"), str):
            return None
        chat_tokens = templated.get("tokenize_response")
        if not isinstance(chat_tokens, list) or not chat_tokens or not all(isinstance(t, dict) for t in chat_tokens):
            return None
        expected = [token.get("id") for token in chat_tokens]
        prompt: str = templated["templated_text"]
        ids = await _token_ids(open_, prompt)
        if ids == expected:
            return prompt
        first = chat_tokens[0]
        if ids == [expected[0], *expected] and first.get("start") == 0 and isinstance(first.get("stop"), int):
            # The tokenizer adds the BOS the template wrote: leave the template's out (offsets are in bytes).
            try:
                stripped = prompt.encode()[first["stop"] :].decode()
            except UnicodeDecodeError:
                return None
            if await _token_ids(open_, stripped) == expected:
                return stripped
        logger.warning("the chat template's prompt does not tokenize as the chat route's", extra={"tokens": ids})
        return None


def plan_chat(payload: dict[str, Any], default_budget: int) -> ChatResumePlan | None:
    """How to resume this chat request's stream, or None where a continuation cannot be exact (see above)."""
    if payload.get("tools") or payload.get("response_format") is not None or payload.get("logprobs"):
        return None
    if payload.get("n", 1) != 1:
        return None
    temperature = payload.get("temperature")
    if payload.get("seed") is not None and not (temperature is not None and temperature == 0):
        return None
    for message in payload.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list) and any(part.get("type") != "text" for part in content):
            return None
    return ChatResumePlan(payload=payload, budget=payload.get("max_tokens") or default_budget)


class ChatTranslation:
    """TGI-native ``/generate_stream`` events written back as the chat route's chunks."""

    def __init__(self, seam: Seam, include_usage: bool) -> None:
        self._seam = seam
        self._include_usage = include_usage
        self._envelope = {key: seam.envelope[key] for key in _ENVELOPE if key in seam.envelope}
        self._ended = False

    def lines(self, lines: bytes) -> bytes:
        out = []
        for line in lines.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    event = json.loads(line[5:].strip())
                except ValueError:
                    event = None
                if isinstance(event, dict):
                    line = b"\n\n".join(b"data: " + _dumps(chunk) for chunk in self.chunks(event))
            out.append(line)
        return b"\n".join(out)

    def chunks(self, event: dict[str, Any]) -> list[Any]:
        """The chat route's events for one TGI event: a chunk, then on the last token the usage and [DONE]."""
        if self._ended:
            return []
        if event.get("error") is not None:
            self._ended = True
            # TGI's chat route sends generation errors in this shape (InferError::into_openai_event).
            return [{"error": {"message": str(event["error"]), "http_status_code": 422}}, "[DONE]"]
        token = event.get("token") if isinstance(event.get("token"), dict) else {}
        text = token.get("text") if not token.get("special") else ""
        details = event.get("details") if isinstance(event.get("details"), dict) else None
        finish = details.get("finish_reason") if details else None
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": text if isinstance(text, str) else ""},
            "logprobs": None,
            "finish_reason": "stop" if finish == "eos_token" else finish,
        }
        chunks: list[Any] = [{**self._envelope, "choices": [choice], "usage": None}]
        if details is not None or event.get("generated_text") is not None:
            self._ended = True
            if self._include_usage and details is not None:
                completion = _int(details.get("generated_tokens")) + self._seam.tokens
                prompt = max(_int(details.get("input_length")) - self._seam.tokens, 0)
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
                chunks.append({**self._envelope, "choices": [], "usage": usage})
            chunks.append("[DONE]")
        return chunks


def _unchanged(lines: bytes) -> bytes:
    return lines


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _dumps(chunk: Any) -> bytes:
    if chunk == "[DONE]":
        return b"[DONE]"
    return json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()


async def _token_ids(open_: Opener, prompt: str) -> list[Any] | None:
    tokens = await _json(open_("/tokenize", {"inputs": prompt}, PROBE_READ_TIMEOUT_SECONDS), "/tokenize")
    if not isinstance(tokens, list) or not all(isinstance(token, dict) for token in tokens):
        return None
    return [token.get("id") for token in tokens]


async def _json(opening: Any, route: str) -> Any:
    """The JSON body of a 200 answer, or None (any other status: the replica cannot help)."""
    upstream: Upstream = await opening
    try:
        content = await upstream.response.aread()
    except httpx.HTTPError:
        return None
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.close()
    if upstream.response.status_code != 200:
        status = upstream.response.status_code
        logger.warning("the replica cannot template the chat", extra={"route": route, "status": status})
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None
