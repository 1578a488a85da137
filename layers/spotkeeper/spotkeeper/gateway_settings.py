"""The gateway's configuration, a pydantic model: the gateway has FastAPI, and so pydantic, loaded anyway.

Kept out of ``spotkeeper.settings`` so that the control functions never import pydantic; import it from either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from spotkeeper.settings import ConfigurationError


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=str.upper, populate_by_name=True)

    # Where TGI is: a fixed URL (local runs, tests) or the serving instance named in the state table.
    tgi_url: HttpUrl | None = None
    group_name: str | None = Field(default=None, min_length=1)
    state_table_name: str | None = Field(default=None, min_length=1)
    tgi_port: int = Field(default=8080, ge=1, le=65535)
    backend_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Between full reads, how often the ready set's records are read again (a warned replica stops getting
    # requests within this time; gateway/backend.py says what it costs).
    ready_set_check_seconds: float = Field(default=1.0, ge=0, le=300)

    # Failover behaviour: how long a client waits before being told to come back, and when.
    connect_timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    read_timeout_seconds: float = Field(default=300.0, gt=0, le=900)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    # A replica that took a request and sends nothing back (TGI hung: port open, no answer). After
    # LIVENESS_CHECK_AFTER_SECONDS without TGI's response headers (a stream's come at once, a non-streamed
    # generation's only at its end), or mid-stream without a byte, the replica's /health is asked, again at
    # doubling intervals (up to a minute) while the wait goes on; if it does not answer 200 within
    # LIVENESS_TIMEOUT_SECONDS the request gives up on that replica (gateway/upstream.py). Under load TGI's /health
    # waits for at most one forward step of the model (a large prefill can take seconds on a big sharded model),
    # hence 5 s rather than 1-2 s.
    liveness_check_after_seconds: float = Field(default=5.0, gt=0, le=300)
    liveness_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    # Limits on what a client may ask for.
    max_body_bytes: int = Field(default=1_000_000, ge=1024, le=10_000_000)
    max_new_tokens: int = Field(default=1024, ge=1, le=1_000_000)
    max_input_chars: int = Field(default=32_000, ge=1, le=10_000_000)

    metrics_namespace: str = Field(default="Spotkeeper", alias="POWERTOOLS_METRICS_NAMESPACE", min_length=1)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Self:
        source = os.environ if environ is None else environ
        try:
            return cls.model_validate(dict(source))
        except ValidationError as error:
            problems = ", ".join(
                f"{'.'.join(str(part) for part in issue['loc']) or 'environment'} ({issue['msg']})"
                for issue in error.errors()
            )
            raise ConfigurationError(f"{cls.__name__}: bad or missing environment: {problems}") from None

    @field_validator("tgi_url", "group_name", "state_table_name", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # CloudFormation cannot omit an environment variable conditionally; an empty parameter means "not set".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _backend_is_findable(self) -> Self:
        if self.tgi_url is None and not (self.group_name and self.state_table_name):
            raise ValueError(
                "either TGI_URL, or both GROUP_NAME and STATE_TABLE_NAME, must be set to find the TGI backend"
            )
        return self

    @property
    def fixed_backend_url(self) -> str | None:
        return str(self.tgi_url).rstrip("/") if self.tgi_url is not None else None
