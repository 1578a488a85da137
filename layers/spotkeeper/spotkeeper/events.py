"""Typed models of every event spotkeeper accepts, exactly as AWS delivers them.

Powertools has no EC2, Auto Scaling or alarm-state-change models, so they are written here, with the envelope
of Powertools' EventBridgeModel (version, id, source, account, time, region, resources, detail-type, detail,
replay-name). They are msgspec Structs rather than pydantic models: msgspec validates as strictly (types,
patterns, lengths, the literal source and detail-type, required fields) and imports in a few milliseconds, where
pydantic and its schema building cost a control function's cold start about as much as boto3 itself (see
README's cold start section). Each handler parses its input with ``parse_event``: an event that does not fit
raises ``InvalidEvent`` naming the field and the problem (logged with the event id), so it is retried and ends
in the DLQ instead of being guessed at. The ``detail-type`` is each model's tag: a union of models is decided
by it, as pydantic's discriminator did.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec

INSTANCE_ID = r"^i-[0-9a-f]{8,17}$"
InstanceId = Annotated[str, msgspec.Meta(pattern=INSTANCE_ID)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class InvalidEvent(ValueError):
    """The event does not have the shape AWS documents for its kind."""

    def __init__(self, event_id: str | None, reason: str) -> None:
        super().__init__(f"invalid event {event_id or '<no id>'}: {reason}")
        self.event_id = event_id
        self.reason = reason


class _Detail(msgspec.Struct, kw_only=True):
    """A ``detail`` object: fields AWS may add later are accepted and ignored."""


class EventBridgeEvent(msgspec.Struct, kw_only=True, tag_field="detail-type", rename={"replay_name": "replay-name"}):
    """The EventBridge envelope (Powertools' EventBridgeModel); ``detail-type`` is the subclass's tag."""

    version: str
    id: str
    source: str
    account: str
    time: datetime
    region: str
    resources: list[str]
    detail: Any
    replay_name: str | None = None

    @property
    def detail_type(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]


# --- EC2 ----------------------------------------------------------------------------------------
class SpotInterruptionDetail(
    _Detail, kw_only=True, rename={"instance_id": "instance-id", "instance_action": "instance-action"}
):
    instance_id: InstanceId
    instance_action: Literal["terminate", "stop", "hibernate"]


class SpotInterruptionWarning(EventBridgeEvent, kw_only=True, tag="EC2 Spot Instance Interruption Warning"):
    source: Literal["aws.ec2"]
    detail: SpotInterruptionDetail


class RebalanceDetail(_Detail, kw_only=True, rename={"instance_id": "instance-id"}):
    instance_id: InstanceId


class RebalanceRecommendation(EventBridgeEvent, kw_only=True, tag="EC2 Instance Rebalance Recommendation"):
    source: Literal["aws.ec2"]
    detail: RebalanceDetail


InstanceAtRiskEvent = SpotInterruptionWarning | RebalanceRecommendation


# --- Auto Scaling ---------------------------------------------------------------------------------
class LifecycleActionDetail(
    _Detail,
    kw_only=True,
    rename={
        "lifecycle_action_token": "LifecycleActionToken",
        "group_name": "AutoScalingGroupName",
        "hook_name": "LifecycleHookName",
        "instance_id": "EC2InstanceId",
        "transition": "LifecycleTransition",
        "notification_metadata": "NotificationMetadata",
        "origin": "Origin",
        "destination": "Destination",
    },
):
    lifecycle_action_token: NonEmpty
    group_name: NonEmpty
    hook_name: NonEmpty
    instance_id: InstanceId
    transition: Literal["autoscaling:EC2_INSTANCE_LAUNCHING", "autoscaling:EC2_INSTANCE_TERMINATING"]
    notification_metadata: str | None = None
    origin: str | None = None
    destination: str | None = None


class LifecycleHook(StrEnum):
    """The group's two lifecycle hooks, named once: template.yaml creates them under these names (a test checks)."""

    LAUNCH = "spotkeeper-launch"
    TERMINATE = "spotkeeper-terminate"

    @property
    def transition(self) -> str:
        launching = self is LifecycleHook.LAUNCH
        return f"autoscaling:EC2_INSTANCE_{'LAUNCHING' if launching else 'TERMINATING'}"


class LaunchLifecycleAction(EventBridgeEvent, kw_only=True, tag="EC2 Instance-launch Lifecycle Action"):
    source: Literal["aws.autoscaling"]
    detail: LifecycleActionDetail


class TerminateLifecycleAction(EventBridgeEvent, kw_only=True, tag="EC2 Instance-terminate Lifecycle Action"):
    source: Literal["aws.autoscaling"]
    detail: LifecycleActionDetail


LifecycleEvent = LaunchLifecycleAction | TerminateLifecycleAction


class LaunchUnsuccessfulDetail(
    _Detail,
    kw_only=True,
    rename={
        "group_name": "AutoScalingGroupName",
        "status_code": "StatusCode",
        "status_message": "StatusMessage",
        "activity_id": "ActivityId",
        "cause": "Cause",
        "details": "Details",
    },
):
    group_name: NonEmpty
    status_code: str
    status_message: str
    activity_id: str | None = None
    cause: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class LaunchUnsuccessful(EventBridgeEvent, kw_only=True, tag="EC2 Instance Launch Unsuccessful"):
    source: Literal["aws.autoscaling"]
    detail: LaunchUnsuccessfulDetail


# --- CloudWatch -----------------------------------------------------------------------------------
class AlarmState(_Detail, kw_only=True):
    value: Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
    reason: str = ""
    timestamp: str | None = None


class AlarmStateChangeDetail(
    _Detail, kw_only=True, rename={"alarm_name": "alarmName", "previous_state": "previousState"}
):
    alarm_name: NonEmpty
    state: AlarmState
    previous_state: AlarmState | None = None
    # The alarm's configuration as the event carries it (its description, metrics); any shape AWS sends.
    configuration: Any = None


class AlarmStateChange(EventBridgeEvent, kw_only=True, tag="CloudWatch Alarm State Change"):
    source: Literal["aws.cloudwatch"]
    detail: AlarmStateChangeDetail


class ScheduledEvent(EventBridgeEvent, kw_only=True, tag="Scheduled Event"):
    source: Literal["aws.events", "aws.scheduler"]
    detail: dict[str, Any]


def parse_event[T](raw: Any, model: Any) -> T:
    """Validate ``raw`` against ``model`` (a model class or a union of them, told apart by ``detail-type``)."""
    event_id = raw.get("id") if isinstance(raw, dict) else None
    try:
        return msgspec.convert(raw, model, strict=True)
    except msgspec.ValidationError as error:
        raise InvalidEvent(event_id if isinstance(event_id, str) else None, str(error)) from None
