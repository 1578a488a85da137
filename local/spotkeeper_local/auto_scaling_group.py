"""The Auto Scaling group of the embedded AWS: the one model of its lifecycle and its instance refreshes.

Auto Scaling and EC2 behaviour the drill, the bench and the tests need and moto does not have, for the groups a
``GroupStandIn`` is attached to (other groups keep moto's behaviour).

moto launches and terminates a group's instances at once: no instance waits in ``Pending:Wait`` or
``Terminating:Wait``, lifecycle hooks are stored but never run, Spot capacity never runs out, Capacity
Rebalancing is ignored and nothing is emitted to EventBridge. ``GroupStandIn`` stands in for exactly that, in
moto's own process (the drill's moto server, or moto in-process in the tests): it changes moto's models directly,
like a second AWS service would:

* a new instance of a group with a launch hook waits in ``Pending:Wait`` until its lifecycle action is
  completed (CONTINUE -> ``InService``; ABANDON or the heartbeat timeout's ABANDON -> terminated, and the group
  tries again); instances in ``Pending`` states count toward desired capacity, as in AWS;
* every way an instance leaves (TerminateInstanceInAutoScalingGroup, a scale-in, EC2 terminating it, Spot
  reclaiming it) goes through ``Terminating:Wait`` and the terminate hook, and the group launches a replacement
  only if it is below desired capacity once the termination has completed;
* Spot reclaims an instance: EC2 terminates it (its TGI emulator dies with it), the group notices;
* Capacity Rebalancing: on a rebalance recommendation the group launches a replacement and terminates the
  at-risk instance once the replacement is ``InService``;
* the Spot market (``spot_market.SpotMarket``): when Spot capacity is out, a launch that would be Spot fails
  with the reason AWS gives and an ``EC2 Instance Launch Unsuccessful`` event, and the group retries (at once when
  its policy changes); On-Demand launches still succeed. Which launches are Spot follows the group's
  MixedInstancesPolicy (On-Demand base capacity first);
* the On-Demand level: an update to OnDemandBaseCapacity (or the percentage above it) "means a gradual
  replacement of instances to adjust the current On-Demand Instance levels. When replacing instances, Amazon EC2
  Auto Scaling launches new instances before terminating the previous ones" (API_InstancesDistribution). One
  instance at a time, once the group is at desired capacity with nothing launching: the replacement launches (a
  failed Spot launch is reported and retried), and the instance it replaces terminates once it is ``InService``;
* instance refresh (StartInstanceRefresh, DescribeInstanceRefreshes, CancelInstanceRefresh, which moto 5.2.5
  does not implement, answered on the clients given to ``answer_refreshes_on``), carried out as Auto Scaling
  does with MinHealthyPercentage 100: per instance the replacement launches (and waits for its launch hook),
  then the old one terminates (through its terminate hook). It advances on ``tick`` and on lifecycle actions.

Lifecycle actions are the ``LifecycleHooks`` of ``lifecycle_hooks.py`` (which answers CompleteLifecycleAction and
RecordLifecycleActionHeartbeat on the control plane's clients). What happened is queued in ``events`` (to put on
the bus), ``booted`` / ``gone`` (instances whose TGI starts / dies) and ``log`` (for the drill's timeline);
``spotkeeper_local.world`` hands them on.

moto's models are read through their public attributes only (``instance.state``, ``group.instance_states``,
``state.lifecycle_state``); the stand-in marks the groups it runs with an attribute of its own on moto's group.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spotkeeper_local.aws_events import aws_event
from spotkeeper_local.lifecycle_hooks import (
    LAUNCHING,
    TERMINATING,
    LifecycleAction,
    LifecycleHooks,
    answer_locally,
    aws_error,
    lifecycle_event,
)
from spotkeeper_local.spot_market import SpotMarket

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
SPOT = "spot"
ON_DEMAND = "on-demand"
PENDING_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed"})
# How often a group below desired capacity tries again after a failed launch.
LAUNCH_RETRY_SECONDS = 60.0
NO_SPOT_CAPACITY = (
    "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
    "matches your request. Launching EC2 instance failed."
)

ACTIVE_REFRESH = ("Pending", "InProgress", "Cancelling")
# Set on moto's group model while a stand-in runs the group: a moto reset (a new backend) drops it with the group.
_STAND_IN = "spotkeeper_stand_in"
_patch_lock = threading.Lock()


def _stand_in(group: Any) -> GroupStandIn | None:
    return getattr(group, _STAND_IN, None)


def _backends() -> tuple[Any, Any]:
    from moto.autoscaling.models import autoscaling_backends
    from moto.ec2.models import ec2_backends

    return autoscaling_backends[ACCOUNT_ID][REGION], ec2_backends[ACCOUNT_ID][REGION]


def _install_patches() -> None:
    """Route moto's group capacity changes through the stand-in of each attached group (others unchanged)."""
    from moto.autoscaling import models

    with _patch_lock:
        if getattr(models, "_spotkeeper_stand_in", False):
            return
        group_class, backend_class = models.FakeAutoScalingGroup, models.AutoScalingBackend
        original_active = group_class.active_instances
        original_set_desired = group_class.set_desired_capacity
        original_replace = group_class.replace_autoscaling_group_instances
        original_terminate = backend_class.terminate_instance
        original_notify = backend_class.notify_terminate_instances

        def active_instances(self: Any) -> list[Any]:
            stand_in = _stand_in(self)
            return stand_in.counted(self) if stand_in else original_active(self)

        def set_desired_capacity(self: Any, new_capacity: int | None) -> None:
            stand_in = _stand_in(self)
            if stand_in is None:
                original_set_desired(self, new_capacity)
            else:
                stand_in.set_desired(self, new_capacity)

        def replace_autoscaling_group_instances(self: Any, count_needed: int, propagated_tags: dict) -> None:
            stand_in = _stand_in(self)
            if stand_in is None:
                original_replace(self, count_needed, propagated_tags)
            else:
                stand_in.launch(self, count_needed, lambda: original_replace(self, 1, dict(propagated_tags)))

        def terminate_instance(self: Any, instance_id: str, should_decrement: bool) -> Any:
            for group in self.autoscaling_groups.values():
                stand_in = _stand_in(group)
                if stand_in is not None and any(s.instance.id == instance_id for s in group.instance_states):
                    return stand_in.terminate_in_group(group, instance_id, should_decrement)
            return original_terminate(self, instance_id, should_decrement)

        def notify_terminate_instances(self: Any, instance_ids: list[str]) -> None:
            # EC2's TerminateInstances on a member: the group notices and runs its terminate hook.
            handled = set()
            for group in self.autoscaling_groups.values():
                stand_in = _stand_in(group)
                if stand_in is None:
                    continue
                for instance_id in instance_ids:
                    if any(s.instance.id == instance_id for s in group.instance_states):
                        stand_in.begin_termination(group, instance_id, "EC2 terminated it")
                        handled.add(instance_id)
            rest = [i for i in instance_ids if i not in handled]
            if rest:
                original_notify(self, rest)

        group_class.active_instances = active_instances
        group_class.set_desired_capacity = set_desired_capacity
        group_class.replace_autoscaling_group_instances = replace_autoscaling_group_instances
        backend_class.terminate_instance = terminate_instance
        backend_class.notify_terminate_instances = notify_terminate_instances
        models._spotkeeper_stand_in = True


