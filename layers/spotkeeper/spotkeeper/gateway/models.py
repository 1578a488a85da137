"""Request bodies the gateway accepts, with TGI's parameter names and the OpenAI fields TGI implements.

Bounds follow TGI's own validation (router/src/validation.rs) so a request the gateway lets through is one
TGI can judge; limits that depend on configuration (input length, max_new_tokens) are checked in
``limits.py`` against the gateway's settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

U32 = 2**32 - 1
U64 = 2**64 - 1

StopSequence = Annotated[str, Field(min_length=1, max_length=512)]


class Grammar(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["json", "regex", "json_schema"]
    value: Any = Field(description="A JSON schema (json, json_schema) or a regular expression (regex)")


class GenerateParameters(BaseModel):
    """TGI's ``parameters`` object. Unknown names are refused so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    adapter_id: str | None = Field(default=None, max_length=256)
    best_of: int | None = Field(default=None, gt=0, le=16)
    decoder_input_details: bool | None = None
    details: bool | None = None
    do_sample: bool | None = None
    frequency_penalty: float | None = Field(default=None, gt=-2.0, le=2.0)
    grammar: Grammar | None = None
    max_new_tokens: int | None = Field(default=None, gt=0, le=U32)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    return_full_text: bool | None = None
    seed: int | None = Field(default=None, ge=0, le=U64)
    stop: list[StopSequence] | None = Field(default=None, max_length=16)
    temperature: float | None = Field(default=None, gt=0, le=100)
    top_k: int | None = Field(default=None, gt=0, le=U32)
    top_n_tokens: int | None = Field(default=None, ge=0, le=U32)
    top_p: float | None = Field(default=None, gt=0, lt=1)
    truncate: int | None = Field(default=None, ge=0, le=U32)
    typical_p: float | None = Field(default=None, gt=0, lt=1)
    watermark: bool | None = None


class GenerateRequest(BaseModel):
    """``POST /generate`` and ``POST /generate_stream``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class CompatGenerateRequest(GenerateRequest):
    """``POST /``: TGI's route that streams or not by ``stream`` (huggingface_hub's text_generation uses it)."""

    stream: bool = False


# OpenAI-compatible --------------------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(min_length=1)
    detail: str | None = None


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    # OpenAI keeps adding message fields; like TGI, unknown ones are accepted and dropped.
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _has_something_to_say(self) -> ChatMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("a message needs content (or tool_calls for an assistant message)")
        return self

    def text_length(self) -> int:
        if isinstance(self.content, str):
            return len(self.content)
        if isinstance(self.content, list):
            return sum(len(part.text) for part in self.content if isinstance(part, TextPart))
        return 0


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: the OpenAI fields TGI implements; other OpenAI fields are dropped."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(default=None, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, gt=0, le=U32)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=U32)
    n: int | None = Field(default=None, ge=1, le=1)
    seed: int | None = Field(default=None, ge=0, le=U64)
    stop: StopSequence | list[StopSequence] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tool_prompt: str | None = None
    response_format: dict[str, Any] | None = None

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def input_length(self) -> int:
        return sum(message.text_length() for message in self.messages)


class CompletionRequest(BaseModel):
    """``POST /v1/completions``: the OpenAI fields TGI implements; other OpenAI fields are dropped."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(default=None, max_length=256)
    prompt: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]]
    suffix: str | None = None
    max_tokens: int | None = Field(default=None, gt=0, le=U32)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    seed: int | None = Field(default=None, ge=0, le=U64)
    stop: StopSequence | list[StopSequence] | None = None
    stream: bool = False

    @model_validator(mode="after")
    def _prompt_not_empty(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self

    def input_length(self) -> int:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        return sum(len(prompt) for prompt in prompts) + len(self.suffix or "")


# Responses (documentation for the OpenAPI document; the gateway relays TGI's bytes) ----------------------


class GenerateResponse(BaseModel):
    generated_text: str
    details: dict[str, Any] | None = None


class GatewayHealth(BaseModel):
    gateway: Literal["ok"]
    backend: Literal["ok"]
    serving_instance_id: str | None = None


class Ping(BaseModel):
    status: Literal["ok"]
