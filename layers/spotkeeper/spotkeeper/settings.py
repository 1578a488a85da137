"""Each function's configuration: environment variables validated into a pydantic model on first use.

A misconfigured function fails loudly on its first event; nothing falls back to a silent default for the
things that name AWS resources.
"""

from __future__ import annotations

import os
from functools import cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigurationError(RuntimeError):
    pass


class _Env(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None):
        source = os.environ if environ is None else environ
        try:
            return cls.model_validate({key.lower(): value for key, value in source.items()})
        except ValidationError as error:
            missing = ", ".join(str(issue["loc"][0]).upper() + f" ({issue['msg']})" for issue in error.errors())
            raise ConfigurationError(f"{cls.__name__}: bad or missing environment: {missing}") from None


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


class CapacityEnv(ControlEnv):
    min_on_demand_seconds: float = Field(default=1800, ge=0)
    spot_score_threshold: int = Field(default=7, ge=1, le=10)
    endpoint_down_alarm_name: str = Field(min_length=1)


@cache
def control_env() -> ControlEnv:
    return ControlEnv.from_environ()


@cache
def capacity_env() -> CapacityEnv:
    return CapacityEnv.from_environ()
