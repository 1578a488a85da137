"""The control plane's TGI client trusts no /info it cannot validate (spotkeeper.tgi.TgiInfo)."""

from __future__ import annotations

import httpx
import pytest

from spotkeeper.tgi import TgiClient

MODEL = "Qwen/Qwen2.5-7B-Instruct"


def client_answering(info: bytes, health: int = 200) -> TgiClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(health)
        return httpx.Response(200, content=info, headers={"content-type": "application/json"})

    return TgiClient(lambda address: f"http://{address}:8080", http=httpx.Client(transport=httpx.MockTransport(answer)))


def test_an_info_naming_the_expected_model_is_ready():
    info = b'{"model_id": "Qwen/Qwen2.5-7B-Instruct", "max_total_tokens": 4096, "router": "text-generation-router"}'
    readiness = client_answering(info).readiness("10.0.0.5", MODEL)
    assert (readiness.ready, readiness.reason) == (True, "ready")


def test_another_model_is_not_ready():
    readiness = client_answering(b'{"model_id": "meta-llama/Llama-3.1-8B-Instruct"}').readiness("10.0.0.5", MODEL)
    assert (readiness.ready, readiness.reason) == (False, "model mismatch: meta-llama/Llama-3.1-8B-Instruct")


@pytest.mark.parametrize(
    "info",
    [
        b"{}",  # no model_id
        b'{"model_id": ""}',  # an empty one
        b'{"model_id": 7}',  # not a string
        b'{"model_id": "x", "max_total_tokens": "many"}',  # a known field of the wrong type
        b"<html>502 Bad Gateway</html>",  # not JSON
        b'["model_id"]',  # JSON, not an object
    ],
)
def test_an_info_that_does_not_validate_is_not_ready(info: bytes, caplog: pytest.LogCaptureFixture):
    readiness = client_answering(info).readiness("10.0.0.5", MODEL)
    assert (readiness.ready, readiness.reason) == (False, "invalid /info")
    assert "TGI /info is not valid" in caplog.text


def test_an_unhealthy_instance_is_not_asked_for_its_info():
    readiness = client_answering(b"{}", health=503).readiness("10.0.0.5", MODEL)
    assert (readiness.ready, readiness.reason) == (False, "unhealthy 503")
