"""The capacity function's wiring on moto, and the events it reacts to, for the capacity tests.

moto implements neither Spot placement scores nor instance refreshes (and its Spot price history is a fixed
price from 2006): the local world (``spotkeeper_local.world``) stands in for them, with its Spot market and its
Auto Scaling group.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from spotkeeper.capacity_policy import writable_policy
from spotkeeper_local.aws_events import aws_event
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.world import World

ENDPOINT_DOWN = "spotkeeper-endpoint-down"
MIN_ON_DEMAND = 1800
NO_SPOT_CAPACITY = (
    "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
    "matches your request. Launching EC2 instance failed."
)


class Capacity:
    """The capacity function's deps in the local world on moto: its Spot market and its group (which answers
    the instance-refresh calls; the group's instance is in service). ``control`` adds the control functions'
    deps (lifecycle, health, interruption) on the same clients, their TGI reached through the world's fleet."""

    def __init__(
        self, stack: Any, clock: SimClock, control: bool = False, load_seconds: float = 0.0, **env: str
    ) -> None:
        self.stack = stack
        self.clock = clock
        settings = {
            "MIN_ON_DEMAND_SECONDS": str(MIN_ON_DEMAND),
            "SPOT_SCORE_THRESHOLD": "7",
            "ENDPOINT_DOWN_ALARM_NAME": ENDPOINT_DOWN,
            **env,
        }
        functions = {"capacity": stack.env(**settings)}
        if control:
            # The control functions run the same N replicas as the capacity function.
            control_env = {"REPLICAS": env["REPLICAS"]} if "REPLICAS" in env else {}
            functions |= {name: stack.env(**control_env) for name in ("lifecycle", "health", "interruption")}
        self.world = World.build(
            stack.session,
            clock,
            functions,
            group=stack.group,
            launching=False,
            load_seconds=load_seconds,
            tgi_from_fleet=True,
            spot_score=1,
            typical_prices=False,
        )
        self.clients, self.market, self.hooks = self.world.clients, self.world.market, self.world.hooks
        assert self.world.group is not None
        self.group = self.world.group
        self.deps = self.world.deps["capacity"]

    def invoke(self, event: dict[str, Any]) -> str:
        return self.world.invoke("capacity", event)["outcome"]

    def zone_id(self) -> str:
        subnet = self.clients.ec2.describe_subnets(SubnetIds=[self.stack.subnet_id])["Subnets"][0]
        return subnet["AvailabilityZoneId"]

    def endpoint(self):
        return self.deps.state.get_endpoint(self.stack.group)


def launch_failure(stack: Any, message: str, at: float, zone: str = "us-east-1a") -> dict[str, Any]:
    return aws_event(
        "launch-unsuccessful-spot-capacity",
        detail={
            "AutoScalingGroupName": stack.group,
            "StatusMessage": message,
            "Description": f"Launching a new EC2 instance.  Status Reason: {message}",
            "Details": {"Subnet ID": stack.subnet_id, "Availability Zone": zone},
        },
        at=at,
    )


def alarm_change(name: str, value: str, at: float, previous: str = "OK") -> dict[str, Any]:
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    return aws_event(
        "alarm-endpoint-down",
        detail={
            "alarmName": name,
            "state": {"value": value, "reason": f"Threshold Crossed: {name} went to {value}", "timestamp": stamp},
            "previousState": {"value": previous, "reason": "previous evaluation", "timestamp": stamp},
        },
        resources=[f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}"],
        at=at,
    )


def schedule(at: float) -> dict[str, Any]:
    return aws_event("capacity-schedule", at=at)


def policy_of(stack: Any) -> dict[str, Any]:
    return stack.group_description()["MixedInstancesPolicy"]


# --- hedged replicas -----------------------------------------------------------------------------------
def with_replicas(stack: Any, replicas: int, zones: tuple[str, ...] = ("us-east-1a", "us-east-1b")) -> list[str]:
    """Grow the stack's group to ``replicas`` serving instances over subnets in ``zones``, as the template's group
    is with Replicas = N (MinSize = Desired = N, MaxSize = 2N), every instance on Spot. Returns their ids."""
    ec2, autoscaling = stack.session.client("ec2"), stack.session.client("autoscaling")
    vpc = ec2.describe_subnets(SubnetIds=[stack.subnet_id])["Subnets"][0]["VpcId"]
    subnets = [stack.subnet_id]
    for number, zone in enumerate(zones[1:], start=2):
        cidr = f"10.0.{number}.0/24"
        subnets.append(ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"])
    # The policy is given again: moto's update drops a MixedInstancesPolicy it is not given (AWS keeps it).
    policy = writable_policy(stack.group_description()["MixedInstancesPolicy"])
    autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=stack.group,
        MinSize=replicas,
        MaxSize=2 * replicas,
        DesiredCapacity=replicas,
        VPCZoneIdentifier=",".join(subnets),
        MixedInstancesPolicy=policy,
    )
    instances = [i["InstanceId"] for i in stack.group_description()["Instances"]]
    run_on_spot(*instances)
    return instances


def run_on_spot(*instance_ids: str) -> None:
    """Make moto's instances Spot ones (DescribeInstances' InstanceLifecycle "spot").

    moto launches every instance of a group On-Demand; under the template's Spot-first MixedInstancesPolicy
    (OnDemandBaseCapacity = the floor) AWS launches the instances above the base on Spot. This sets what AWS would.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    for instance_id in instance_ids:
        backend.get_instance(instance_id).lifecycle = "spot"
