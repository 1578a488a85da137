"""The capacity function's wiring on moto, and the events it reacts to, for the capacity tests.

moto implements neither Spot placement scores nor instance refreshes (and its Spot price history is a fixed
price from 2006): the local world (``spotkeeper_local.world``) stands in for them, with its Spot market and its
Auto Scaling group.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
    deps (lifecycle, health) on the same clients, their TGI reached through the world's fleet."""

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
            functions |= {"lifecycle": stack.env(), "health": stack.env()}
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
