"""The group's purchase options: its MixedInstancesPolicy (Auto Scaling itself replaces instances to follow a change
of its On-Demand base, launch before terminate: ``logic/capacity.py``).

The policy is always read in full, changed in one field and written back in full. AWS merges a partial
MixedInstancesPolicy into the group's current one while moto replaces the whole policy with it; a full
policy means the same thing to both, and nothing depends on how a partial one would be merged. After the
write the policy is read back, so a write that did not take is an error (and the event is retried) rather
than a mode recorded on a wish.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code
from spotkeeper.fleet import describe_group
from spotkeeper.group import Group, NoMixedInstancesPolicy
from spotkeeper.observability import logger


class PolicyNotApplied(RuntimeError):
    """The group's policy read back after a write does not say what was written."""


def writable_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy as DescribeAutoScalingGroups returned it, in the form UpdateAutoScalingGroup accepts.

    Describe names a launch template by id *and* name; an update must name it by one of them. A Spot pool
    count is only valid with the lowest-price strategy.
    """
    writable = copy.deepcopy(policy)
    template = writable.get("LaunchTemplate", {})
    _one_template_name(template.get("LaunchTemplateSpecification"))
    for override in template.get("Overrides", []):
        _one_template_name(override.get("LaunchTemplateSpecification"))
    distribution = writable.get("InstancesDistribution", {})
    if distribution.get("SpotAllocationStrategy", "lowest-price") != "lowest-price":
        distribution.pop("SpotInstancePools", None)
    return writable


def _one_template_name(specification: dict[str, Any] | None) -> None:
    if specification and specification.get("LaunchTemplateId"):
        specification.pop("LaunchTemplateName", None)


class CapacityPolicy:
    """One Auto Scaling group's MixedInstancesPolicy."""

    def __init__(self, autoscaling: Any, ec2: Any, group_name: str) -> None:
        self._autoscaling = autoscaling
        self._ec2 = ec2
        self.group_name = group_name

    def read(self) -> Group:
        """The group, with its instance types resolved (from the launch template when there are no overrides)."""
        group = describe_group(self._autoscaling, self.group_name)
        if not group.mixed_instances_policy:
            raise NoMixedInstancesPolicy(
                f"group {self.group_name} has no MixedInstancesPolicy: spotkeeper cannot switch it between "
                "Spot and On-Demand"
            )
        if group.instance_types:
            return group
        return replace(group, instance_types=self._launch_template_type(group.mixed_instances_policy))

    def _launch_template_type(self, policy: dict[str, Any]) -> tuple[str, ...]:
        # No overrides (or attribute-based ones): the launch template's own instance type is the only one.
        specification = policy.get("LaunchTemplate", {}).get("LaunchTemplateSpecification", {})
        selector = (
            {"LaunchTemplateId": specification["LaunchTemplateId"]}
            if specification.get("LaunchTemplateId")
            else {"LaunchTemplateName": specification.get("LaunchTemplateName", "")}
        )
        versions = self._ec2.describe_launch_template_versions(
            **selector, Versions=[specification.get("Version") or "$Default"]
        )["LaunchTemplateVersions"]
        kind = versions[0].get("LaunchTemplateData", {}).get("InstanceType") if versions else None
        return (kind,) if kind else ()

    def set_on_demand_base(self, base: int) -> bool:
        """Give the group ``base`` On-Demand instances before any Spot. False when it already had that."""
        current = self.read()
        if current.on_demand_base == base:
            return False
        policy = writable_policy(current.mixed_instances_policy or {})
        policy.setdefault("InstancesDistribution", {})["OnDemandBaseCapacity"] = base
        self._autoscaling.update_auto_scaling_group(AutoScalingGroupName=self.group_name, MixedInstancesPolicy=policy)
        applied = self.read()
        if applied.on_demand_base != base:
            raise PolicyNotApplied(
                f"group {self.group_name}: OnDemandBaseCapacity is {applied.on_demand_base} after writing {base}"
            )
        logger.info(
            "on-demand base capacity changed",
            extra={"group": self.group_name, "from": current.on_demand_base, "to": base},
        )
        return True

    def raise_on_demand_base(self, base: int) -> bool:
        """At least ``base`` On-Demand instances: a fallback never lowers what a racing one raised further."""
        if self.read().on_demand_base >= base:
            return False
        return self.set_on_demand_base(base)

    def spot_instance_ids(self, instance_ids: list[str]) -> set[str]:
        """Which of ``instance_ids`` EC2 runs as Spot (DescribeInstances' InstanceLifecycle; Auto Scaling's own
        description does not say). An instance EC2 no longer knows is not Spot capacity."""
        spot: set[str] = set()
        for start in range(0, len(instance_ids), 100):
            try:
                pages = self._ec2.get_paginator("describe_instances").paginate(
                    InstanceIds=instance_ids[start : start + 100]
                )
                for page in pages:
                    for reservation in page["Reservations"]:
                        spot.update(
                            i["InstanceId"] for i in reservation["Instances"] if i.get("InstanceLifecycle") == "spot"
                        )
            except ClientError as error:
                if error_code(error) != "InvalidInstanceID.NotFound":
                    raise
                # One of them vanished between the two reads: ask one by one.
                for instance_id in instance_ids[start : start + 100]:
                    spot |= self._spot_one(instance_id)
        return spot

    def _spot_one(self, instance_id: str) -> set[str]:
        try:
            reservations = self._ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as error:
            if error_code(error) == "InvalidInstanceID.NotFound":
                return set()
            raise
        return {i["InstanceId"] for r in reservations for i in r["Instances"] if i.get("InstanceLifecycle") == "spot"}

    def set_desired(self, desired: int) -> None:
        self._autoscaling.set_desired_capacity(
            AutoScalingGroupName=self.group_name, DesiredCapacity=desired, HonorCooldown=False
        )

    # lifecycle hooks --------------------------------------------------------------------------
    def lifecycle_hooks(self) -> dict[str, str]:
        """The group's lifecycle hooks: name -> transition."""
        hooks = self._autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=self.group_name)["LifecycleHooks"]
        return {hook["LifecycleHookName"]: hook["LifecycleTransition"] for hook in hooks}

    def put_lifecycle_hook(self, name: str, transition: str, heartbeat_timeout: int, default_result: str) -> None:
        self._autoscaling.put_lifecycle_hook(
            LifecycleHookName=name,
            AutoScalingGroupName=self.group_name,
            LifecycleTransition=transition,
            HeartbeatTimeout=heartbeat_timeout,
            DefaultResult=default_result,
        )
