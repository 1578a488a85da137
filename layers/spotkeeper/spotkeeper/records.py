"""What the state table records, as plain values: the endpoint, the instances spotkeeper knows, pending launches.

``state.StateStore`` reads and writes them; ``logic/`` decides on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPOT = "spot"
ON_DEMAND = "on-demand"


def _num(value: Any, default: float | None = None) -> float | None:
    if value is None:
        return default
    return float(value)


def fallback_count(item: dict[str, Any]) -> int:
    """The recorded fallback count; an item written before there was one counts 1 when its mode is on-demand."""
    if "on_demand_replicas" in item:
        return int(item["on_demand_replicas"])
    return 1 if item.get("mode") == ON_DEMAND else 0


@dataclass(frozen=True)
class Endpoint:
    group: str
    serving_instance_id: str | None = None
    serving_address: str | None = None
    serving_since: float | None = None
    mode: str = SPOT
    mode_since: float | None = None
    mode_reason: str | None = None
    version: int = 0
    first_served_at: float | None = None  # when an instance of this stack first served; never cleared
    alarm_state: str | None = None  # the endpoint-down alarm's newest recorded state (ALARM / OK / ...)
    alarm_at: float | None = None  # when the alarm entered that state
    # Replicas the dynamic fallback runs on On-Demand above the floor (mode is on-demand exactly when > 0).
    on_demand_replicas: int = 0

    @property
    def ever_served(self) -> bool:
        return self.first_served_at is not None or self.serving_since is not None

    @classmethod
    def from_item(cls, group: str, item: dict[str, Any] | None) -> Endpoint:
        if not item:
            return cls(group=group)
        return cls(
            group=group,
            serving_instance_id=item.get("serving_instance_id"),
            serving_address=item.get("serving_address"),
            serving_since=_num(item.get("serving_since")),
            mode=item.get("mode", SPOT),
            mode_since=_num(item.get("mode_since")),
            mode_reason=item.get("mode_reason"),
            version=int(item.get("version", 0)),
            first_served_at=_num(item.get("first_served_at")),
            alarm_state=item.get("alarm_state"),
            alarm_at=_num(item.get("alarm_at")),
            on_demand_replicas=fallback_count(item),
        )


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    doomed_at: float | None = None
    draining_since: float | None = None
    probe_failures: int = 0
    marked_unhealthy: bool = False  # failed the probes: marked Unhealthy in the group, or replaced beside it
    at_risk_since: float | None = None
    replacement: str | None = None  # how its replacement was started: scale-out, detach, group
    desired_before: int | None = None  # the group's desired capacity before a scale-out for it
    retired: bool = False
    probe_ok_at: float | None = None  # when a probe last found its TGI ready

    @classmethod
    def from_item(cls, instance_id: str, item: dict[str, Any] | None) -> InstanceRecord:
        item = item or {}
        return cls(
            instance_id=instance_id,
            doomed_at=_num(item.get("doomed_at")),
            draining_since=_num(item.get("draining_since")),
            probe_failures=int(item.get("probe_failures", 0)),
            marked_unhealthy=bool(item.get("marked_unhealthy", False)) or "unhealthy_at" in item,
            at_risk_since=_num(item.get("at_risk_since")),
            replacement=item.get("replacement"),
            desired_before=int(item["desired_before"]) if "desired_before" in item else None,
            retired=bool(item.get("retire_done", False)),
            probe_ok_at=_num(item.get("probe_ok_at")),
        )

    @property
    def doomed(self) -> bool:
        return self.doomed_at is not None


@dataclass(frozen=True)
class PendingLaunch:
    instance_id: str
    hook_name: str
    token: str
    started_at: float
    deadline: float
    status: str = "waiting"  # waiting | continued | abandoned (claimed by whoever decided)
    completed: bool = False  # the claimed outcome was carried out to the end

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> PendingLaunch:
        return cls(
            instance_id=item["instance_id"],
            hook_name=item["hook_name"],
            token=item["token"],
            started_at=float(item["started_at"]),
            deadline=float(item["deadline"]),
            status=item.get("status", "waiting"),
            completed=bool(item.get("completed", False)),
        )


# The ready set: one record per replica, moving one way only, ready -> warned -> gone. The rank makes every
# write monotonic, so a duplicate or an older event arriving late never brings a warned or gone replica back.
READY = "ready"
WARNED = "warned"
GONE = "gone"
REPLICA_RANK = {READY: 1, WARNED: 2, GONE: 3}


@dataclass(frozen=True)
class ReplicaFacts:
    """What EC2 says about a replica: where the gateway reaches it and what it runs on."""

    instance_id: str
    address: str
    availability_zone: str | None = None
    instance_type: str | None = None
    lifecycle: str = ON_DEMAND  # spot | on-demand


@dataclass(frozen=True)
class Replica:
    """One record of the ready set (``gone`` records stay as tombstones until their expiration)."""

    instance_id: str
    state: str
    since: float
    address: str | None = None
    availability_zone: str | None = None
    instance_type: str | None = None
    lifecycle: str | None = None
    reason: str | None = None

    @classmethod
    def from_item(cls, instance_id: str, item: dict[str, Any]) -> Replica:
        # Like the other records, read leniently: an item without a state is not routable (counted as gone).
        return cls(
            instance_id=instance_id,
            state=item.get("state", GONE),
            since=_num(item.get("since"), 0.0) or 0.0,
            address=item.get("address"),
            availability_zone=item.get("availability_zone"),
            instance_type=item.get("instance_type"),
            lifecycle=item.get("lifecycle"),
            reason=item.get("reason"),
        )

    @property
    def in_set(self) -> bool:
        """Ready or warned, and reachable: the gateway may route to it (a warned one only as a last resort)."""
        return self.state in (READY, WARNED) and bool(self.address)
