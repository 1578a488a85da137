"""The Auto Scaling group and its Elastic IP, behind the few operations spotkeeper needs."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from spotkeeper.aws import error_code, error_message
from spotkeeper.group import Group, GroupNotFound
from spotkeeper.observability import logger
from spotkeeper.records import ON_DEMAND, SPOT, ReplicaFacts

# Put on an instance just before it is detached; the functions' ec2:TerminateInstances grant requires it.
DETACHED_TAG = "spotkeeper:detached-from"


def describe_group(autoscaling: Any, group_name: str) -> Group:
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])["AutoScalingGroups"]
    if not groups:
        raise GroupNotFound(f"Auto Scaling group {group_name} does not exist")
    return Group.from_description(groups[0])


class Fleet:
    """One Auto Scaling group and one Elastic IP allocation."""

    def __init__(self, autoscaling: Any, ec2: Any, group_name: str, eip_allocation_id: str | None) -> None:
        self._autoscaling = autoscaling
        self._ec2 = ec2
        self.group_name = group_name
        self.eip_allocation_id = eip_allocation_id

    def describe_group(self) -> Group:
        return describe_group(self._autoscaling, self.group_name)

    def private_address(self, instance_id: str) -> str | None:
        """The instance's private IP, or None if EC2 no longer knows it (it vanished)."""
        facts = self.replica_facts(instance_id)
        return facts.address if facts is not None else None

    def replica_facts(self, instance_id: str) -> ReplicaFacts | None:
        """Address, zone, type and purchase option of a running instance, or None if it is gone."""
        try:
            reservations = self._ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError as error:
            if error_code(error) in {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}:
                return None
            raise
        for reservation in reservations:
            for instance in reservation["Instances"]:
                address = instance.get("PrivateIpAddress")
                if instance.get("State", {}).get("Name") in {"shutting-down", "terminated"} or not address:
                    return None
                return ReplicaFacts(
                    instance_id=instance_id,
                    address=address,
                    availability_zone=instance.get("Placement", {}).get("AvailabilityZone"),
                    instance_type=instance.get("InstanceType"),
                    lifecycle=SPOT if instance.get("InstanceLifecycle") == "spot" else ON_DEMAND,
                )
        return None

    # capacity ---------------------------------------------------------------------------------
    def detach_keeping_capacity(self, instance_id: str) -> None:
        """Detach without decrementing desired capacity: the group launches a replacement at once.

        The instance is tagged first: the tag is what lets spotkeeper (and only for instances it detached from
        this group) terminate it once the replacement serves; nothing else would ever retire it.
        """
        self._ec2.create_tags(Resources=[instance_id], Tags=[{"Key": DETACHED_TAG, "Value": self.group_name}])
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

    def terminate_detached(self, instance_id: str) -> bool:
        """Terminate an instance detached from the group. False if EC2 no longer knows it."""
        try:
            self._ec2.terminate_instances(InstanceIds=[instance_id])
        except ClientError as error:
            if error_code(error) == "InvalidInstanceID.NotFound":
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
        """Complete a hook. False when AWS says it is no longer pending (completed already, or expired).

        Without a token (its lifecycle event was lost) the action is completed by InstanceId, which AWS accepts:
        "Completes the lifecycle action for the specified token or instance" (API_CompleteLifecycleAction).
        """
        try:
            self._autoscaling.complete_lifecycle_action(
                LifecycleHookName=hook_name,
                AutoScalingGroupName=self.group_name,
                LifecycleActionResult=result,
                InstanceId=instance_id,
                **_token(token),
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
                InstanceId=instance_id,
                **_token(token),
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


def _token(token: str) -> dict[str, str]:
    """The lifecycle action token when there is one; an adopted launch has none and goes by InstanceId."""
    return {"LifecycleActionToken": token} if token else {}
