"""Typed models of every event spotkeeper accepts, exactly as AWS delivers them.

Powertools has no EC2, Auto Scaling or alarm-state-change models, so they are written here on top of its
EventBridgeModel. Each handler parses its input with ``parse_event``: an event that does not fit raises
``InvalidEvent`` (logged with the event id), so it is retried and ends in the DLQ instead of being guessed at.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"


class InvalidEvent(ValueError):
    """The event does not have the shape AWS documents for its kind."""

    def __init__(self, event_id: str | None, reason: str) -> None:
        super().__init__(f"invalid event {event_id or '<no id>'}: {reason}")
        self.event_id = event_id
        self.reason = reason


class _Detail(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


# --- EC2 ----------------------------------------------------------------------------------------
class SpotInterruptionDetail(_Detail):
    instance_id: str = Field(alias="instance-id", pattern=INSTANCE_ID)
    instance_action: Literal["terminate", "stop", "hibernate"] = Field(alias="instance-action")


class SpotInterruptionWarning(EventBridgeModel):
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Spot Instance Interruption Warning"] = Field(alias="detail-type")
    detail: SpotInterruptionDetail


class RebalanceDetail(_Detail):
    instance_id: str = Field(alias="instance-id", pattern=INSTANCE_ID)


class RebalanceRecommendation(EventBridgeModel):
    source: Literal["aws.ec2"]
    detail_type: Literal["EC2 Instance Rebalance Recommendation"] = Field(alias="detail-type")
    detail: RebalanceDetail


InstanceAtRiskEvent = Annotated[SpotInterruptionWarning | RebalanceRecommendation, Field(discriminator="detail_type")]


# --- Auto Scaling ---------------------------------------------------------------------------------
class LifecycleActionDetail(_Detail):
    lifecycle_action_token: str = Field(alias="LifecycleActionToken", min_length=1)
    group_name: str = Field(alias="AutoScalingGroupName", min_length=1)
    hook_name: str = Field(alias="LifecycleHookName", min_length=1)
    instance_id: str = Field(alias="EC2InstanceId", pattern=INSTANCE_ID)
    transition: Literal["autoscaling:EC2_INSTANCE_LAUNCHING", "autoscaling:EC2_INSTANCE_TERMINATING"] = Field(
        alias="LifecycleTransition"
    )
    notification_metadata: str | None = Field(default=None, alias="NotificationMetadata")
    origin: str | None = Field(default=None, alias="Origin")
    destination: str | None = Field(default=None, alias="Destination")


class LifecycleHook(StrEnum):
    """The group's two lifecycle hooks, named once: template.yaml creates them under these names (a test checks)."""

    LAUNCH = "spotkeeper-launch"
    TERMINATE = "spotkeeper-terminate"

    @property
    def transition(self) -> str:
        launching = self is LifecycleHook.LAUNCH
        return f"autoscaling:EC2_INSTANCE_{'LAUNCHING' if launching else 'TERMINATING'}"


class LaunchLifecycleAction(EventBridgeModel):
    source: Literal["aws.autoscaling"]
    detail_type: Literal["EC2 Instance-launch Lifecycle Action"] = Field(alias="detail-type")
    detail: LifecycleActionDetail


class TerminateLifecycleAction(EventBridgeModel):
    source: Literal["aws.autoscaling"]
    detail_type: Literal["EC2 Instance-terminate Lifecycle Action"] = Field(alias="detail-type")
    detail: LifecycleActionDetail


LifecycleEvent = Annotated[LaunchLifecycleAction | TerminateLifecycleAction, Field(discriminator="detail_type")]


class LaunchUnsuccessfulDetail(_Detail):
    group_name: str = Field(alias="AutoScalingGroupName", min_length=1)
    status_code: str = Field(alias="StatusCode")
    status_message: str = Field(alias="StatusMessage")
    activity_id: str | None = Field(default=None, alias="ActivityId")
    cause: str | None = Field(default=None, alias="Cause")
    details: dict[str, Any] = Field(default_factory=dict, alias="Details")


class LaunchUnsuccessful(EventBridgeModel):
    source: Literal["aws.autoscaling"]
    detail_type: Literal["EC2 Instance Launch Unsuccessful"] = Field(alias="detail-type")
    detail: LaunchUnsuccessfulDetail


# --- CloudWatch -----------------------------------------------------------------------------------
class AlarmState(_Detail):
    value: Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
    reason: str = ""
    timestamp: str | None = None


class AlarmStateChangeDetail(_Detail):
    alarm_name: str = Field(alias="alarmName", min_length=1)
    state: AlarmState
    previous_state: AlarmState | None = Field(default=None, alias="previousState")


class AlarmStateChange(EventBridgeModel):
    source: Literal["aws.cloudwatch"]
    detail_type: Literal["CloudWatch Alarm State Change"] = Field(alias="detail-type")
    detail: AlarmStateChangeDetail


class ScheduledEvent(EventBridgeModel):
    source: Literal["aws.events", "aws.scheduler"]
    detail_type: Literal["Scheduled Event"] = Field(alias="detail-type")


def parse_event[T](raw: Any, model: Any) -> T:
    """Validate ``raw`` against ``model`` (a model class or an annotated union of them)."""
    event_id = raw.get("id") if isinstance(raw, dict) else None
    try:
        return TypeAdapter(model).validate_python(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']}" for issue in error.errors()[:5]
        )
        raise InvalidEvent(event_id if isinstance(event_id, str) else None, problems) from None
