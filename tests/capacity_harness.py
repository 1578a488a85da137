"""The capacity function's wiring on moto, and the events it reacts to, for the capacity tests.

moto implements neither Spot placement scores nor instance refreshes (and its Spot price history is a fixed
price from 2006): ``spotkeeper_local.spot_market_stand_ins`` stands in for those AWS calls on the clients.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from spotkeeper.aws import AwsClients
from spotkeeper.deps import CapacityDeps
from spotkeeper.settings import CapacityEnv
from spotkeeper_local.aws_events import aws_event
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LifecycleHooks
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.spot_market_stand_ins import InstanceRefreshStandIn, SpotMarketStandIn

ENDPOINT_DOWN = "spotkeeper-endpoint-down"
MIN_ON_DEMAND = 1800
NO_SPOT_CAPACITY = (
    "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that "
    "matches your request. Launching EC2 instance failed."
)


class Capacity:
    """The capacity function's deps on moto, with the Spot market and instance refresh stand-ins."""

    def __init__(self, stack: Any, clock: SimClock, clients: AwsClients | None = None, **env: str) -> None:
        self.stack = stack
        self.clock = clock
        self.clients = clients or AwsClients(stack.session)
        self.market = SpotMarketStandIn(clock=clock.now)
        self.market.install(self.clients.ec2)
        self.hooks = LifecycleHooks()
        self.refresh = InstanceRefreshStandIn(self.hooks, clock=clock.now)
        self.refresh.install(self.clients.autoscaling)
        settings = {
            "MIN_ON_DEMAND_SECONDS": str(MIN_ON_DEMAND),
            "SPOT_SCORE_THRESHOLD": "7",
            "ENDPOINT_DOWN_ALARM_NAME": ENDPOINT_DOWN,
            **env,
        }
        self.deps = CapacityDeps.build(
            CapacityEnv.from_environ(stack.env(**settings)), clients=self.clients, clock=clock
        )

    def invoke(self, event: dict[str, Any]) -> str:
        return invoke("capacity", event, self.deps, clock=self.clock)["outcome"]

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