def _validation_error(message: str) -> Exception:
    from moto.autoscaling.exceptions import ValidationError

    return ValidationError(message)


@dataclass
class _Refresh:
    refresh_id: str
    preferences: dict[str, Any]
    started_at: float
    to_replace: list[str]
    status: str = "Pending"
    status_reason: str = ""
    ended_at: float | None = None
    replaced: list[str] = field(default_factory=list)
    replacement: str | None = None  # launched for the instance being replaced now
    tried_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_REFRESH

    def describe(self, group: str) -> dict[str, Any]:
        """As DescribeInstanceRefreshes answers it."""
        total = max(1, len(self.to_replace))
        described: dict[str, Any] = {
            "InstanceRefreshId": self.refresh_id,
            "AutoScalingGroupName": group,
            "Status": self.status,
            "StatusReason": self.status_reason,
            "StartTime": datetime.fromtimestamp(self.started_at, UTC),
            "PercentageComplete": 100 if self.status == "Successful" else int(100 * len(self.replaced) / total),
            "InstancesToUpdate": len(self.to_replace) - len(self.replaced),
            "Preferences": self.preferences,
            "Strategy": "Rolling",
        }
        if self.ended_at is not None:
            described["EndTime"] = datetime.fromtimestamp(self.ended_at, UTC)
        return described


@dataclass
class _Hold:
    action: LifecycleAction
    deadline: float
    timeout: float
    default_result: str
    reason: str = ""


