"""Auto Scaling lifecycle hooks for the embedded AWS, where moto has none.

moto launches and terminates instances at once and implements neither CompleteLifecycleAction nor
RecordLifecycleActionHeartbeat, and emits no EventBridge events. This module stands in for that part of AWS:

* ``LifecycleHooks`` answers those two API calls on a boto3 client the way AWS does: a pending action is
  completed once (CONTINUE or ABANDON), by its token or, without one, by InstanceId; completing it again, or
  with an unknown token, is a ValidationError "No active Lifecycle Action found with token ...".
* ``GroupWatcher`` compares the group's instances between two looks and produces the
  "EC2 Instance-launch/terminate Lifecycle Action" events AWS would have emitted, in the shape of
  ``events/lifecycle-*.json``, each with a fresh pending action.

It is used by the tests and by the local drill, never by the Lambda code.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.events import LifecycleHook
from spotkeeper_local.aws_events import aws_event

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"


def aws_error(operation: str, code: str, message: str) -> ClientError:
    """The error AWS would answer ``operation`` with, as botocore raises it."""
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


@dataclass
class LifecycleAction:
    token: str
    group: str
    hook: str
    instance_id: str
    transition: str
    result: str | None = None
    heartbeats: int = 0


@dataclass
class LifecycleHooks:
    """The pending lifecycle actions of the embedded AWS and what each was completed with."""

    actions: dict[str, LifecycleAction] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Called with ("complete" | "heartbeat", action) after each accepted call: the group stand-in of the drill
    # finishes the launch or termination the action was holding.
    listeners: list[Callable[[str, LifecycleAction], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, group: str, hook: str, instance_id: str, transition: str) -> LifecycleAction:
        action = LifecycleAction(str(uuid.uuid4()), group, hook, instance_id, transition)
        with self._lock:
            self.actions[action.token] = action
        return action

    def results_for(self, instance_id: str, transition: str | None = None) -> list[str | None]:
        return [
            a.result
            for a in self.actions.values()
            if a.instance_id == instance_id and (transition is None or a.transition == transition)
        ]

    def completions(self) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == "CompleteLifecycleAction"]

    # the two API calls ----------------------------------------------------------------------------
    def _find(self, params: dict[str, Any], operation: str) -> LifecycleAction:
        token = params.get("LifecycleActionToken")
        if token:
            action = self.actions.get(token)
        else:
            # AWS completes "the lifecycle action for the specified token or instance": without a token, the
            # instance's pending action of that hook (how a launch whose event was lost is completed).
            action = next(
                (
                    a
                    for a in self.actions.values()
                    if a.result is None
                    and a.instance_id == params.get("InstanceId")
                    and a.group == params.get("AutoScalingGroupName")
                ),
                None,
            )
        if (
            action is None
            or action.result is not None
            or action.instance_id != params.get("InstanceId", action.instance_id)
            or action.hook != params.get("LifecycleHookName")
        ):
            raise ClientError(
                {
                    "Error": {
                        "Code": "ValidationError",
                        "Message": f"No active Lifecycle Action found with token {params.get('LifecycleActionToken')}",
                    }
                },
                operation,
            )
        return action

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append(("CompleteLifecycleAction", dict(params)))
            action = self._find(params, "CompleteLifecycleAction")
            if params.get("LifecycleActionResult") not in {"CONTINUE", "ABANDON"}:
                raise ClientError(
                    {"Error": {"Code": "ValidationError", "Message": "LifecycleActionResult must be CONTINUE|ABANDON"}},
                    "CompleteLifecycleAction",
                )
            action.result = params["LifecycleActionResult"]
        self._notify("complete", action)
        return {}

    def heartbeat(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append(("RecordLifecycleActionHeartbeat", dict(params)))
            action = self._find(params, "RecordLifecycleActionHeartbeat")
            action.heartbeats += 1
        self._notify("heartbeat", action)
        return {}

    def expire(self, token: str, default_result: str) -> bool:
        """The heartbeat timeout passed: AWS completes the action with the hook's DefaultResult."""
        with self._lock:
            action = self.actions.get(token)
            if action is None or action.result is not None:
                return False
            action.result = default_result
        self._notify("complete", action)
        return True

    def _notify(self, what: str, action: LifecycleAction) -> None:
        for listener in list(self.listeners):
            listener(what, action)

    def install(self, autoscaling_client: Any) -> None:
        """Answer the two calls on this client instead of sending them to moto."""
        answer_locally(autoscaling_client, "CompleteLifecycleAction", self.complete)
        answer_locally(autoscaling_client, "RecordLifecycleActionHeartbeat", self.heartbeat)


def answer_locally(
    client: Any,
    operation: str,
    handler: Callable[[dict[str, Any]], dict[str, Any]],
    service: str = "auto-scaling",
) -> None:
    """Answer ``operation`` on this client (Auto Scaling unless ``service`` says otherwise) with
    ``handler(params)`` instead of sending it to moto.

    ``handler`` returns the parsed response, or raises botocore's ClientError as AWS would answer.
    """
    events = client.meta.events

    def remember_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["spotkeeper_api_params"] = dict(params)

    def before_call(context: dict[str, Any], **_: Any) -> Any:
        parsed = handler(context.get("spotkeeper_api_params", {}))
        parsed["ResponseMetadata"] = {"HTTPStatusCode": 200, "RequestId": str(uuid.uuid4())}
        return _FakeHttp(), parsed

    events.register(f"before-parameter-build.{service}.{operation}", remember_params)
    events.register(f"before-call.{service}.{operation}", before_call)


class _FakeHttp:
    status_code = 200
    headers: dict[str, str] = {}
    content = b""


class GroupWatcher:
    """Turns changes in the group's instances into the lifecycle events AWS would emit."""

    def __init__(
        self,
        autoscaling: Any,
        group: str,
        hooks: LifecycleHooks,
        launch_hook: str = LifecycleHook.LAUNCH,
        terminate_hook: str = LifecycleHook.TERMINATE,
    ) -> None:
        self._autoscaling = autoscaling
        self.group = group
        self.hooks = hooks
        self.launch_hook = launch_hook
        self.terminate_hook = terminate_hook
        self.known: set[str] = self._instances()

    def _instances(self) -> set[str]:
        groups = self._autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])["AutoScalingGroups"]
        return {i["InstanceId"] for i in groups[0]["Instances"]} if groups else set()

    def poll(self) -> list[dict[str, Any]]:
        now = self._instances()
        launched, gone = sorted(now - self.known), sorted(self.known - now)
        self.known = now
        events = [self.lifecycle_event(instance_id, LAUNCHING) for instance_id in launched]
        events += [self.lifecycle_event(instance_id, TERMINATING) for instance_id in gone]
        return events

    def lifecycle_event(self, instance_id: str, transition: str) -> dict[str, Any]:
        hook = self.launch_hook if transition == LAUNCHING else self.terminate_hook
        action = self.hooks.open(self.group, hook, instance_id, transition)
        return lifecycle_event(self.group, hook, instance_id, transition, action.token)


def lifecycle_event(group: str, hook: str, instance_id: str, transition: str, token: str) -> dict[str, Any]:
    launching = transition == LAUNCHING
    return aws_event(
        "lifecycle-launch" if launching else "lifecycle-terminate",
        detail={
            "LifecycleActionToken": token,
            "AutoScalingGroupName": group,
            "LifecycleHookName": hook,
            "EC2InstanceId": instance_id,
            "LifecycleTransition": transition,
        },
        resources=[f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/{group}"],
    )
