"""The loopback TGI emulator speaks TGI's HTTP API: lifecycle, shapes, errors, streaming, metrics."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import OverloadedError, ValidationError
from openai import OpenAI

from spotkeeper_local.tgi_emulator import (
    DEFAULT_MAX_NEW_TOKENS,
    KILLED,
    LOADING,
    READY,
    STOPPED,
    TgiEmulator,
    expected_chat_text,
    expected_text,
    expected_tokens,
    generate_tokens,
    main,
    render_chat_prompt,
)

MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"


class FakeClock:
    """Stands in for the drill's simulated clock: time only moves when the test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_next_host = iter(range(2, 250))


@pytest.fixture
def make_tgi() -> Iterator[Callable[..., TgiEmulator]]:
    """Build emulators on their own loopback address and a free port; stop them all afterwards."""
    created: list[TgiEmulator] = []

    def factory(*, boot: bool = True, **kwargs: Any) -> TgiEmulator:
        kwargs.setdefault("host", f"127.0.0.{next(_next_host)}")
        kwargs.setdefault("port", 0)
        kwargs.setdefault("model_id", MODEL_ID)
        emulator = TgiEmulator(**kwargs)
        created.append(emulator)
        if boot:
            emulator.boot()
            assert emulator.wait_ready(5.0), emulator
        return emulator

    yield factory
    for emulator in created:
        emulator.stop()


def parse_sse_data(lines: Iterable[str]) -> Iterator[Any]:
    """The ``data:`` payloads of an SSE body: JSON objects, or the string ``"[DONE]"``."""
    for line in lines:
        if line.startswith("data:"):
            data = line[len("data:") :].strip()
            yield data if data == "[DONE]" else json.loads(data)


def sse_events(response: httpx.Response) -> list[Any]:
    return list(parse_sse_data(response.iter_lines()))


def first_token_line(lines: Iterator[str]) -> str:
    # The caller keeps `lines` referenced: a garbage-collected iter_lines() closes the connection.
    return next(line for line in lines if line.startswith("data:"))


def assert_refused(url: str) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2.0)


# ------------------------------------------------------------------------------------------ lifecycle


def test_port_is_closed_while_the_model_loads_then_health_answers_200(make_tgi):
    # Given an instance that needs 300 simulated seconds to load its model
    clock = FakeClock()
    tgi = make_tgi(boot=False, load_seconds=300, clock=clock)
    assert_refused(tgi.url)

    # When it boots and the clock has not yet reached the load time
    tgi.boot()
    assert tgi.state == LOADING
    clock.advance(299.5)
    assert tgi.poll() is False

    # Then the port refuses connections
    assert_refused(tgi.url)

    # When the load time is reached
    clock.advance(0.5)
    assert tgi.poll() is True

    # Then TGI answers /health with 200 and an empty body
    response = httpx.get(f"{tgi.url}/health")
    assert (response.status_code, response.content) == (200, b"")
    assert tgi.state == READY
    assert tgi.port > 0 and tgi.url == f"http://{tgi.host}:{tgi.port}"


def test_background_watcher_opens_the_port_without_an_explicit_poll(make_tgi):
    clock = FakeClock()
    tgi = make_tgi(boot=False, load_seconds=60, clock=clock)
    tgi.boot()
    assert not tgi.wait_ready(0.1)

    clock.advance(60)

    assert tgi.wait_ready(2.0)
    assert httpx.get(f"{tgi.url}/health").status_code == 200


def test_unhealthy_instance_answers_503_on_health_and_424_on_generation(make_tgi):
    tgi = make_tgi()

    tgi.set_unhealthy(True)

    health = httpx.get(f"{tgi.url}/health")
    assert health.status_code == 503
    assert health.json() == {"error": "unhealthy", "error_type": "healthcheck"}
    generate = httpx.post(f"{tgi.url}/generate", json={"inputs": "hello"})
    assert generate.status_code == 424
    assert generate.json()["error_type"] == "generation"
    assert generate.json()["error"].startswith("Request failed during generation: ")

    tgi.set_unhealthy(False)
    assert httpx.get(f"{tgi.url}/health").status_code == 200