@dataclass
class GroupStandIn:
    """Stands in for Auto Scaling's lifecycle of one group of the embedded moto (see the module docstring)."""

    group_name: str
    hooks: LifecycleHooks
    clock: Any
    market: SpotMarket = field(default_factory=SpotMarket)
    events: list[dict[str, Any]] = field(default_factory=list)
    booted: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    log: list[tuple[float, str]] = field(default_factory=list)
    purchase: dict[str, str] = field(default_factory=dict)  # instance -> spot / on-demand
    _holds: dict[str, _Hold] = field(default_factory=dict)  # token -> what the action holds
    refreshes: list[_Refresh] = field(default_factory=list)  # newest first, as AWS lists them
    refresh_calls: list[dict[str, Any]] = field(default_factory=list)  # StartInstanceRefresh parameters
    _replacing: dict[str, str] = field(default_factory=dict)  # replacement -> instance it replaces
    _level_swaps: set[str] = field(default_factory=set)  # replacements adjusting the On-Demand level
    _level_tried_at: float | None = None  # last failed launch of such a replacement
    _failed_launch_at: float | None = None
    _failed_with_base: int | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def attach(self, launching: bool = True) -> GroupStandIn:
        """Take over the group. Its instances (moto launched them with the stack) are launching now, as in AWS:
        each waits in Pending:Wait for its launch hook; with ``launching`` False they are simply InService."""
        _install_patches()
        self.hooks.listeners.append(self._on_action)
        with self._lock:
            group = self._group()
            setattr(group, _STAND_IN, self)
            misplaced = self._unbalanced_first_instances(group) if launching else []
            for state in misplaced:
                # moto put every first instance in the first subnet; Auto Scaling spreads them over the zones.
                _, ec2 = _backends()
                group.instance_states = [s for s in group.instance_states if s is not state]
                ec2.terminate_instances([state.instance.id])
            for state in list(group.instance_states):
                purchase = self.purchase.setdefault(state.instance.id, self._next_purchase(group))
                self._describe_instance(group, state.instance, purchase)
                if launching:
                    self._launched(group, state)
                else:
                    self.booted.append(state.instance.id)
            if misplaced:
                group.replace_autoscaling_group_instances(len(misplaced), group.get_propagated_tags())
        return self

    def on_demand_base(self) -> int:
        return self._on_demand_base(self._group())

    def detach(self) -> None:
        autoscaling, _ = _backends()
        group = autoscaling.autoscaling_groups.get(self.group_name)
        if group is not None and _stand_in(group) is self:
            delattr(group, _STAND_IN)
        if self._on_action in self.hooks.listeners:
            self.hooks.listeners.remove(self._on_action)

    # moto's view ---------------------------------------------------------------------------------
    def _group(self) -> Any:
        autoscaling, _ = _backends()
        return autoscaling.autoscaling_groups[self.group_name]

    def _hook(self, group: Any, transition: str) -> Any:
        autoscaling, _ = _backends()
        return next(
            (
                hook
                for hook in autoscaling.lifecycle_hooks.values()
                if hook.auto_scaling_group_name == group.name and hook.lifecycle_transition == transition
            ),
            None,
        )

    def _state(self, group: Any, instance_id: str) -> Any:
        return next((s for s in group.instance_states if s.instance.id == instance_id), None)

    def counted(self, group: Any) -> list[Any]:
        """Instances that count toward desired capacity: pending or in service, not leaving; an at-risk instance
        stops counting once its Capacity Rebalancing replacement does."""
        states = [
            s for s in group.instance_states if s.lifecycle_state == "InService" or s.lifecycle_state in PENDING_STATES
        ]
        replaced = {old for new, old in self._replacing.items() if any(s.instance.id == new for s in states)}
        return [s for s in states if s.instance.id not in replaced]

    def _say(self, text: str) -> None:
        self.log.append((self.clock.now(), text))

    # capacity ------------------------------------------------------------------------------------
    def set_desired(self, group: Any, new_capacity: int | None) -> None:
        with self._lock:
            group.desired_capacity = group.min_size if new_capacity is None else new_capacity
            counted = self.counted(group)
            missing = group.desired_capacity - len(counted)
            if missing > 0:
                group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())
            elif missing < 0:
                # AWS's default termination policy balances zones (the zone with the most instances loses one),
                # then allocation strategies, then takes the oldest launch template, then the instance closest to
                # its next billing hour. One template here, and no billing hours: the oldest of that zone goes.
                left = list(counted)
                for _ in range(-missing):
                    per_zone: dict[str, int] = {}
                    for state in left:
                        per_zone[state.instance.placement.zone] = per_zone.get(state.instance.placement.zone, 0) + 1
                    most = max(per_zone.values())
                    state = min(
                        (s for s in left if per_zone[s.instance.placement.zone] == most),
                        key=lambda s: s.instance.launch_time,
                    )
                    left.remove(state)
                    self.begin_termination(group, state.instance.id, "scale-in")

    @staticmethod
    def _on_demand_base(group: Any) -> int:
        distribution = (group.mixed_instances_policy or {}).get("InstancesDistribution", {})
        return int(distribution.get("OnDemandBaseCapacity", 0))

    def _next_purchase(self, group: Any) -> str:
        distribution = (group.mixed_instances_policy or {}).get("InstancesDistribution", {})
        if not group.mixed_instances_policy:
            return ON_DEMAND
        base = self._on_demand_base(group)
        above = int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100))
        on_demand = sum(1 for s in self.counted(group) if self.purchase.get(s.instance.id) == ON_DEMAND)
        if on_demand < base:
            return ON_DEMAND
        return ON_DEMAND if above >= 50 else SPOT

    def launch(self, group: Any, count: int, launch_one: Callable[[], None]) -> list[str]:
        """The group launches ``count`` instances, each Spot or On-Demand as its policy says, each in the zone with
        the fewest of the group's instances (Auto Scaling's zone balance). A Spot launch goes to the first instance
        type of the overrides with Spot capacity in that zone; where no type has any, the launch fails there and,
        as the default AvailabilityZoneDistribution (balanced-best-effort) does, the group tries the next zone: each
        zone that failed is an ``EC2 Instance Launch Unsuccessful`` event, and only when every zone failed does the
        group wait to try again."""
        launched: list[str] = []
        with self._lock:
            for _ in range(count):
                purchase = self._next_purchase(group)
                placement, failed = self._placement(group, purchase)
                for zone, subnet in failed:
                    self._launch_failed(group, zone, subnet, retried=placement is not None)
                if placement is None:
                    return launched
                subnet, instance_type = placement
                before = {s.instance.id for s in group.instance_states}
                everywhere = group.vpc_zone_identifier
                group.vpc_zone_identifier = subnet  # moto launches into the first subnet listed
                try:
                    launch_one()
                finally:
                    group.vpc_zone_identifier = everywhere
                for state in group.instance_states:
                    if state.instance.id in before:
                        continue
                    self.purchase[state.instance.id] = purchase
                    self._describe_instance(group, state.instance, purchase, instance_type)
                    launched.append(state.instance.id)
                    self._launched(group, state)
            self._failed_launch_at = None
        return launched

    def zones(self, group: Any | None = None) -> list[tuple[str, str]]:
        """(zone name, subnet) of the group's subnets, in the order the group lists them."""
        _, ec2 = _backends()
        group = group if group is not None else self._group()
        subnets = [s for s in (group.vpc_zone_identifier or "").split(",") if s]
        return [(ec2.get_subnet(subnet).availability_zone, subnet) for subnet in subnets]

    def zone_of(self, instance_id: str) -> str | None:
        _, ec2 = _backends()
        try:
            return ec2.get_instance(instance_id).placement.zone
        except Exception:
            return None

    def _balanced_zones(self, group: Any) -> list[tuple[str, str]]:
        """The group's zones, the one with the fewest instances counting toward capacity first (ties: as listed)."""
        zones = self.zones(group)
        counts = {zone: 0 for zone, _ in zones}
        for state in self.counted(group):
            zone = state.instance.placement.zone
            if zone in counts:
                counts[zone] += 1
        order = {zone: index for index, (zone, _) in enumerate(zones)}
        return sorted(zones, key=lambda zone_subnet: (counts[zone_subnet[0]], order[zone_subnet[0]]))

    def _placement(self, group: Any, purchase: str) -> tuple[tuple[str, str | None] | None, list[tuple[str, str]]]:
        """((subnet, instance type) to launch in, or None) and the (zone, subnet)s whose Spot launch failed first."""
        types = [o.get("InstanceType") for o in self._overrides(group) if o.get("InstanceType")] or [None]
        failed: list[tuple[str, str]] = []
        zones = self._balanced_zones(group) or [(f"{REGION}a", "")]
        for zone, subnet in zones:
            if purchase != SPOT:
                return (subnet, types[0]), failed
            instance_type = next((t for t in types if self.market.has_capacity(t, zone)), "")
            if instance_type != "":
                return (subnet, instance_type), failed
            failed.append((zone, subnet))
        return None, failed

    @staticmethod
    def _overrides(group: Any) -> list[dict[str, Any]]:
        overrides = (group.mixed_instances_policy or {}).get("LaunchTemplate", {}).get("Overrides") or []
        return [o for o in overrides if isinstance(o, dict)]  # moto keeps a padded template list's empty entries

    def _unbalanced_first_instances(self, group: Any) -> list[Any]:
        """The first instances beyond their zone's share (moto launched every one in the first subnet)."""
        zones = [zone for zone, _ in self.zones(group)]
        if len(set(zones)) < 2:
            return []
        share = -(-len(group.instance_states) // len(zones))  # ceil: no zone holds more
        counts: dict[str, int] = {}
        misplaced = []
        for state in group.instance_states:
            zone = state.instance.placement.zone
            counts[zone] = counts.get(zone, 0) + 1
            if counts[zone] > share:
                misplaced.append(state)
        return misplaced

    def _launch_extra(self, group: Any) -> str | None:
        """One instance above desired capacity (a replacement launched before its predecessor goes)."""
        before = {s.instance.id for s in group.instance_states}
        group.replace_autoscaling_group_instances(1, group.get_propagated_tags())
        return next((s.instance.id for s in group.instance_states if s.instance.id not in before), None)

    def _describe_instance(self, group: Any, instance: Any, purchase: str, instance_type: str | None = None) -> None:
        overrides = self._overrides(group)
        chosen = instance_type or (overrides[0].get("InstanceType") if overrides else None)
        if chosen:
            # A price-capacity-optimized choice: the first type listed with capacity where the instance launches.
            instance.instance_type = chosen
        instance.lifecycle = SPOT if purchase == SPOT else None
        state = self._state(group, instance.id)
        if state is not None:
            state.instance_type = instance.instance_type

    def _launched(self, group: Any, state: Any) -> None:
        instance_id = state.instance.id
        hook = self._hook(group, LAUNCHING)
        self.booted.append(instance_id)
        if hook is None:
            state.lifecycle_state = "InService"
            self._say(f"{instance_id} launched ({self.purchase[instance_id]}), InService (no hook)")
            self._in_service(group, instance_id)
            return
        state.lifecycle_state = "Pending:Wait"
        action = self.hooks.open(group.name, hook.name, instance_id, LAUNCHING)
        self._hold(action, float(hook.heartbeat_timeout), hook.default_result)
        self.events.append(lifecycle_event(group.name, hook.name, instance_id, LAUNCHING, action.token))
        self._say(f"{instance_id} launched ({self.purchase[instance_id]}), Pending:Wait")

    def _launch_failed(self, group: Any, zone: str, subnet: str, retried: bool = False) -> None:
        """A Spot launch failed in ``zone`` for want of capacity: the event AWS emits; without ``retried`` (another
        zone took the launch) the group waits LAUNCH_RETRY_SECONDS (or a policy change) before trying again."""
        now = self.clock.now()
        if not retried:
            self._failed_launch_at = now
            self._failed_with_base = self._on_demand_base(group)
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self.events.append(
            aws_event(
                "launch-unsuccessful-spot-capacity",
                detail={
                    "AutoScalingGroupName": group.name,
                    "StatusMessage": NO_SPOT_CAPACITY,
                    "Description": f"Launching a new EC2 instance.  Status Reason: {NO_SPOT_CAPACITY}",
                    "Details": {"Subnet ID": subnet, "Availability Zone": zone},
                    "StartTime": stamp,
                    "EndTime": stamp,
                    "Cause": (
                        f"At {stamp} an instance was started in response to a difference between desired and actual "
                        f"capacity, increasing the capacity from {len(self.counted(group))} to "
                        f"{group.desired_capacity}."
                    ),
                },
                resources=[group.arn],
                at=now,
            )
        )
        self._say(
            f"Spot launch failed in {zone}: InsufficientInstanceCapacity"
            + ("; the group launches in another zone" if retried else "")
        )

    # lifecycle actions -----------------------------------------------------------------------------
    def _hold(self, action: LifecycleAction, timeout: float, default_result: str, reason: str = "") -> None:
        self._holds[action.token] = _Hold(action, self.clock.now() + timeout, timeout, default_result, reason)

    def _on_action(self, what: str, action: LifecycleAction) -> None:
        with self._lock:
            hold = self._holds.get(action.token)
            if hold is None:
                return
            if what == "heartbeat":
                hold.deadline = self.clock.now() + hold.timeout
                return
            del self._holds[action.token]
            group = self._group()
            if action.transition == LAUNCHING:
                self._finish_launch(group, action.instance_id, action.result or "ABANDON")
            else:
                self._finish_termination(group, action.instance_id, action.result or "CONTINUE", hold.reason)

    def _finish_launch(self, group: Any, instance_id: str, result: str) -> None:
        state = self._state(group, instance_id)
        if state is None:
            return
        if result == "CONTINUE":
            state.lifecycle_state = "InService"
            self._say(f"{instance_id} InService (launch hook CONTINUE)")
            self._in_service(group, instance_id)
            return
        self._say(f"{instance_id} launch ABANDONed: terminated, group retries")
        refresh = self._active_refresh()
        if refresh is not None and refresh.replacement == instance_id:
            self._end_refresh(refresh, "Failed", f"launch of {instance_id} was abandoned by its lifecycle hook")
        self._remove(group, state)
        self.set_desired(group, group.desired_capacity)

    def _in_service(self, group: Any, instance_id: str) -> None:
        """A replacement launched ahead of its predecessor is in service: the predecessor goes now."""
        old = self._replacing.get(instance_id)
        if old is None or self._state(group, old) is None:
            return
        refresh = self._active_refresh()
        why = "instance refresh" if refresh and refresh.replacement == instance_id else "Capacity Rebalancing"
        if instance_id in self._level_swaps:
            why = "On-Demand level adjusted"
        self.begin_termination(group, old, f"{why}: replacement InService")

    def terminate_in_group(self, group: Any, instance_id: str, should_decrement: bool) -> Any:
        """TerminateInstanceInAutoScalingGroup, as AWS answers it."""
        from moto.autoscaling.models import TerminateInstanceActivity

        with self._lock:
            state = self._state(group, instance_id)
            if state is None or not (state.lifecycle_state == "InService" or state.lifecycle_state in PENDING_STATES):
                where = state.lifecycle_state if state is not None else "not in the group"
                raise _validation_error(f"The instance {instance_id} is not in a state to be terminated ({where}).")
            original_size = group.desired_capacity
            if should_decrement:
                if group.desired_capacity - 1 < group.min_size:
                    raise _validation_error(
                        f"Currently, desiredSize equals minSize ({group.min_size}). Terminating instance without "
                        "replacement will violate group's min size constraint. Either set "
                        "shouldDecrementDesiredCapacity flag to false or lower group's min size."
                    )
                group.desired_capacity -= 1
            self.begin_termination(group, instance_id, "terminate API call")
            return TerminateInstanceActivity(state.instance, original_size)

    def begin_termination(self, group: Any, instance_id: str, reason: str) -> None:
        """The instance leaves: Terminating:Wait and the terminate hook, or straight out without one."""
        with self._lock:
            state = self._state(group, instance_id)
            if state is None or state.lifecycle_state.startswith("Terminating"):
                return
            for token, hold in list(self._holds.items()):
                # A launch still waiting for its hook ends with the instance.
                if hold.action.instance_id == instance_id and hold.action.transition == LAUNCHING:
                    del self._holds[token]
                    self.hooks.expire(token, "ABANDON")
            hook = self._hook(group, TERMINATING)
            if hook is None:
                self._say(f"{instance_id} terminating ({reason}, no hook)")
                self._finish_termination(group, instance_id, "", reason)
                return
            state.lifecycle_state = "Terminating:Wait"
            action = self.hooks.open(group.name, hook.name, instance_id, TERMINATING)
            self._hold(action, float(hook.heartbeat_timeout), hook.default_result, reason)
            self.events.append(lifecycle_event(group.name, hook.name, instance_id, TERMINATING, action.token))
            self._say(f"{instance_id} Terminating:Wait ({reason})")

    def _finish_termination(self, group: Any, instance_id: str, result: str, reason: str) -> None:
        state = self._state(group, instance_id)
        if state is None:
            return
        self._remove(group, state)
        self._say(f"{instance_id} terminated" + (f" (terminate hook {result})" if result else ""))
        refresh = self._active_refresh()
        if refresh is not None and instance_id in refresh.to_replace and instance_id not in refresh.replaced:
            refresh.replaced.append(instance_id)
            refresh.replacement = None
            self._advance_refresh(group, refresh)
        # The group replaces it only now, and only if it is below desired capacity.
        if len(self.counted(group)) < (group.desired_capacity or 0):
            self.set_desired(group, group.desired_capacity)

    def _remove(self, group: Any, state: Any) -> None:
        _, ec2 = _backends()
        group.instance_states = [s for s in group.instance_states if s is not state]
        self._replacing = {new: old for new, old in self._replacing.items() if state.instance.id not in (new, old)}
        refresh = self._active_refresh()
        if refresh is not None and refresh.replacement == state.instance.id:
            refresh.replacement = None  # its replacement died before it served: the refresh launches another
        instance = state.instance
        if instance.state not in ("shutting-down", "terminated"):
            ec2.terminate_instances([instance.id])
        _disassociate_addresses(ec2, instance.id)
        self.gone.append(instance.id)

    # what EC2 and the Spot service do ----------------------------------------------------------------
    def reclaim(self, instance_id: str) -> None:
        """Spot takes the instance back (two minutes after its warning): EC2 terminates it, the group notices."""
        self.terminated_outside(instance_id, "by EC2 (Spot reclaim)", "Spot reclaimed it")

    def terminated_outside(self, instance_id: str, by: str, reason: str) -> None:
        """EC2 terminates the instance outside the group (Spot, or someone by hand); the group notices."""
        with self._lock:
            _, ec2 = _backends()
            instance = ec2.get_instance(instance_id)
            if instance.state != "terminated":
                ec2.terminate_instances([instance_id])
            _disassociate_addresses(ec2, instance_id)
            self.gone.append(instance_id)
            self._say(f"{instance_id} terminated {by}")
            group = self._group()
            if self._state(group, instance_id) is not None:
                self.begin_termination(group, instance_id, reason)

    def rebalance_recommendation(self, instance_id: str) -> None:
        """With Capacity Rebalancing on, the group launches a replacement for an instance at elevated risk."""
        with self._lock:
            group = self._group()
            state = self._state(group, instance_id)
            if not group.capacity_rebalance or state is None or state.lifecycle_state != "InService":
                return
            if instance_id in self._replacing.values():
                return
            self._say(f"Capacity Rebalancing replaces {instance_id}")
            new = self._launch_extra(group)
            if new is not None:
                self._replacing[new] = instance_id

    def tick(self) -> None:
        """Time passed: expire lifecycle actions past their heartbeat timeout; retry failed launches."""
        now = self.clock.now()
        with self._lock:
            for token, hold in list(self._holds.items()):
                if now >= hold.deadline and self.hooks.expire(token, hold.default_result):
                    self._say(
                        f"{hold.action.instance_id}: {hold.action.hook} timed out, {hold.default_result} by default"
                    )
            group = self._group()
            if (
                self._failed_launch_at is not None
                and (
                    now - self._failed_launch_at >= LAUNCH_RETRY_SECONDS
                    or self._on_demand_base(group) != self._failed_with_base
                )
                and len(self.counted(group)) < (group.desired_capacity or 0)
            ):
                self._failed_launch_at = None
                self.set_desired(group, group.desired_capacity)
            # SetInstanceHealth Unhealthy (spotkeeper's health check): "Amazon EC2 Auto Scaling terminates and
            # replaces the unhealthy instance" (API reference, SetInstanceHealth); moto only records the status.
            # No instance maintenance policy: terminate first, then launch.
            for state in list(group.instance_states):
                if state.lifecycle_state == "InService" and getattr(state, "health_status", "") == "Unhealthy":
                    self.begin_termination(group, state.instance.id, "marked Unhealthy")
            refresh = self._active_refresh()
            if refresh is not None:
                self._advance_refresh(group, refresh)
            else:
                self._adjust_on_demand_level(group)

    def _adjust_on_demand_level(self, group: Any) -> None:
        """Replace one instance of the purchase option the group has too many of (see the module docstring)."""
        distribution = (group.mixed_instances_policy or {}).get("InstancesDistribution", {})
        counted = self.counted(group)
        desired = int(group.desired_capacity or 0)
        if not group.mixed_instances_policy or len(counted) != desired:
            return
        if any(s.lifecycle_state != "InService" for s in counted) or self._level_swaps & set(self._replacing):
            return  # launching or replacing already: one at a time
        now = self.clock.now()
        if self._level_tried_at is not None and now - self._level_tried_at < LAUNCH_RETRY_SECONDS:
            return
        base = min(self._on_demand_base(group), desired)
        above = int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100))
        wanted = base + -(-(desired - base) * above // 100)  # AWS rounds up in favour of On-Demand
        on_demand = [s for s in counted if self.purchase.get(s.instance.id) == ON_DEMAND]
        spot = [s for s in counted if self.purchase.get(s.instance.id) == SPOT]
        surplus = on_demand if len(on_demand) > wanted else spot if len(on_demand) < wanted else []
        replaced = {old for old in self._replacing.values()}
        candidates = sorted((s for s in surplus if s.instance.id not in replaced), key=lambda s: s.instance.launch_time)
        if not candidates:
            return
        old = candidates[0].instance.id
        self._say(f"On-Demand level {len(on_demand)} -> {wanted}: {old} ({self.purchase.get(old)}) is replaced")
        new = self._launch_extra(group)
        if new is None:
            self._level_tried_at = now  # the launch failed (reported); Auto Scaling tries again
            return
        self._level_tried_at = None
        self._replacing[new] = old
        self._level_swaps.add(new)

    # instance refresh ----------------------------------------------------------------------------------
    def answer_refreshes_on(self, autoscaling_client: Any) -> None:
        answer_locally(autoscaling_client, "StartInstanceRefresh", self._start_refresh)
        answer_locally(autoscaling_client, "DescribeInstanceRefreshes", self._describe_refreshes)
        answer_locally(autoscaling_client, "CancelInstanceRefresh", self._cancel_refresh)

    def _active_refresh(self) -> _Refresh | None:
        return next((r for r in self.refreshes if r.active), None)

    def _start_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "StartInstanceRefresh"
        self.refresh_calls.append(dict(params))
        if params.get("AutoScalingGroupName") != self.group_name:
            raise aws_error(
                operation, "ValidationError", f"AutoScalingGroup name not found - {params.get('AutoScalingGroupName')}"
            )
        preferences = dict(params.get("Preferences") or {})
        low, high = preferences.get("MinHealthyPercentage", 90), preferences.get("MaxHealthyPercentage")
        if not 0 <= low <= 100:
            raise aws_error(operation, "ValidationError", "MinHealthyPercentage must be 0-100")
        if high is not None and "MinHealthyPercentage" not in preferences:
            raise aws_error(operation, "ValidationError", "MinHealthyPercentage is required with MaxHealthyPercentage")
        if high is not None and (not 100 <= high <= 200 or high - low > 100):
            raise aws_error(
                operation,
                "ValidationError",
                "MaxHealthyPercentage must be 100-200 and at most 100 above MinHealthyPercentage",
            )
        if low < 100:
            raise aws_error(operation, "ValidationError", "the drill plays only launch-before-terminate refreshes")
        with self._lock:
            if self._active_refresh() is not None:
                raise aws_error(
                    operation,
                    "InstanceRefreshInProgress",
                    "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.",
                )
            group = self._group()
            refresh = _Refresh(
                refresh_id=str(uuid.uuid4()),
                preferences=preferences,
                started_at=self.clock.now(),
                to_replace=[s.instance.id for s in self.counted(group) if s.lifecycle_state == "InService"],
            )
            self.refreshes.insert(0, refresh)
            self._say(f"instance refresh replaces {', '.join(refresh.to_replace) or 'nothing'}")
        return {"InstanceRefreshId": refresh.refresh_id}

    def _describe_refreshes(self, params: dict[str, Any]) -> dict[str, Any]:
        wanted = set(params.get("InstanceRefreshIds") or [])
        with self._lock:
            found = [
                r.describe(self.group_name)
                for r in self.refreshes
                if params.get("AutoScalingGroupName") == self.group_name and (not wanted or r.refresh_id in wanted)
            ]
        return {"InstanceRefreshes": found}

    def _cancel_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            refresh = self._active_refresh() if params.get("AutoScalingGroupName") == self.group_name else None
            if refresh is None:
                raise aws_error(
                    "CancelInstanceRefresh",
                    "ActiveInstanceRefreshNotFound",
                    "No in progress or pending Instance Refresh found",
                )
            self._end_refresh(refresh, "Cancelled", "cancelled")
        return {"InstanceRefreshId": refresh.refresh_id}

    def _end_refresh(self, refresh: _Refresh, status: str, reason: str = "") -> None:
        refresh.status, refresh.status_reason, refresh.ended_at = status, reason, self.clock.now()
        self._say(f"instance refresh {status.lower()}{': ' + reason if reason and status != 'Successful' else ''}")

    def _advance_refresh(self, group: Any, refresh: _Refresh) -> None:
        """Launch the next replacement when nothing is in flight; a failed launch is tried again later."""
        refresh.status = "InProgress"
        if refresh.replacement is not None:
            return  # waiting for it to be InService, then for its predecessor to terminate
        remaining = [i for i in refresh.to_replace if i not in refresh.replaced]
        for old in list(remaining):
            if self._state(group, old) is None:
                refresh.replaced.append(old)  # gone meanwhile: nothing to replace
                remaining.remove(old)
        if not remaining:
            self._end_refresh(refresh, "Successful")
            return
        now = self.clock.now()
        if refresh.tried_at is not None and now - refresh.tried_at < LAUNCH_RETRY_SECONDS:
            return
        refresh.tried_at = now
        new = self._launch_extra(group)
        if new is not None:
            refresh.replacement = new
            self._replacing[new] = remaining[0]

    # what the drill reads ------------------------------------------------------------------------------
    def take(self) -> tuple[list[dict[str, Any]], list[str], list[str], list[tuple[float, str]]]:
        with self._lock:
            taken = (self.events, self.booted, self.gone, self.log)
            self.events, self.booted, self.gone, self.log = [], [], [], []
        return taken

    def desired(self) -> int:
        return int(self._group().desired_capacity or 0)

    def members(self) -> list[tuple[str, str]]:
        return [(s.instance.id, s.lifecycle_state) for s in self._group().instance_states]


def _disassociate_addresses(ec2: Any, instance_id: str) -> None:
    """EC2 takes an Elastic IP off an instance when the instance terminates."""
    for address in ec2.describe_addresses():
        if address.instance is not None and address.instance.id == instance_id:
            ec2.disassociate_address(address=address.public_ip)
