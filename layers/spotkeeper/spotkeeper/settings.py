"""Each function's configuration: environment variables validated into a pydantic model on first use.

A misconfigured function fails loudly on its first event (the gateway: refuses to start, so the Lambda Web
Adapter's readiness check never passes); nothing falls back to a silent default for the things that name AWS
resources. Fields are named like their variables, in lower case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator


class ConfigurationError(RuntimeError):
    pass


# The template's Replicas and OnDemandFloor allow at most this many.
MAX_REPLICAS = 8


class _Env(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=str.upper, populate_by_name=True)

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


class EndpointEnv(_Env):
    """What every control function needs: the group, the table, the topic, where TGI listens."""

    group_name: str = Field(min_length=1)
    state_table_name: str = Field(min_length=1)
    alert_topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:")
    tgi_port: int = Field(default=8080, ge=1, le=65535)
    model_id: str = Field(min_length=1)
    probe_timeout_seconds: float = Field(default=3.0, gt=0, le=30)


class ControlEnv(EndpointEnv):
    eip_allocation_id: str = Field(pattern=r"^eipalloc-[0-9a-f]+$")
    launch_deadline_seconds: float = Field(default=1800, gt=0)
    ready_poll_seconds: float = Field(default=5, gt=0, le=60)
    drain_seconds: float = Field(default=60, ge=0, le=3600)
    unhealthy_after_failures: int = Field(default=3, ge=1, le=100)
    # Leave this much of the Lambda's own time for completing the hook or handing over to the probe.
    handover_margin_seconds: float = Field(default=20, ge=1)
    # Create mode: the stack whose creation waits (CreationPolicy) for the first instance to serve. Empty in attach
    # mode, where no stack waits for anything.
    creation_signal_stack: str = Field(default="", pattern=r"^$|^[A-Za-z][A-Za-z0-9-]{0,127}$")
    # Serving replicas the group keeps (template parameter Replicas; 1 is the single-instance product).
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)


class CapacityEnv(ControlEnv):
    min_on_demand_seconds: float = Field(default=1800, ge=0)
    spot_score_threshold: int = Field(default=7, ge=1, le=10)
    endpoint_down_alarm_name: str = Field(min_length=1)
    # On-Demand replicas the group always runs (its OnDemandBaseCapacity with no fallback); at most REPLICAS.
    on_demand_floor: int = Field(default=0, ge=0, le=MAX_REPLICAS)
    # A Spot pool (zone, instance type) whose launch just failed is left out of the return-to-Spot decision for
    # this long - never longer than MIN_ON_DEMAND_SECONDS (see logic/capacity.py).
    failed_pool_seconds: float = Field(default=900, ge=0, le=86400)

    @model_validator(mode="after")
    def _floor_within_replicas(self) -> Self:
        if self.on_demand_floor > self.replicas:
            raise ValueError(f"ON_DEMAND_FLOOR ({self.on_demand_floor}) is more than REPLICAS ({self.replicas})")
        return self

    @property
    def fallback_room(self) -> int:
        """How many replicas the dynamic fallback can put on On-Demand: those above the floor."""
        return self.replicas - self.on_demand_floor


class AuthorizerEnv(_Env):
    state_table_name: str = Field(min_length=1)


class GatewaySettings(_Env):
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

    # Limits on what a client may ask for.
    max_body_bytes: int = Field(default=1_000_000, ge=1024, le=10_000_000)
    max_new_tokens: int = Field(default=1024, ge=1, le=1_000_000)
    max_input_chars: int = Field(default=32_000, ge=1, le=10_000_000)

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


@cache
def control_env() -> ControlEnv:
    return ControlEnv.from_environ()


@cache
def capacity_env() -> CapacityEnv:
    return CapacityEnv.from_environ()


@cache
def authorizer_env() -> AuthorizerEnv:
    return AuthorizerEnv.from_environ()
