"""Scenario: Spot runs dry, the group falls back to On-Demand, Spot returns, the group falls forward.

The real capacity, lifecycle and health handlers run against moto, with TGI emulated on loopback for each
instance and a simulated clock. The instance refresh stand-in carries the refresh out as Auto Scaling does
with MinHealthyPercentage 100: the Spot replacement waits in Pending:Wait until the lifecycle function has
seen its TGI serve, and only then is the On-Demand instance put in Terminating:Wait, drained and terminated.
At every step of it some instance is in service and the Elastic IP is on a TGI that answers.
"""

from __future__ import annotations

from typing import Any

from capacity_harness import MIN_ON_DEMAND, NO_SPOT_CAPACITY, Capacity, launch_failure, policy_of, schedule
from conftest import MODEL_ID

from spotkeeper.aws import AwsClients
from spotkeeper.deps import ControlDeps
from spotkeeper.records import SPOT
from spotkeeper.settings import ControlEnv
from spotkeeper.tgi import TgiClient
from spotkeeper_local.aws_events import scheduled
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.tgi_emulator import TgiEmulator

MODEL_LOAD_SECONDS = 240


class Instances:
    """One emulated TGI per EC2 instance, reached through the instance's private address."""

    def __init__(self, stack: Any, clock: SimClock) -> None:
        self.stack = stack
        self.clock = clock
        self.by_address: dict[str, TgiEmulator] = {}
        self.by_instance: dict[str, TgiEmulator] = {}
        clock.on_advance(lambda _: [emulator.poll() for emulator in list(self.by_instance.values())])

    def boot(self, instance_id: str, load_seconds: float) -> TgiEmulator:
        ec2 = self.stack.session.client("ec2")
        address = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
            "PrivateIpAddress"
        ]
        emulator = TgiEmulator(
            host="127.0.0.1", port=0, model_id=MODEL_ID, load_seconds=load_seconds, clock=self.clock.now
        )
        emulator.boot()
        emulator.poll()
        self.by_address[address] = emulator
        self.by_instance[instance_id] = emulator
        return emulator

    def url_for(self, address: str) -> str:
        return self.by_address[address].url

    def serving(self, instance_id: str | None) -> bool:
        emulator = self.by_instance.get(instance_id or "")
        return emulator is not None and emulator.is_serving and not emulator.unhealthy

    def stop_all(self) -> None:
        for emulator in self.by_instance.values():
            emulator.stop()


def test_fall_back_then_forward_never_leaves_the_group_without_serving_capacity(stack):
    clock = SimClock()
    clients = AwsClients(stack.session)
    capacity = Capacity(stack, clock, clients=clients)
    instances = Instances(stack, clock)
    tgi = TgiClient(instances.url_for, timeout=2.0)
    control = ControlDeps.build(ControlEnv.from_environ(stack.env()), clients=clients, tgi=tgi, clock=clock)
    capacity.hooks.install(clients.autoscaling)
    try:
        # Given the group's instance serving behind the Elastic IP
        [first] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
        instances.boot(first, load_seconds=0)
        invoke("health", scheduled(clock.now()), control, clock=clock)
        assert stack.eip_holder() == first

        # When Spot runs dry: the group falls back to On-Demand
        assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
        # (the group's instance is the On-Demand one from here on: Auto Scaling's replacement of the lost
        # Spot instance is the interruption scenario's business, not this one's)
        capacity.refresh.purchase_options[first] = "on-demand"

        # And Spot stays poor for a while, then comes back
        capacity.market.set_score(3)
        capacity.market.set_price("g5.2xlarge", 0.48)
        outcomes = []
        for _ in range(9):
            clock.advance(300)
            if clock.elapsed() >= MIN_ON_DEMAND + 600:
                capacity.market.set_score(9)
            outcomes.append(capacity.invoke(schedule(clock.now())))
        assert outcomes[:5] == ["too-soon"] * 5
        assert "spot-unlikely" in outcomes and outcomes.count("refresh-started") == 1
        assert outcomes[-1] == "on-spot"
        assert len(capacity.refresh.started()) == 1

        # Then the refresh replaces the On-Demand instance, launch before terminate
        seen: list[tuple[str | None, bool]] = []

        def deliver(event: dict[str, Any]) -> Any:
            holder = stack.eip_holder()
            seen.append((holder, instances.serving(holder)))
            result = invoke("lifecycle", event, control, clock=clock, timeout=900)
            holder = stack.eip_holder()
            seen.append((holder, instances.serving(holder)))
            return result

        status = capacity.refresh.advance(
            stack.group,
            deliver,
            on_launch=lambda instance_id: instances.boot(instance_id, load_seconds=MODEL_LOAD_SECONDS),
            on_terminated=lambda instance_id: instances.by_instance[instance_id].kill(),
        )
        assert status == "Successful"

        # Never without an instance in service, never with the EIP on a TGI that does not answer
        timeline = capacity.refresh.timeline
        assert [len(step.in_service) for step in timeline] == [1, 2, 1, 1, 1]
        assert all(step.in_service for step in timeline)
        assert seen and all(serving for _, serving in seen)
        # The new instance only left Pending:Wait after its TGI served (the load took simulated minutes)
        [second] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
        assert second != first and capacity.refresh.purchase_options[second] == "spot"
        assert timeline[0].states[second] == "Pending:Wait" and timeline[0].in_service == (first,)
        assert capacity.hooks.results_for(second, "autoscaling:EC2_INSTANCE_LAUNCHING") == ["CONTINUE"]
        assert capacity.hooks.results_for(first, "autoscaling:EC2_INSTANCE_TERMINATING") == ["CONTINUE"]
        assert timeline[2].states[first] == "Terminating:Wait" and timeline[2].in_service == (second,)

        # And the endpoint now serves from the Spot instance
        assert stack.eip_holder() == second
        endpoint = control.state.get_endpoint(stack.group)
        assert endpoint.serving_instance_id == second and endpoint.mode == SPOT
        assert invoke("health", scheduled(clock.now()), control, clock=clock)["healthy"] is True
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0

        alerts = [a["attributes"]["event"] for a in stack.alerts()]
        assert alerts.count("fallback-on-demand") == 1 and alerts.count("fall-forward-spot") == 1
        assert alerts.index("fallback-on-demand") < alerts.index("fall-forward-spot")
    finally:
        instances.stop_all()
