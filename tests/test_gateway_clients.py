"""Standard clients, unchanged, against the gateway served by uvicorn in front of the TGI emulator.

huggingface_hub's InferenceClient and the openai SDK must get exactly the emulator's text, and streamed
tokens must reach the client one by one while the emulator is still generating.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_harness import ServedApp, StepByStepTransport, gateway_settings, running_emulator
from huggingface_hub import InferenceClient
from openai import OpenAI

from spotkeeper.gateway.api import create_app
from spotkeeper_local.tgi_emulator import TgiEmulator, expected_chat_text, expected_text, expected_tokens

TOKEN_DELAY = 0.05
STREAMED_TOKENS = 8
MAX_NEW_TOKENS = 12
MESSAGES = [
    {"role": "system", "content": "You keep endpoints alive."},
    {"role": "user", "content": "What happens when Spot reclaims the instance?"},
]


@pytest.fixture(scope="module")
def emulator() -> Iterator[TgiEmulator]:
    with running_emulator(token_delay=TOKEN_DELAY) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def upstream() -> StepByStepTransport:
    return StepByStepTransport()


@pytest.fixture(scope="module")
def gateway(emulator: TgiEmulator, upstream: StepByStepTransport) -> Iterator[ServedApp]:
    settings = gateway_settings(emulator.url, MAX_NEW_TOKENS=MAX_NEW_TOKENS)
    served = ServedApp(create_app(settings, transport=upstream)).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def hf(gateway: ServedApp) -> InferenceClient:
    # The key is what API Gateway's authorizer checks; the gateway itself never needs it.
    return InferenceClient(model=gateway.url, token="spk_client_key_is_checked_by_api_gateway", timeout=30)


@pytest.fixture
def openai_client(gateway: ServedApp) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="spk_client_key_is_checked_by_api_gateway", max_retries=0)


def assert_streamed_one_by_one(upstream: StepByStepTransport, received: int, count: int) -> None:
    """Every read of TGI's stream reached the client before the gateway got the next one: nothing was held back
    until the end (see StepByStepTransport)."""
    assert received == count
    assert not upstream.stalled, "the gateway held TGI's stream back instead of passing each token on"


def test_huggingface_text_generation_gets_the_emulators_text(hf: InferenceClient) -> None:
    # Given a prompt
    prompt = "The Elastic IP moves to the replacement when"

    # When huggingface_hub asks for a generation (TGI's "/" route), with and without the prompt echoed
    generated = hf.text_generation(prompt, max_new_tokens=6, return_full_text=False)
    full = hf.text_generation(prompt, max_new_tokens=6)

    # Then it is exactly what TGI (the emulator) generated, with TGI's default of returning the full text
    assert generated == expected_text(prompt, 6)
    assert full == prompt + expected_text(prompt, 6)


def test_huggingface_text_generation_streams_token_by_token(hf: InferenceClient, upstream: StepByStepTransport) -> None:
    prompt = "Stream the tokens"
    tokens = []

    for token in hf.text_generation(prompt, max_new_tokens=STREAMED_TOKENS, stream=True, return_full_text=False):
        upstream.received()
        tokens.append(token)

    assert tokens == expected_tokens(prompt, STREAMED_TOKENS)
    assert_streamed_one_by_one(upstream, len(tokens), STREAMED_TOKENS)


def test_huggingface_text_generation_details(hf: InferenceClient) -> None:
    prompt = "details please"

    output = hf.text_generation(prompt, max_new_tokens=4, details=True, return_full_text=False)

    assert output.generated_text == expected_text(prompt, 4)
    assert output.details is not None
    assert output.details.generated_tokens == 4
    assert [token.text for token in output.details.tokens] == expected_tokens(prompt, 4)


def test_huggingface_chat_completion(hf: InferenceClient) -> None:
    output = hf.chat_completion(MESSAGES, max_tokens=7)

    assert output.choices[0].message.content == expected_chat_text(MESSAGES, 7)
    assert output.usage.completion_tokens == 7


def test_huggingface_chat_completion_streaming(hf: InferenceClient, upstream: StepByStepTransport) -> None:
    pieces = []

    for chunk in hf.chat_completion(MESSAGES, max_tokens=STREAMED_TOKENS, stream=True):
        upstream.received()
        pieces.append(chunk.choices[0].delta.content)

    assert "".join(pieces) == expected_chat_text(MESSAGES, STREAMED_TOKENS)
    assert_streamed_one_by_one(upstream, len(pieces), STREAMED_TOKENS)


def test_openai_chat_completion(openai_client: OpenAI) -> None:
    response = openai_client.chat.completions.create(model="tgi", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]

    assert response.choices[0].message.content == expected_chat_text(MESSAGES, 5)
    assert response.choices[0].finish_reason == "length"


def test_openai_chat_completion_without_max_tokens_is_capped(openai_client: OpenAI, gateway: ServedApp) -> None:
    # Given the gateway's MAX_NEW_TOKENS and a client that sets no max_tokens
    # When it asks for a chat completion
    response = openai_client.chat.completions.create(model="tgi", messages=MESSAGES[1:])  # type: ignore[arg-type]

    # Then TGI was asked for exactly the cap, not for "as much as fits"
    assert response.usage is not None
    assert response.usage.completion_tokens == MAX_NEW_TOKENS
    assert response.choices[0].message.content == expected_chat_text(MESSAGES[1:], MAX_NEW_TOKENS)


def test_openai_chat_completion_streaming(openai_client: OpenAI, upstream: StepByStepTransport) -> None:
    pieces = []

    stream = openai_client.chat.completions.create(
        model="tgi",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=STREAMED_TOKENS,
        stream=True,
    )
    for chunk in stream:
        upstream.received()
        pieces.append(chunk.choices[0].delta.content)

    assert "".join(pieces) == expected_chat_text(MESSAGES, STREAMED_TOKENS)
    assert_streamed_one_by_one(upstream, len(pieces), STREAMED_TOKENS)


def test_openai_completions(openai_client: OpenAI) -> None:
    prompt = "Fall back to on-demand when"

    response = openai_client.completions.create(model="tgi", prompt=prompt, max_tokens=6)

    assert response.choices[0].text == expected_text(prompt, 6)


def test_openai_completions_streaming(openai_client: OpenAI, upstream: StepByStepTransport) -> None:
    prompt = "Fall forward to Spot when"
    pieces = []

    for chunk in openai_client.completions.create(model="tgi", prompt=prompt, max_tokens=STREAMED_TOKENS, stream=True):
        upstream.received()
        pieces.append(chunk.choices[0].text)

    assert pieces == expected_tokens(prompt, STREAMED_TOKENS)
    assert_streamed_one_by_one(upstream, len(pieces), STREAMED_TOKENS)


def test_openai_model_list(openai_client: OpenAI, emulator: TgiEmulator) -> None:
    assert [model.id for model in openai_client.models.list()] == [emulator.model_id]
