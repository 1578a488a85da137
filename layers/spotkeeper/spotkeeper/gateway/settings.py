"""The gateway's configuration, read from the environment once and validated.

A misconfigured gateway must refuse to start (uvicorn's lifespan fails, the Lambda Web Adapter's readiness
check never passes) rather than answer every request with a confusing error later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator


class GatewayConfigError(RuntimeError):
    """The environment does not describe a usable gateway."""


class GatewaySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # Where TGI is: a fixed URL (local runs, tests) or the serving instance named in the state table.
    tgi_url: HttpUrl | None = Field(default=None, alias="TGI_URL")
    group_name: str | None = Field(default=None, alias="GROUP_NAME", min_length=1)
    state_table_name: str | None = Field(default=None, alias="STATE_TABLE_NAME", min_length=1)
    tgi_port: int = Field(default=8080, alias="TGI_PORT", ge=1, le=65535)
    backend_cache_seconds: float = Field(default=5.0, alias="BACKEND_CACHE_SECONDS", ge=0, le=300)

    # Failover behaviour: how long a client waits before being told to come back, and when.
    connect_timeout_seconds: float = Field(default=2.0, alias="CONNECT_TIMEOUT_SECONDS", gt=0, le=30)
    read_timeout_seconds: float = Field(default=300.0, alias="READ_TIMEOUT_SECONDS", gt=0, le=900)
    retry_after_seconds: int = Field(default=5, alias="RETRY_AFTER_SECONDS", ge=1, le=3600)

    # Limits on what a client may ask for.
    max_body_bytes: int = Field(default=1_000_000, alias="MAX_BODY_BYTES", ge=1024, le=10_000_000)
    max_new_tokens: int = Field(default=1024, alias="MAX_NEW_TOKENS", ge=1, le=1_000_000)
    max_input_chars: int = Field(default=32_000, alias="MAX_INPUT_CHARS", ge=1, le=10_000_000)

    metrics_namespace: str = Field(default="Spotkeeper", alias="POWERTOOLS_METRICS_NAMESPACE", min_length=1)

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

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        source = dict(os.environ if environ is None else environ)
        try:
            return cls.model_validate(source)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or 'environment'}: {problem['msg']}"
                for problem in error.errors()
            )
            raise GatewayConfigError(f"gateway misconfigured: {problems}") from error
