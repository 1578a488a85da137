"""The Spot market and instance refreshes for the embedded AWS, where moto has neither.

moto 5.2.5 does not implement ``GetSpotPlacementScores``, ``StartInstanceRefresh``,
``DescribeInstanceRefreshes`` or ``CancelInstanceRefresh``, and its ``DescribeSpotPriceHistory`` answers a
fixed price of 0.00001 from 2006. This module stands in for that part of AWS, on a boto3 client, the way
``lifecycle_hooks.LifecycleHooks`` does for lifecycle actions:

* ``SpotMarketStandIn`` answers ``GetSpotPlacementScores`` (per-zone scores 1-10, best first, at most
  MaxResults, validated like AWS) and ``DescribeSpotPriceHistory`` (the price in effect for each instance
  type and zone, filtered by type, zone and product description) from a market the test or drill scripts:
  ``set_score``, ``set_price``, ``withhold_scores`` (scores not permitted: an ``UnauthorizedOperation``).
* ``InstanceRefreshStandIn`` answers the three instance-refresh calls (one active refresh per group:
  ``InstanceRefreshInProgress``; MinHealthyPercentage 0-100, MaxHealthyPercentage 100-200, at most 100
  apart) and carries an active refresh out the way Auto Scaling does with MinHealthyPercentage 100: per
  instance it launches the replacement, which waits in ``Pending:Wait`` until its launch lifecycle action
  is completed; only after CONTINUE does the old instance go to ``Terminating:Wait``, its terminate action
  is delivered, and once that completes it is terminated. ``DescribeAutoScalingGroups`` answers show those
  wait states, which moto, launching and terminating at once, never has. Every step is kept in
  ``timeline`` with the instances in service at that moment.

Used by the tests and the local drill, never by the Lambda code.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spotkeeper_local.lifecycle_hooks import (
    LAUNCHING,
    TERMINATING,
    LifecycleHooks,
    answer_locally,
    aws_error,
    lifecycle_event,
)

SCORE_RANGE = range(1, 11)
ACTIVE = ("Pending", "InProgress", "Cancelling")


# --------------------------------------------------------------------------------------------------
# Spot placement scores and Spot prices
# --------------------------------------------------------------------------------------------------
@dataclass
class _Price:
    usd_per_hour: float
    since: float


@dataclass
class SpotMarketStandIn:
    """A scripted Spot market for one region: a score per zone, a price per instance type and zone."""

    default_score: int = 1
    clock: Callable[[], float] = time.time
    scores: dict[str, int] = field(default_factory=dict)  # zone id -> score
    prices: dict[tuple[str, str], _Price] = field(default_factory=dict)  # (instance type, zone name) -> price
    withheld: str | None = None
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    region: str = ""
    zones: dict[str, str] = field(default_factory=dict)  # zone id -> zone name, learnt at install
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # scripting ------------------------------------------------------------------------------------
    def set_score(self, score: int, zone_ids: list[str] | None = None) -> None:
        """Score ``zone_ids`` (every zone of the region when None) from now on."""
        if score not in SCORE_RANGE:
            raise ValueError(f"a Spot placement score is 1-10, got {score}")
        with self._lock:
            if zone_ids is None:
                self.default_score = score
                self.scores.clear()
            else:
                self.scores.update(dict.fromkeys(zone_ids, score))

    def set_price(self, instance_type: str, usd_per_hour: float, zones: list[str] | None = None) -> None:
        """The Spot price of ``instance_type`` in ``zones`` (zone names; every zone when None) from now on."""
        if usd_per_hour <= 0:
            raise ValueError("a Spot price is positive")
        with self._lock:
            for zone in zones or list(self.zones.values()):
                self.prices[(instance_type, zone)] = _Price(usd_per_hour, self.clock())

    def withhold_scores(self, code: str | None = "UnauthorizedOperation") -> None:
        """Make GetSpotPlacementScores fail with ``code`` (None gives scores again)."""
        self.withheld = code

    def score_calls(self) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == "GetSpotPlacementScores"]

    # the two API calls ----------------------------------------------------------------------------
    def get_spot_placement_scores(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "GetSpotPlacementScores"
        with self._lock:
            self.calls.append((operation, dict(params)))
        if self.withheld:
            raise aws_error(operation, self.withheld, "You are not authorized to perform this operation.")
        types, requirements = params.get("InstanceTypes"), params.get("InstanceRequirementsWithMetadata")
        if bool(types) == bool(requirements):
            raise aws_error(
                operation, "InvalidParameterCombination", "Specify InstanceTypes or InstanceRequirementsWithMetadata"
            )
        capacity = params.get("TargetCapacity")
        if not isinstance(capacity, int) or not 1 <= capacity <= 2_000_000_000:
            raise aws_error(operation, "InvalidParameterValue", "TargetCapacity must be 1-2000000000")
        max_results = params.get("MaxResults", 1000)
        if not 10 <= max_results <= 1000:
            raise aws_error(operation, "InvalidParameterValue", "MaxResults must be 10-1000")
        regions = params.get("RegionNames") or [self.region]
        if self.region not in regions:
            return {"SpotPlacementScores": []}
        with self._lock:
            if params.get("SingleAvailabilityZone"):
                scored = [
                    {"Region": self.region, "AvailabilityZoneId": zone_id, "Score": self._score(zone_id)}
                    for zone_id in sorted(self.zones)
                ]
            else:
                best = max((self._score(zone_id) for zone_id in self.zones), default=self.default_score)
                scored = [{"Region": self.region, "Score": best}]
        scored.sort(key=lambda s: -s["Score"])
        return {"SpotPlacementScores": scored[:max_results]}

    def _score(self, zone_id: str) -> int:
        return self.scores.get(zone_id, self.default_score)

    def describe_spot_price_history(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "DescribeSpotPriceHistory"
        with self._lock:
            self.calls.append((operation, dict(params)))
            prices = dict(self.prices)
        types = set(params.get("InstanceTypes") or [])
        products = set(params.get("ProductDescriptions") or [])
        zones: set[str] = set()
        for entry in params.get("Filters") or []:
            if entry.get("Name") == "availability-zone":
                zones.update(entry.get("Values", []))
            elif entry.get("Name") == "instance-type":
                types.update(entry.get("Values", []))
        if params.get("AvailabilityZone"):
            zones.add(params["AvailabilityZone"])
        end = params.get("EndTime")
        until = end.timestamp() if isinstance(end, datetime) else self.clock()
        history = [
            {
                "AvailabilityZone": zone,
                "InstanceType": instance_type,
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": f"{price.usd_per_hour:.6f}",
                "Timestamp": datetime.fromtimestamp(price.since, UTC),
            }
            for (instance_type, zone), price in sorted(prices.items())
            if (not types or instance_type in types)
            and (not zones or zone in zones)
            and (not products or "Linux/UNIX" in products)
            and price.since <= until
        ]
        return {"SpotPriceHistory": history, "NextToken": ""}

    def install(self, ec2_client: Any) -> None:
        """Answer the two calls on this EC2 client; learn the region's zones from it first."""
        self.region = ec2_client.meta.region_name
        zones = ec2_client.describe_availability_zones()["AvailabilityZones"]
        self.zones = {zone["ZoneId"]: zone["ZoneName"] for zone in zones}
        answer_locally(ec2_client, "GetSpotPlacementScores", self.get_spot_placement_scores, service="ec2")
        answer_locally(ec2_client, "DescribeSpotPriceHistory", self.describe_spot_price_history, service="ec2")


