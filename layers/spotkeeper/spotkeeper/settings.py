"""Each function's configuration: environment variables validated into a typed model on first use.

A misconfigured function fails loudly on its first event (the gateway: refuses to start, so the Lambda Web
Adapter's readiness check never passes); nothing falls back to a silent default for the things that name AWS
resources. Fields are named like their variables, in lower case.

The control functions' models are msgspec Structs (strings converted to numbers as pydantic's lax mode did,
with the same bounds and patterns): pydantic would cost a control function's cold start about as much as boto3.
The gateway, which has FastAPI and so pydantic loaded anyway, keeps its pydantic model (``GatewaySettings``, in
``spotkeeper.gateway_settings``, importable from here as before).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Self

import msgspec
from msgspec import Meta

if TYPE_CHECKING:
    from spotkeeper.gateway_settings import GatewaySettings

__all__ = [
    "MAX_REPLICAS",
    "AuthorizerEnv",
    "CapacityEnv",
    "ConfigurationError",
    "ControlEnv",
    "EndpointEnv",
    "GatewaySettings",
    "authorizer_env",
    "capacity_env",
    "control_env",
]


class ConfigurationError(RuntimeError):
    pass


# The template's Replicas and OnDemandFloor allow at most this many.
MAX_REPLICAS = 8

NonEmpty = Annotated[str, Meta(min_length=1)]
Port = Annotated[int, Meta(ge=1, le=65535)]


class _Env(msgspec.Struct, kw_only=True, frozen=True, rename="upper"):
    """Read from the environment: variable ``GROUP_NAME`` fills field ``group_name``; other variables are ignored."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Self:
        source = os.environ if environ is None else environ
        try:
            return msgspec.convert(dict(source), cls, strict=False)
        except msgspec.ValidationError as error:
            raise ConfigurationError(f"{cls.__name__}: bad or missing environment: {error}") from None


class EndpointEnv(_Env, kw_only=True):
    """What every control function needs: the group, the table, the topic, where TGI listens."""

    group_name: NonEmpty
    state_table_name: NonEmpty
    alert_topic_arn: Annotated[str, Meta(pattern=r"^arn:aws[a-z-]*:sns:")]
    tgi_port: Port = 8080
    model_id: NonEmpty
    probe_timeout_seconds: Annotated[float, Meta(gt=0, le=30)] = 3.0


class ControlEnv(EndpointEnv, kw_only=True):
    eip_allocation_id: Annotated[str, Meta(pattern=r"^eipalloc-[0-9a-f]+$")]
    launch_deadline_seconds: Annotated[float, Meta(gt=0)] = 1800
    ready_poll_seconds: Annotated[float, Meta(gt=0, le=60)] = 5
    drain_seconds: Annotated[float, Meta(ge=0, le=3600)] = 60
    unhealthy_after_failures: Annotated[int, Meta(ge=1, le=100)] = 3
    # Leave this much of the Lambda's own time for completing the hook or handing over to the probe.
    handover_margin_seconds: Annotated[float, Meta(ge=1)] = 20
    # Create mode: the stack whose creation waits (CreationPolicy) for the first instance to serve. Empty in attach
    # mode, where no stack waits for anything.
    creation_signal_stack: Annotated[str, Meta(pattern=r"^$|^[A-Za-z][A-Za-z0-9-]{0,127}$")] = ""
    # Serving replicas the group keeps (template parameter Replicas; 1 is the single-instance product).
    replicas: Annotated[int, Meta(ge=1, le=MAX_REPLICAS)] = 1


class CapacityEnv(ControlEnv, kw_only=True):
    min_on_demand_seconds: Annotated[float, Meta(ge=0)] = 1800
    spot_score_threshold: Annotated[int, Meta(ge=1, le=10)] = 7
    endpoint_down_alarm_name: NonEmpty
    # On-Demand replicas the group always runs (its OnDemandBaseCapacity with no fallback); at most REPLICAS.
    on_demand_floor: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 0
    # A Spot pool (zone, instance type) whose launch just failed is left out of the return-to-Spot decision for
    # this long - never longer than MIN_ON_DEMAND_SECONDS (see logic/capacity.py).
    failed_pool_seconds: Annotated[float, Meta(ge=0, le=86400)] = 900

    def __post_init__(self) -> None:
        # msgspec reports a ValueError raised here as a validation error of the whole object.
        if self.on_demand_floor > self.replicas:
            raise ValueError(f"ON_DEMAND_FLOOR ({self.on_demand_floor}) is more than REPLICAS ({self.replicas})")

    @property
    def fallback_room(self) -> int:
        """How many replicas the dynamic fallback can put on On-Demand: those above the floor."""
        return self.replicas - self.on_demand_floor


class AuthorizerEnv(_Env, kw_only=True):
    state_table_name: NonEmpty


@cache
def control_env() -> ControlEnv:
    return ControlEnv.from_environ()


@cache
def capacity_env() -> CapacityEnv:
    return CapacityEnv.from_environ()


@cache
def authorizer_env() -> AuthorizerEnv:
    return AuthorizerEnv.from_environ()


def __getattr__(name: str) -> Any:
    if name == "GatewaySettings":
        from spotkeeper.gateway_settings import GatewaySettings

        return GatewaySettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
