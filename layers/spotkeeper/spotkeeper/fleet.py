"""The Auto Scaling group and its Elastic IP, behind the few operations spotkeeper needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code, error_message
from spotkeeper.observability import logger

# Instances that count as capacity: serving now or on their way to it.
ACTIVE_STATES = frozenset({"Pending", "Pending:Wait", "Pending:Proceed", "InService"})
LEAVING_STATES = frozenset({"Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated", "Detaching"})


@dataclass(frozen=True)
class GroupInstance:
    instance_id: str
    lifecycle_state: str
    health_status: str
    instance_type: str | None = None
    lifecycle: str | None = None  # "spot" or "on-demand" as Auto Scaling reports it, when it does

    @property
    def active(self) -> bool:
        return self.lifecycle_state in ACTIVE_STATES


@dataclass(frozen=True)
class Group:
    name: str
    desired: int
    min_size: int
    max_size: int
    capacity_rebalance: bool
    instances: tuple[GroupInstance, ...] = ()
    mixed_instances_policy: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def instance(self, instance_id: str) -> GroupInstance | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> Group:
        return cls(
            name=description["AutoScalingGroupName"],
            desired=int(description["DesiredCapacity"]),
            min_size=int(description["MinSize"]),
            max_size=int(description["MaxSize"]),
            capacity_rebalance=bool(description.get("CapacityRebalance", False)),
            instances=tuple(
                GroupInstance(
                    instance_id=i["InstanceId"],
                    lifecycle_state=i["LifecycleState"],
                    health_status=i.get("HealthStatus", "Healthy"),
                    instance_type=i.get("InstanceType"),
                )
                for i in description.get("Instances", [])
            ),
            mixed_instances_policy=description.get("MixedInstancesPolicy"),
            raw=description,
        )


class GroupNotFound(RuntimeError):
    pass


class Fleet:
    """One Auto Scaling group and one Elastic IP allocation."""

    def __init__(self, autoscaling: Any, ec2: Any, group_name: str, eip_allocation_id: str | None) -> None:
        self._autoscaling = autoscaling
        self._ec2 = ec2
        self.group_name = group_name
        self.eip_allocation_id = eip_allocation_id

    def describe_group(self) -> Group:
        groups = self._autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group_name])[
            "AutoScalingGroups"
        ]
        if not groups:
            raise GroupNotFound(f"Auto Scaling group {self.group_name} does not exist")
        return Group.from_description(groups[0])

    def private_address(self, instance_id: str) -> str | None:
        """The instance's private IP, or None if EC2 no longer knows it (it vanished)."""
        try:
            reservations = self._ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as error:
            if error_code(error) in {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}:
                return None
            raise
        for reservation in reservations:
            for instance in reservation["Instances"]:
                if instance.get("State", {}).get("Name") in {"shutting-down", "terminated"}:
                    return None
                return instance.get("PrivateIpAddress")
        return None

    # capacity ---------------------------------------------------------------------------------
    def detach_keeping_capacity(self, instance_id: str) -> None:
        """Detach without decrementing desired capacity: the group launches a replacement at once."""
        self._autoscaling.detach_instances(
            InstanceIds=[instance_id],
            AutoScalingGroupName=self.group_name,
            ShouldDecrementDesiredCapacity=False,
        )

    def retire(self, instance_id: str) -> bool:
        """Terminate through the group (so the terminate hook drains it) and drop desired by one."""
        try:
            self._autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
            )
        except ClientError as error:
            if error_code(error) == "ValidationError":
                # Already terminating, or no longer in the group: nothing left to retire.
                logger.info("instance already leaving", extra={"instance_id": instance_id, "why": error_message(error)})
                return False
            raise
        return True

    def set_desired(self, desired: int) -> None:
        self._autoscaling.set_desired_capacity(
            AutoScalingGroupName=self.group_name, DesiredCapacity=desired, HonorCooldown=False
        )

    def mark_unhealthy(self, instance_id: str) -> None:
        self._autoscaling.set_instance_health(
            InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=False
        )

    # lifecycle hooks --------------------------------------------------------------------------
    def complete_lifecycle_action(self, hook_name: str, token: str, instance_id: str, result: str) -> bool:
        """Complete a hook. False when AWS says it is no longer pending (completed already, or expired)."""
        try:
            self._autoscaling.complete_lifecycle_action(
                LifecycleHookName=hook_name,
                AutoScalingGroupName=self.group_name,
                LifecycleActionToken=token,
                LifecycleActionResult=result,
                InstanceId=instance_id,
            )
        except ClientError as error:
            if error_code(error) == "ValidationError" and "No active Lifecycle Action" in error_message(error):
                logger.info(
                    "lifecycle action no longer pending",
                    extra={"instance_id": instance_id, "hook": hook_name, "result": result},
                )
                return False
            raise
        return True

    def heartbeat(self, hook_name: str, token: str, instance_id: str) -> bool:
        try:
            self._autoscaling.record_lifecycle_action_heartbeat(
                LifecycleHookName=hook_name,
                AutoScalingGroupName=self.group_name,
                LifecycleActionToken=token,
                InstanceId=instance_id,
            )
        except ClientError as error:
            if error_code(error) == "ValidationError":
                return False
            raise
        return True

    # elastic IP -------------------------------------------------------------------------------
    def eip_holder(self) -> str | None:
        addresses = self._ec2.describe_addresses(AllocationIds=[self.eip_allocation_id])["Addresses"]
        return addresses[0].get("InstanceId") if addresses else None

    def move_eip(self, instance_id: str) -> None:
        """Associate the Elastic IP with ``instance_id``, taking it from wherever it is now."""
        self._ec2.associate_address(
            AllocationId=self.eip_allocation_id, InstanceId=instance_id, AllowReassociation=True
        )