# --------------------------------------------------------------------------------------------------
# Instance refresh
# --------------------------------------------------------------------------------------------------
def describe_refresh(refresh: Any, group: str) -> dict[str, Any]:
    """An instance refresh as DescribeInstanceRefreshes answers it, for every stand-in that runs refreshes."""
    done = len(refresh.replaced)
    total = max(1, len(refresh.to_replace))
    described: dict[str, Any] = {
        "InstanceRefreshId": refresh.refresh_id,
        "AutoScalingGroupName": group,
        "Status": refresh.status,
        "StatusReason": refresh.status_reason,
        "StartTime": datetime.fromtimestamp(refresh.started_at, UTC),
        "PercentageComplete": 100 if refresh.status == "Successful" else int(100 * done / total),
        "InstancesToUpdate": len(refresh.to_replace) - done,
        "Preferences": refresh.preferences,
        "Strategy": "Rolling",
    }
    if refresh.ended_at is not None:
        described["EndTime"] = datetime.fromtimestamp(refresh.ended_at, UTC)
    return described


@dataclass
class Refresh:
    refresh_id: str
    group: str
    preferences: dict[str, Any]
    started_at: float
    to_replace: list[str]
    status: str = "Pending"
    status_reason: str = ""
    ended_at: float | None = None
    replaced: list[tuple[str, str]] = field(default_factory=list)  # (old, new)
    launching: str | None = None  # the replacement waiting for its launch hook
    launch_token: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def describe(self) -> dict[str, Any]:
        return describe_refresh(self, self.group)