def test_kill_refuses_new_connections_and_drops_in_flight_streams(make_tgi):
    # Given a stream in progress
    tgi = make_tgi(token_delay=0.05)
    with httpx.Client(timeout=5.0) as client:
        request = {"inputs": "Tell me a story", "parameters": {"max_new_tokens": 40}}
        with client.stream("POST", f"{tgi.url}/generate_stream", json=request) as response:
            lines = response.iter_lines()
            first = first_token_line(lines)
            assert '"index":1' in first
            assert tgi.in_flight == 1

            # When the instance is reclaimed
            tgi.kill()

            # Then the stream breaks off instead of completing
            with pytest.raises(httpx.HTTPError):
                for _ in lines:
                    pass

    # And new connections are refused
    assert tgi.state == KILLED
    assert_refused(tgi.url)
    assert tgi.in_flight == 0
    assert tgi.requests_served == 0


def test_killed_instance_can_boot_again_on_the_same_address(make_tgi):
    tgi = make_tgi()
    url = tgi.url
    tgi.kill()

    tgi.boot()

    assert tgi.wait_ready(2.0) and tgi.url == url
    assert httpx.get(f"{url}/health").status_code == 200


def test_stop_drains_in_flight_generation_while_refusing_new_connections(make_tgi):
    tgi = make_tgi(token_delay=0.02)
    with httpx.Client(timeout=5.0) as client:
        request = {"inputs": "drain me", "parameters": {"max_new_tokens": 10}}
        with client.stream("POST", f"{tgi.url}/generate_stream", json=request) as response:
            lines = response.iter_lines()
            first_token_line(lines)
            stopper = threading.Thread(target=tgi.stop, kwargs={"drain_seconds": 2.0})
            stopper.start()
            time.sleep(0.05)
            assert_refused(tgi.url)
            remaining = list(parse_sse_data(lines))
            stopper.join(5.0)

    assert remaining[-1]["generated_text"] == expected_text("drain me", 10, model_id=MODEL_ID)
    assert tgi.state == STOPPED
    assert tgi.requests_served == 1


def test_many_instances_serve_side_by_side_and_stop(make_tgi):
    emulators = [make_tgi() for _ in range(8)]
    for emulator in emulators:
        assert httpx.get(f"{emulator.url}/health").status_code == 200
    for emulator in emulators:
        emulator.stop()

    for emulator in emulators:
        assert_refused(emulator.url)


def test_boot_twice_and_bad_configuration_are_rejected(make_tgi):
    tgi = make_tgi()
    with pytest.raises(RuntimeError, match="already ready"):
        tgi.boot()
    with pytest.raises(ValueError, match="loopback"):
        TgiEmulator(host="10.0.0.5", port=0)
    with pytest.raises(ValueError, match="max_input_tokens"):
        TgiEmulator(host="127.0.0.1", port=0, max_input_tokens=4096, max_total_tokens=4096)
    with pytest.raises(ValueError, match="load_seconds"):
        TgiEmulator(host="127.0.0.1", port=0, load_seconds=-1)
    assert main(["--host", "192.168.1.10", "--port", "0"]) == 2


# ------------------------------------------------------------------------------------------ info and generation


