"""Resuming a chat stream through the chat template, against TGI's answers as its router gives them.

The TGI emulator's tokenizer adds no special tokens (a ChatML model); here the replica's answers are written
out to play a tokenizer that adds a BOS the template already wrote (Llama, Mistral), a TGI older than 2.3
(no /chat_tokenize) and a prompt that does not tokenize as the chat route's. Shapes follow TGI's router:
``ChatTokenizeResponse`` {tokenize_response: [SimpleToken], templated_text}, ``/tokenize`` -> [SimpleToken]
with byte offsets (a token the tokenizer adds has offsets 0..0 and no text).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from spotkeeper.gateway.backend import Backend
from spotkeeper.gateway.chat_resume import ChatResumePlan, ChatTranslation, plan_chat
from spotkeeper.gateway.resume import Seam
from spotkeeper.gateway.upstream import Upstream

BOS = "<s>"
TEMPLATED = "<s>[INST] What is Spot? [/INST]"
# The chat route tokenizes without special tokens: the template's own BOS is the first token.
CHAT_TOKENS = [
    {"id": 1, "text": "<s>", "start": 0, "stop": 3},
    {"id": 3, "text": "[INST]", "start": 3, "stop": 9},
    {"id": 1824, "text": "What", "start": 10, "stop": 14},
    {"id": 349, "text": "is", "start": 15, "stop": 17},
    {"id": 22080, "text": "Spot?", "start": 18, "stop": 23},
    {"id": 4, "text": "[/INST]", "start": 24, "stop": 31},
]
ADDED_BOS = {"id": 1, "text": "", "start": 0, "stop": 0}
ENVELOPE = {"object": "chat.completion.chunk", "id": "", "created": 1764125000, "model": "m", "system_fingerprint": "f"}
PAYLOAD = {
    "model": "tgi",
    "messages": [{"role": "user", "content": "What is Spot?"}],
    "max_tokens": 10,
    "stream": True,
    "temperature": 0,
}


class Replica:
    """Answers the gateway's POSTs like TGI would, recording them."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def open(self, path: str, body: dict[str, Any], read_timeout: float | None) -> Upstream:
        self.calls.append((path, body))
        answer = self.answers.get(path)
        if callable(answer):
            answer = answer(body)
        if path == "/generate_stream":
            response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"")
        elif answer is None:
            response = httpx.Response(404)  # axum: an unknown route
        else:
            response = httpx.Response(200, json=answer)
        return Upstream(response=response, backend=Backend("http://10.0.0.2:8080", "i-other"))


def llama_tokenize(body: dict[str, Any]) -> list[dict[str, Any]]:
    """/tokenize of a tokenizer that adds a BOS: [BOS] + the tokens of the text (the template's BOS included)."""
    inputs = body["inputs"]
    if inputs == TEMPLATED:
        return [ADDED_BOS, *CHAT_TOKENS]
    if inputs == TEMPLATED.removeprefix(BOS):
        shifted = [{**token, "start": token["start"] - 3, "stop": token["stop"] - 3} for token in CHAT_TOKENS[1:]]
        return [ADDED_BOS, *shifted]
    raise AssertionError(f"unexpected /tokenize of {inputs!r}")


def resume(plan: ChatResumePlan, replica: Replica, seam: Seam) -> Any:
    return anyio.run(plan.reopen, seam, replica.open)


SEAM = Seam(text=" Spot is", tokens=2, events=2, envelope=ENVELOPE)


def test_a_bos_the_template_wrote_is_left_out_when_the_tokenizer_adds_one() -> None:
    replica = Replica(
        {"/chat_tokenize": {"tokenize_response": CHAT_TOKENS, "templated_text": TEMPLATED}, "/tokenize": llama_tokenize}
    )
    resumed = resume(ChatResumePlan(PAYLOAD, 10), replica, SEAM)

    assert resumed is not None
    path, body = replica.calls[-1]
    assert [call[0] for call in replica.calls] == ["/chat_tokenize", "/tokenize", "/tokenize", "/generate_stream"]
    # /generate_stream adds the BOS itself: it sees the chat route's tokens once, then the streamed text
    assert path == "/generate_stream"
    assert body["inputs"] == "[INST] What is Spot? [/INST]" + " Spot is"
    assert body["parameters"] == {"do_sample": False, "max_new_tokens": 8, "details": True}
    # The chat request, without stream options, is what /chat_tokenize templated
    assert replica.calls[0][1] == {key: value for key, value in PAYLOAD.items() if key != "stream"}


def test_a_template_without_bos_is_sent_as_it_is() -> None:
    tokens = [{**token, "start": token["start"] - 3, "stop": token["stop"] - 3} for token in CHAT_TOKENS[1:]]
    templated = TEMPLATED.removeprefix(BOS)
    replica = Replica(
        {"/chat_tokenize": {"tokenize_response": tokens, "templated_text": templated}, "/tokenize": tokens}
    )
    resumed = resume(ChatResumePlan(PAYLOAD, 10), replica, SEAM)

    assert resumed is not None
    assert replica.calls[-1][1]["inputs"] == templated + " Spot is"
    assert [call[0] for call in replica.calls] == ["/chat_tokenize", "/tokenize", "/generate_stream"]