@dataclass
class Snapshot:
    step: str
    in_service: tuple[str, ...]
    states: dict[str, str]


class InstanceRefreshStandIn:
    """Instance refreshes of the embedded AWS, carried out launch-before-terminate on request."""

    def __init__(self, hooks: LifecycleHooks, clock: Callable[[], float] = time.time) -> None:
        self.hooks = hooks
        self.clock = clock
        self.refreshes: list[Refresh] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.timeline: list[Snapshot] = []
        # Auto Scaling's lifecycle states where moto's differ: Pending:Wait and Terminating:Wait.
        self.waiting: dict[str, str] = {}
        self.purchase_options: dict[str, str] = {}  # instance id -> "spot" / "on-demand"
        self._client: Any = None
        self._lock = threading.RLock()

    # the API calls --------------------------------------------------------------------------------
    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "StartInstanceRefresh"
        with self._lock:
            self.calls.append((operation, dict(params)))
            group = params.get("AutoScalingGroupName", "")
            described = self._group(group, operation)
            if any(r.active for r in self.refreshes if r.group == group):
                raise aws_error(
                    operation,
                    "InstanceRefreshInProgress",
                    "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.",
                )
            preferences = dict(params.get("Preferences") or {})
            self._validate(preferences, operation)
            refresh = Refresh(
                refresh_id=str(uuid.uuid4()),
                group=group,
                preferences=preferences,
                started_at=self.clock(),
                to_replace=[i["InstanceId"] for i in described["Instances"] if i["LifecycleState"] == "InService"],
            )
            self.refreshes.insert(0, refresh)
        return {"InstanceRefreshId": refresh.refresh_id}

    @staticmethod
    def _validate(preferences: dict[str, Any], operation: str) -> None:
        low = preferences.get("MinHealthyPercentage", 90)
        high = preferences.get("MaxHealthyPercentage")
        if not 0 <= low <= 100:
            raise aws_error(operation, "ValidationError", "MinHealthyPercentage must be 0-100")
        if high is not None:
            if "MinHealthyPercentage" not in preferences:
                raise aws_error(
                    operation, "ValidationError", "MinHealthyPercentage is required with MaxHealthyPercentage"
                )
            if not 100 <= high <= 200 or high - low > 100:
                raise aws_error(
                    operation,
                    "ValidationError",
                    "MaxHealthyPercentage must be 100-200 and at most 100 above MinHealthyPercentage",
                )

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.calls.append(("DescribeInstanceRefreshes", dict(params)))
            group = params.get("AutoScalingGroupName", "")
            wanted = set(params.get("InstanceRefreshIds") or [])
            found = [
                r.describe() for r in self.refreshes if r.group == group and (not wanted or r.refresh_id in wanted)
            ]
        return {"InstanceRefreshes": found}

    def cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        operation = "CancelInstanceRefresh"
        with self._lock:
            self.calls.append((operation, dict(params)))
            active = next(
                (r for r in self.refreshes if r.group == params.get("AutoScalingGroupName") and r.active), None
            )
            if active is None:
                raise aws_error(
                    operation, "ActiveInstanceRefreshNotFound", "No in progress or pending Instance Refresh found"
                )
            # Instances already replaced stay replaced; a launch waiting for its hook is left to finish.
            active.status, active.ended_at = "Cancelled", self.clock()
        return {"InstanceRefreshId": active.refresh_id}

    def started(self) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == "StartInstanceRefresh"]

    def _group(self, name: str, operation: str) -> dict[str, Any]:
        groups = self._client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        if not groups:
            raise aws_error(operation, "ValidationError", f"AutoScalingGroup name not found - {name}")
        return groups[0]

    def _show_wait_states(self, parsed: dict[str, Any], **_: Any) -> None:
        for group in parsed.get("AutoScalingGroups", []):
            for instance in group.get("Instances", []):
                state = self.waiting.get(instance["InstanceId"])
                if state is not None:
                    instance["LifecycleState"] = state

    def install(self, autoscaling_client: Any) -> None:
        self._client = autoscaling_client
        answer_locally(autoscaling_client, "StartInstanceRefresh", self.start, service="auto-scaling")
        answer_locally(autoscaling_client, "DescribeInstanceRefreshes", self.describe, service="auto-scaling")
        answer_locally(autoscaling_client, "CancelInstanceRefresh", self.cancel, service="auto-scaling")
        autoscaling_client.meta.events.register(
            "after-call.auto-scaling.DescribeAutoScalingGroups", self._show_wait_states
        )

    # carrying a refresh out -------------------------------------------------------------------------
    def active(self, group: str) -> Refresh | None:
        return next((r for r in self.refreshes if r.group == group and r.active), None)

    def advance(
        self,
        group: str,
        deliver: Callable[[dict[str, Any]], Any],
        on_launch: Callable[[str], None] | None = None,
        on_terminated: Callable[[str], None] | None = None,
    ) -> str:
        """Carry the group's active refresh as far as it can go now; returns its status.

        ``deliver`` receives each lifecycle event as EventBridge would send it (the drill and the tests pass
        it to the lifecycle function); ``on_launch`` / ``on_terminated`` let the caller boot and stop the
        TGI of an instance. A launch whose hook is still pending (handed over to the scheduled probe) stops
        the refresh there until the next call, as Auto Scaling waits for the hook.
        """
        refresh = self.active(group)
        if refresh is None:
            return self.refreshes[0].status if self.refreshes else "None"
        refresh.status = "InProgress"
        launch_hook, terminate_hook = self._hook_names(group)
        for old in list(refresh.to_replace[len(refresh.replaced) :]):
            if refresh.launching is None:
                self._launch_replacement(refresh, launch_hook, deliver, on_launch)
            new = refresh.launching
            assert new is not None
            result = self._result(refresh.launch_token)
            if result is None:
                self._snapshot(f"{new} waits for its launch hook")
                return refresh.status
            refresh.launching = None
            if result == "ABANDON":
                self.waiting.pop(new, None)
                self._client.terminate_instance_in_auto_scaling_group(
                    InstanceId=new, ShouldDecrementDesiredCapacity=True
                )
                if on_terminated:
                    on_terminated(new)
                refresh.status, refresh.ended_at = "Failed", self.clock()
                refresh.status_reason = f"launch of {new} was abandoned by its lifecycle hook"
                self._snapshot(f"{new} abandoned: refresh failed")
                return refresh.status
            self.waiting.pop(new, None)
            self._snapshot(f"{new} in service")
            self._retire(refresh.group, old, terminate_hook, deliver, on_terminated)
            refresh.replaced.append((old, new))
        refresh.status, refresh.ended_at = "Successful", self.clock()
        self._snapshot("refresh successful")
        return refresh.status

    def _launch_replacement(
        self,
        refresh: Refresh,
        hook: str,
        deliver: Callable[[dict[str, Any]], Any],
        on_launch: Callable[[str], None] | None,
    ) -> None:
        described = self._group(refresh.group, "StartInstanceRefresh")
        before = {i["InstanceId"] for i in described["Instances"]}
        self._client.set_desired_capacity(
            AutoScalingGroupName=refresh.group, DesiredCapacity=described["DesiredCapacity"] + 1, HonorCooldown=False
        )
        launched = sorted({i["InstanceId"] for i in self._group(refresh.group, "")["Instances"]} - before)
        if len(launched) != 1:
            raise RuntimeError(f"expected one replacement instance, the group launched {launched}")
        new = launched[0]
        self.purchase_options[new] = self._next_purchase_option(described, replacing=refresh.to_replace)
        self.waiting[new] = "Pending:Wait"
        self._snapshot(f"{new} launched ({self.purchase_options[new]})")
        if on_launch:
            on_launch(new)
        action = self.hooks.open(refresh.group, hook, new, LAUNCHING)
        refresh.launching, refresh.launch_token = new, action.token
        deliver(lifecycle_event(refresh.group, hook, new, LAUNCHING, action.token))

    def _next_purchase_option(self, described: dict[str, Any], replacing: list[str]) -> str:
        distribution = (described.get("MixedInstancesPolicy") or {}).get("InstancesDistribution", {})
        base = int(distribution.get("OnDemandBaseCapacity", 0))
        staying_on_demand = [
            i["InstanceId"]
            for i in described["Instances"]
            if i["InstanceId"] not in replacing and self.purchase_options.get(i["InstanceId"]) == "on-demand"
        ]
        return "on-demand" if len(staying_on_demand) < base else "spot"

    def _retire(
        self,
        group: str,
        old: str,
        hook: str,
        deliver: Callable[[dict[str, Any]], Any],
        on_terminated: Callable[[str], None] | None,
    ) -> None:
        self.waiting[old] = "Terminating:Wait"
        self._snapshot(f"{old} terminating")
        action = self.hooks.open(group, hook, old, TERMINATING)
        deliver(lifecycle_event(group, hook, old, TERMINATING, action.token))
        if self._result(action.token) is None:
            # Auto Scaling terminates at the heartbeat timeout (default result); the drill does not wait that long.
            self.hooks.complete(
                {
                    "LifecycleActionToken": action.token,
                    "LifecycleHookName": hook,
                    "InstanceId": old,
                    "LifecycleActionResult": "CONTINUE",
                }
            )
        self._client.terminate_instance_in_auto_scaling_group(InstanceId=old, ShouldDecrementDesiredCapacity=True)
        self.waiting.pop(old, None)
        if on_terminated:
            on_terminated(old)
        self._snapshot(f"{old} terminated")

    def _result(self, token: str | None) -> str | None:
        action = self.hooks.actions.get(token or "")
        return action.result if action else None

    def _hook_names(self, group: str) -> tuple[str, str]:
        hooks = self._client.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]
        by_transition = {h["LifecycleTransition"]: h["LifecycleHookName"] for h in hooks}
        if LAUNCHING not in by_transition or TERMINATING not in by_transition:
            raise RuntimeError(f"group {group} needs a launch and a terminate lifecycle hook for a refresh")
        return by_transition[LAUNCHING], by_transition[TERMINATING]

    def _snapshot(self, step: str) -> None:
        groups = {r.group for r in self.refreshes}
        states: dict[str, str] = {}
        for name in groups:
            for instance in self._group(name, "")["Instances"]:
                states[instance["InstanceId"]] = instance["LifecycleState"]  # wait states already applied
        in_service = tuple(sorted(i for i, state in states.items() if state == "InService"))
        self.timeline.append(Snapshot(step, in_service, states))
