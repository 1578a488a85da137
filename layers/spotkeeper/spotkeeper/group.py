"""The Auto Scaling group as spotkeeper sees it: one model for the fleet and for the capacity policy.

Plain values built from a DescribeAutoScalingGroups answer; the adapters (``fleet``, ``capacity_policy``) read
the group, ``logic/`` decides on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Instances that count as capacity: serving now or on their way to it.
ACTIVE_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed", "InService"})


class GroupNotFound(RuntimeError):
    pass


class NoMixedInstancesPolicy(RuntimeError):
    """The group launches from a plain launch template: there is no On-Demand base capacity to change."""


@dataclass(frozen=True)
class GroupInstance:
    instance_id: str
    lifecycle_state: str
    instance_type: str | None = None

    @property
    def active(self) -> bool:
        return self.lifecycle_state in ACTIVE_STATES


@dataclass(frozen=True)
class Group:
    name: str
    desired: int
    max_size: int
    capacity_rebalance: bool = False
    instances: tuple[GroupInstance, ...] = ()
    subnet_ids: tuple[str, ...] = ()
    mixed_instances_policy: dict[str, Any] | None = None
    # The policy's instance types, in the order of its overrides. Without overrides the launch template's own
    # type is the only one: ``CapacityPolicy.read`` asks EC2 for it, a plain describe leaves this empty.
    instance_types: tuple[str, ...] = ()

    def instance(self, instance_id: str) -> GroupInstance | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    @property
    def on_demand_base(self) -> int:
        distribution = (self.mixed_instances_policy or {}).get("InstancesDistribution", {})
        return int(distribution.get("OnDemandBaseCapacity", 0))

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> Group:
        policy = description.get("MixedInstancesPolicy")
        overrides = (policy or {}).get("LaunchTemplate", {}).get("Overrides", [])
        return cls(
            name=description["AutoScalingGroupName"],
            desired=int(description["DesiredCapacity"]),
            max_size=int(description["MaxSize"]),
            capacity_rebalance=bool(description.get("CapacityRebalance", False)),
            instances=tuple(
                GroupInstance(
                    instance_id=i["InstanceId"],
                    lifecycle_state=i["LifecycleState"],
                    instance_type=i.get("InstanceType"),
                )
                for i in description.get("Instances", [])
            ),
            subnet_ids=tuple(s for s in description.get("VPCZoneIdentifier", "").split(",") if s),
            mixed_instances_policy=policy,
            instance_types=tuple(o["InstanceType"] for o in overrides if o.get("InstanceType")),
        )