def test_info_describes_the_served_model(make_tgi):
    tgi = make_tgi(max_input_tokens=4000, max_total_tokens=4096, max_concurrent_requests=32)

    info = httpx.get(f"{tgi.url}/info").json()

    assert info["model_id"] == MODEL_ID
    assert info["max_input_tokens"] == 4000
    assert info["max_total_tokens"] == 4096
    assert info["max_concurrent_requests"] == 32
    assert info["router"] == "text-generation-router"
    for key in ("model_sha", "model_pipeline_tag", "max_best_of", "max_stop_sequences", "validation_workers",
                "max_client_batch_size", "version", "sha", "docker_label"):  # fmt: skip
        assert key in info
    models = httpx.get(f"{tgi.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL_ID


def test_generate_returns_the_deterministic_text_with_details(make_tgi):
    tgi = make_tgi()
    prompt = "What is Deep Learning?"

    response = httpx.post(
        f"{tgi.url}/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 12, "details": True}}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["generated_text"] == expected_text(prompt, 12, model_id=MODEL_ID)
    details = body["details"]
    assert details["finish_reason"] == "length"
    assert details["generated_tokens"] == 12
    assert [token["text"] for token in details["tokens"]] == expected_tokens(prompt, 12, model_id=MODEL_ID)
    assert set(details["tokens"][0]) == {"id", "text", "logprob", "special"}
    assert response.headers["x-generated-tokens"] == "12"
    assert response.headers["x-prompt-tokens"] == "4"


def test_generate_defaults_to_100_new_tokens_and_the_seed_changes_the_text(make_tgi):
    tgi = make_tgi()

    default = httpx.post(f"{tgi.url}/generate", json={"inputs": "Hello there"}).json()
    seeded = httpx.post(
        f"{tgi.url}/generate", json={"inputs": "Hello there", "parameters": {"max_new_tokens": 5, "seed": 7}}
    ).json()

    assert "details" not in default
    assert DEFAULT_MAX_NEW_TOKENS == 100
    assert len(default["generated_text"].split()) == 100
    assert default["generated_text"] == expected_text("Hello there", model_id=MODEL_ID)
    assert seeded["generated_text"] == expected_text("Hello there", 5, model_id=MODEL_ID, seed=7)
    assert seeded["generated_text"] != expected_text("Hello there", 5, model_id=MODEL_ID)


def test_stop_sequence_ends_generation_early(make_tgi):
    tgi = make_tgi()
    tokens = expected_tokens("stop early", 10, model_id=MODEL_ID)
    stop = tokens[3]

    body = httpx.post(
        f"{tgi.url}/generate",
        json={"inputs": "stop early", "parameters": {"max_new_tokens": 10, "stop": [stop], "details": True}},
    ).json()

    first_hit = next(i for i, text in enumerate(tokens) if "".join(tokens[: i + 1]).endswith(stop))
    assert body["generated_text"] == "".join(tokens[: first_hit + 1])
    assert body["details"]["finish_reason"] == "stop_sequence"


def test_generation_resumed_from_prompt_plus_streamed_text_continues_identically(make_tgi):
    # Given a stream cut off after k tokens
    tgi = make_tgi()
    prompt, total = "Resume this stream", 12
    tokens = expected_tokens(prompt, total, model_id=MODEL_ID)
    for k in (1, 5, 11):
        # When another replica is asked to go on from the prompt plus the text already streamed
        resumed = httpx.post(
            f"{tgi.url}/generate",
            json={"inputs": prompt + "".join(tokens[:k]), "parameters": {"max_new_tokens": total - k}},
        ).json()

        # Then it generates exactly the tokens the first one would have sent next
        assert resumed["generated_text"] == "".join(tokens[k:])
    seeded = [token.text for token in generate_tokens(prompt, 6, model_id=MODEL_ID, seed=3)]
    assert expected_tokens(prompt + "".join(seeded[:2]), 4, model_id=MODEL_ID, seed=3) == seeded[2:]


def test_tokenize_and_chat_tokenize_answer_in_tgis_shapes(make_tgi):
    tgi = make_tgi()
    messages = [{"role": "user", "content": "Où est le GPU ?"}]

    tokens = httpx.post(f"{tgi.url}/tokenize", json={"inputs": "Où est  spot"}).json()
    templated = httpx.post(f"{tgi.url}/chat_tokenize", json={"model": "tgi", "messages": messages}).json()

    # TGI's SimpleToken: id, the text, its byte offsets in the input ("Où" is 3 bytes)
    assert tokens == [
        {"id": tokens[0]["id"], "text": "Où", "start": 0, "stop": 3},
        {"id": tokens[1]["id"], "text": "est", "start": 4, "stop": 7},
        {"id": tokens[2]["id"], "text": "spot", "start": 9, "stop": 13},
    ]
    # generated text tokenizes back to the ids generation gave it
    generated = list(generate_tokens("x", 5, model_id=MODEL_ID))
    ids = [
        token["id"]
        for token in httpx.post(f"{tgi.url}/tokenize", json={"inputs": "x" + "".join(t.text for t in generated)}).json()
    ]
    assert ids[1:] == [token.id for token in generated]
    # ChatTokenizeResponse: the chat template's prompt, tokenized (no special tokens added: ChatML)
    assert templated["templated_text"] == render_chat_prompt(messages)
    again = httpx.post(f"{tgi.url}/tokenize", json={"inputs": templated["templated_text"]}).json()
    assert templated["tokenize_response"] == again
    assert len(again) == len(templated["templated_text"].split())
    # TGI counts /chat_tokenize as a request (get_chat_tokenize), not /tokenize
    assert tgi.requests_total == 1


def test_compat_route_returns_a_list_and_the_full_text_by_default(make_tgi):
    tgi = make_tgi()

    default = httpx.post(f"{tgi.url}/", json={"inputs": "Say hi", "parameters": {"max_new_tokens": 3}})
    generated_only = httpx.post(
        f"{tgi.url}/", json={"inputs": "Say hi", "parameters": {"max_new_tokens": 3, "return_full_text": False}}
    )

    expected = expected_text("Say hi", 3, model_id=MODEL_ID)
    assert default.json() == [{"generated_text": "Say hi" + expected}]
    assert generated_only.json() == [{"generated_text": expected}]


def test_stream_sends_one_event_per_token_as_they_are_generated(make_tgi):
    # Given an instance generating a token every 80 ms
    tgi = make_tgi(token_delay=0.08)
    prompt = "Stream this please"
    arrivals: list[tuple[float, Any]] = []

    # When a client streams 5 tokens
    started = time.monotonic()
    request = {"inputs": prompt, "parameters": {"max_new_tokens": 5, "details": True}}
    with httpx.stream("POST", f"{tgi.url}/generate_stream", json=request, timeout=5.0) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        for event in parse_sse_data(response.iter_lines()):
            arrivals.append((time.monotonic() - started, event))

    # Then each token arrives on its own, the first well before the last
    events = [event for _, event in arrivals]
    assert [event["index"] for event in events] == [1, 2, 3, 4, 5]
    assert [event["token"]["text"] for event in events] == expected_tokens(prompt, 5, model_id=MODEL_ID)
    assert arrivals[-1][0] - arrivals[0][0] >= 3 * 0.08
    assert all(event["generated_text"] is None and event["details"] is None for event in events[:-1])
    final = events[-1]
    assert final["generated_text"] == expected_text(prompt, 5, model_id=MODEL_ID)
    assert final["details"] == {"finish_reason": "length", "generated_tokens": 5, "seed": None, "input_length": 3}


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"inputs": ""}, "Input validation error: `inputs` cannot be empty"),
        ({"inputs": "a b", "parameters": {"max_new_tokens": 0}}, "`max_new_tokens` must be strictly positive"),
        (
            {"inputs": "one two three", "parameters": {"max_new_tokens": 100}},
            "`inputs` tokens + `max_new_tokens` must be <= 64. Given: 3 `inputs` tokens and 100 `max_new_tokens`",
        ),
        ({"inputs": " ".join(["w"] * 40), "parameters": {"max_new_tokens": 1}}, "`inputs` must have less than 32"),
        ({"inputs": "hot", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
        ({"inputs": "s", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "`stop` supports up to 4 stop"),
    ],
)
def test_invalid_generation_requests_answer_422_validation(make_tgi, request_body, message):
    tgi = make_tgi(max_input_tokens=32, max_total_tokens=64)

    response = httpx.post(f"{tgi.url}/generate", json=request_body)

    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == "validation"
    assert message in body["error"]


def test_malformed_bodies_get_axum_extractor_rejections(make_tgi):
    tgi = make_tgi()

    syntax = httpx.post(f"{tgi.url}/generate", content=b"{not json", headers={"content-type": "application/json"})
    wrong_type = httpx.post(f"{tgi.url}/generate", json={"inputs": 42})
    missing = httpx.post(f"{tgi.url}/generate", json={"parameters": {}})
    negative = httpx.post(f"{tgi.url}/generate", json={"inputs": "x", "parameters": {"max_new_tokens": -1}})
    no_content_type = httpx.post(f"{tgi.url}/generate", content=b'{"inputs": "x"}')

    assert syntax.status_code == 400 and syntax.text.startswith("Failed to parse the request body as JSON")
    assert wrong_type.status_code == 422 and "inputs: Input should be a valid string" in wrong_type.text
    assert missing.status_code == 422 and "missing field `inputs`" in missing.text
    assert negative.status_code == 422 and "max_new_tokens" in negative.text
    assert no_content_type.status_code == 415
    assert httpx.get(f"{tgi.url}/no/such/route").status_code == 404


def test_streamed_validation_error_is_an_sse_error_event(make_tgi):
    tgi = make_tgi()

    with httpx.stream("POST", f"{tgi.url}/generate_stream", json={"inputs": ""}) as response:
        events = sse_events(response)

    assert response.status_code == 200
    assert events == [{"error": "Input validation error: `inputs` cannot be empty", "error_type": "validation"}]


def test_injected_fault_ends_a_stream_with_an_error_event_and_fails_generate_with_424(make_tgi):
    tgi = make_tgi()
    tgi.fail_generation_after(3, message="Server error: CUDA error: an illegal memory access")

    with httpx.stream(
        "POST", f"{tgi.url}/generate_stream", json={"inputs": "boom", "parameters": {"max_new_tokens": 10}}
    ) as response:
        events = sse_events(response)
    generate = httpx.post(f"{tgi.url}/generate", json={"inputs": "boom"})

    assert [event["index"] for event in events[:3]] == [1, 2, 3]
    assert events[3] == {
        "error": "Request failed during generation: Server error: CUDA error: an illegal memory access",
        "error_type": "generation",
    }
    assert len(events) == 4
    assert generate.status_code == 424 and generate.json()["error_type"] == "generation"
    assert scrape(tgi)[("tgi_request_failure", 'err="generation"')] == 2

    tgi.fail_generation_after(None)
    assert httpx.post(f"{tgi.url}/generate", json={"inputs": "boom"}).status_code == 200


def test_requests_beyond_max_concurrent_requests_are_overloaded(make_tgi):
    # Given an instance allowing one concurrent request, busy with a stream
    tgi = make_tgi(max_concurrent_requests=1, token_delay=0.05)
    with httpx.Client(timeout=5.0) as client:
        busy = {"inputs": "keep busy", "parameters": {"max_new_tokens": 40}}
        with client.stream("POST", f"{tgi.url}/generate_stream", json=busy) as response:
            busy_lines = response.iter_lines()
            first_token_line(busy_lines)
            assert tgi.in_flight == 1

            # When more requests arrive
            rejected = httpx.post(f"{tgi.url}/generate", json={"inputs": "me too"})
            with httpx.stream("POST", f"{tgi.url}/generate_stream", json={"inputs": "me too"}) as second:
                streamed = sse_events(second)

    # Then TGI answers 429 (and an SSE error event on the streaming route)
    assert rejected.status_code == 429
    assert rejected.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert streamed == [{"error": "Model is overloaded", "error_type": "overloaded"}]
    assert scrape(tgi)[("tgi_request_failure", 'err="overloaded"')] == 2


# ------------------------------------------------------------------------------------------ metrics

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def parse_prometheus(text: str) -> dict[tuple[str, str], float]:
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not Prometheus text format: {line!r}"
        samples[(match["name"], match["labels"] or "")] = float(match["value"])
    return samples


def scrape(tgi: TgiEmulator) -> dict[tuple[str, str], float]:
    response = httpx.get(f"{tgi.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    return parse_prometheus(response.text)


def test_metrics_use_tgi_names_and_count_requests(make_tgi):
    # Given an instance that served one generation and refused one bad request
    tgi = make_tgi(token_delay=0.03)
    httpx.post(f"{tgi.url}/generate", json={"inputs": "count me", "parameters": {"max_new_tokens": 2}})
    httpx.post(f"{tgi.url}/generate", json={"inputs": ""})

    # When a stream is in progress
    with httpx.Client(timeout=5.0) as client:
        request = {"inputs": "busy", "parameters": {"max_new_tokens": 20}}
        with client.stream("POST", f"{tgi.url}/generate_stream", json=request) as running:
            running_lines = running.iter_lines()
            first_token_line(running_lines)
            busy = scrape(tgi)

    # Then the batch gauge counts it while it runs (what the terminate hook's drain watches), and the
    # counters and histograms carry TGI's names, without prometheus_client's `_total` / `_created` series
    assert busy[("tgi_batch_current_size", "")] == 1
    assert busy[("tgi_queue_size", "")] == 0
    metrics = scrape(tgi)
    assert metrics[("tgi_batch_current_size", "")] == 0
    assert metrics[("tgi_request_count", "")] == 3
    assert metrics[("tgi_request_success", "")] == 1
    assert metrics[("tgi_request_failure", 'err="validation"')] == 1
    assert metrics[("tgi_request_duration_count", "")] == 1
    assert metrics[("tgi_request_duration_bucket", 'le="+Inf"')] == 1
    assert metrics[("tgi_request_generated_tokens_sum", "")] == 2
    assert not any(name.endswith(("_total", "_created")) for name, _ in metrics)
    assert (tgi.requests_total, tgi.requests_served) == (3, 1)


# ------------------------------------------------------------------------------------------ OpenAI-compatible routes


def test_openai_sdk_chat_completion_streaming_and_not(make_tgi):
    tgi = make_tgi()
    client = OpenAI(base_url=f"{tgi.url}/v1", api_key="-", max_retries=0)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is Spot?"},
    ]
    expected = expected_chat_text(messages, 6, model_id=MODEL_ID)

    completion = client.chat.completions.create(model="tgi", messages=messages, max_tokens=6)
    chunks = list(
        client.chat.completions.create(
            model="tgi", messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )

    assert completion.object == "chat.completion"
    assert completion.model == MODEL_ID
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "length"
    prompt_tokens = len(render_chat_prompt(messages).split())
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.completion_tokens == 6
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert "".join(chunk.choices[0].delta.content for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.total_tokens == prompt_tokens + 6


def test_openai_sdk_text_completion_streaming_and_not(make_tgi):
    tgi = make_tgi()
    client = OpenAI(base_url=f"{tgi.url}/v1", api_key="-", max_retries=0)

    completion = client.completions.create(model="tgi", prompt="Once upon a time", max_tokens=4)
    chunks = list(client.completions.create(model="tgi", prompt="Once upon a time", max_tokens=4, stream=True))

    expected = expected_text("Once upon a time", 4, model_id=MODEL_ID)
    assert completion.choices[0].text == expected
    assert completion.usage.completion_tokens == 4
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_stream_ends_with_done_even_after_an_error(make_tgi):
    tgi = make_tgi()
    tgi.fail_generation_after(1)

    request = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5}
    with httpx.stream("POST", f"{tgi.url}/v1/chat/completions", json=request) as response:
        events = sse_events(response)

    assert events[0]["object"] == "chat.completion.chunk"
    assert events[1]["error_type"] == "generation"
    assert events[-1] == "[DONE]"


# ------------------------------------------------------------------------------------------ huggingface_hub client


def test_huggingface_hub_inference_client_against_the_emulator(make_tgi):
    tgi = make_tgi()
    client = InferenceClient(base_url=tgi.url)
    prompt = "Explain spot instances"

    text = client.text_generation(prompt, max_new_tokens=5, return_full_text=False)
    streamed = list(client.text_generation(prompt, max_new_tokens=5, stream=True))
    chat = client.chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=4)

    assert text == expected_text(prompt, 5, model_id=MODEL_ID)
    assert streamed == expected_tokens(prompt, 5, model_id=MODEL_ID)
    assert chat.choices[0].message.content == expected_chat_text(
        [{"role": "user", "content": "hi"}], 4, model_id=MODEL_ID
    )
    with pytest.raises(ValidationError):
        client.text_generation("", max_new_tokens=5)


def test_huggingface_hub_sees_overload_as_overloaded_error(make_tgi):
    tgi = make_tgi(max_concurrent_requests=1, token_delay=0.05)
    client = InferenceClient(base_url=tgi.url)
    with httpx.stream(
        "POST", f"{tgi.url}/generate_stream", json={"inputs": "busy", "parameters": {"max_new_tokens": 30}}
    ) as response:
        busy_lines = response.iter_lines()
        first_token_line(busy_lines)
        with pytest.raises(OverloadedError):
            client.text_generation("me too", max_new_tokens=2)