@pytest.mark.parametrize(
    "answers",
    [
        {},  # TGI < 2.3: neither route
        {"/chat_tokenize": {"tokenize_response": CHAT_TOKENS, "templated_text": TEMPLATED}},  # no /tokenize
        # a prompt /generate_stream would see differently (a template adding a BOS the tokenizer adds too: the
        # chat route's own prompt, without the BOS text, cannot be spelled)
        {
            "/chat_tokenize": {"tokenize_response": CHAT_TOKENS[1:], "templated_text": "[INST] What is Spot? [/INST]"},
            "/tokenize": [ADDED_BOS, *CHAT_TOKENS[1:]],
        },
        {"/chat_tokenize": {"templated_text": TEMPLATED}},  # not TGI's shape
    ],
    ids=["no-chat-tokenize", "no-tokenize", "tokens-differ", "bad-shape"],
)
def test_no_continuation_is_sent_when_the_prompt_cannot_be_the_chat_routes(answers: dict[str, Any]) -> None:
    replica = Replica(answers)
    assert resume(ChatResumePlan(PAYLOAD, 10), replica, SEAM) is None
    assert "/generate_stream" not in [call[0] for call in replica.calls]


def test_a_stream_broken_before_its_first_chunk_is_the_chat_request_again() -> None:
    replica = Replica({})
    resumed = resume(ChatResumePlan(PAYLOAD, 10), replica, Seam("", 0, 0, {}))
    assert resumed is not None
    assert replica.calls == [("/v1/chat/completions", PAYLOAD)]


def test_nothing_is_resumed_once_the_budget_is_spent() -> None:
    replica = Replica({})
    assert resume(ChatResumePlan(PAYLOAD, 2), replica, SEAM) is None
    assert replica.calls == []


def test_sampling_parameters_map_as_tgis_chat_route_maps_them() -> None:
    payload = {
        **PAYLOAD,
        "model": "my-adapter",
        "temperature": 0.7,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "stop": ["\n\n"],
        "top_logprobs": 3,
    }
    plan = plan_chat(payload, 64)
    assert plan is not None
    assert plan.parameters(5) == {
        "do_sample": True,
        "max_new_tokens": 5,
        "details": True,
        "temperature": 0.7,
        "repetition_penalty": 2.5,
        "frequency_penalty": 0.1,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "top_n_tokens": 3,
        "adapter_id": "my-adapter",
    }
    # Without a temperature TGI's chat route samples (do_sample true, TGI's default temperature)
    assert ChatResumePlan({**PAYLOAD, "temperature": None}, 10).parameters(1)["do_sample"] is True


@pytest.mark.parametrize(
    ("fields", "resumable"),
    [
        ({}, True),
        ({"temperature": None}, True),
        ({"seed": 1}, True),  # greedy: the seed changes nothing
        ({"temperature": 0.5, "seed": 1}, False),
        ({"temperature": None, "seed": 1}, False),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, False),
        ({"response_format": {"type": "json_object"}}, False),
        ({"logprobs": True}, False),
        ({"logprobs": False}, True),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}, False),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, True),
    ],
)
def test_what_is_resumed(fields: dict[str, Any], resumable: bool) -> None:
    assert (plan_chat({**PAYLOAD, **fields}, 64) is not None) is resumable


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)


def token(text: str, special: bool = False) -> dict[str, Any]:
    return {"id": 7, "text": text, "logprob": -0.1, "special": special}


def test_tgi_events_are_written_back_as_the_chat_routes_chunks() -> None:
    translation = ChatTranslation(SEAM, include_usage=True)
    last = {
        "index": 2,
        "token": token("</s>", special=True),
        "generated_text": " GPUs",
        "details": {"finish_reason": "eos_token", "generated_tokens": 2, "seed": None, "input_length": 12},
    }
    out = translation.lines(sse({"index": 1, "token": token(" GPUs"), "generated_text": None, "details": None}, last))

    events = [line[6:] for line in out.decode().split("\n") if line.startswith("data: ")]
    assert out.endswith(b"\n\n") and b"\n\n\n" not in out
    chunks = [json.loads(event) for event in events[:-1]]
    assert events[-1] == "[DONE]"
    assert chunks[0] == {
        **ENVELOPE,
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": " GPUs"}, "logprobs": None, "finish_reason": None}
        ],
        "usage": None,
    }
    # The end of sequence: no text, finish reason "stop" (TGI's FinishReason::format(true))
    assert chunks[1]["choices"][0]["delta"]["content"] == ""
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    # The usage counts the client's whole stream: 2 tokens before the seam, 2 after; the prompt without them
    assert chunks[2] == {
        **ENVELOPE,
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def test_an_error_of_the_continuation_reads_as_the_chat_routes_error_event() -> None:
    out = ChatTranslation(SEAM, include_usage=False).lines(sse({"error": "boom", "error_type": "generation"}))
    events = [line[6:] for line in out.decode().split("\n") if line.startswith("data: ")]
    assert json.loads(events[0]) == {"error": {"message": "boom", "http_status_code": 422}}
    assert events[1] == "[DONE]"
