"""Scenario: Spot runs dry, the group falls back to On-Demand, Spot returns, the group falls forward.

The real capacity, lifecycle and health handlers run in the local world on moto (``spotkeeper_local.world``), with
TGI emulated on loopback for each instance and a simulated clock. The fall-forward lowers OnDemandBaseCapacity and
the world's Auto Scaling group replaces the On-Demand instance as AWS documents it for that change, launch before
terminate: the Spot replacement waits in Pending:Wait until the lifecycle function has seen its TGI serve, and only
then is the On-Demand instance put in Terminating:Wait, drained and terminated. At every step of it some instance is
in service and the Elastic IP is on a TGI that answers.
"""

from __future__ import annotations

from typing import Any

from capacity_harness import MIN_ON_DEMAND, NO_SPOT_CAPACITY, Capacity, launch_failure, policy_of, schedule

from spotkeeper.records import ON_DEMAND, SPOT
from spotkeeper_local.aws_events import scheduled
from spotkeeper_local.lifecycle_hooks import LAUNCHING, TERMINATING
from spotkeeper_local.sim_clock import SimClock

MODEL_LOAD_SECONDS = 240


def test_fall_back_then_forward_never_leaves_the_group_without_serving_capacity(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock, control=True, load_seconds=MODEL_LOAD_SECONDS)
    world, group = capacity.world, capacity.group
    control = world.deps["lifecycle"]

    def serving(instance_id: str | None) -> bool:
        emulator = world.fleet.servers.get(instance_id or "")
        return emulator is not None and emulator.is_serving and not emulator.unhealthy

    try:
        # Given the group's instance serving behind the Elastic IP
        [first] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
        world.fleet.boot(first, load_seconds=0)
        world.invoke("health", scheduled(clock.now()))
        assert stack.eip_holder() == first

        # When Spot runs dry: the group falls back to On-Demand
        assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
        # (the group's instance is the On-Demand one from here on: Auto Scaling's replacement of the lost
        # Spot instance is the interruption scenario's business, not this one's)
        group.purchase[first] = ON_DEMAND

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
        assert "spot-unlikely" in outcomes and outcomes.count("returning-to-spot") == 1
        assert outcomes[-1] == "on-spot"
        assert group.refresh_calls == []

        # Then the group replaces the On-Demand instance, launch before terminate, its lifecycle events delivered to
        # the lifecycle function; each look is (in service, every member's state), before and after each delivery
        looks: list[tuple[tuple[str, ...], dict[str, str]]] = []
        seen: list[tuple[str | None, bool]] = []

        def look() -> None:
            states = dict(group.members())
            looks.append((tuple(sorted(i for i, s in states.items() if s == "InService")), states))
            holder = stack.eip_holder()
            seen.append((holder, serving(holder)))

        def deliver(event: dict[str, Any]) -> None:
            look()
            world.invoke("lifecycle", event, timeout=900)
            look()

        for _ in range(1200):
            group.tick()
            world.pump(deliver)
            if first not in dict(group.members()):
                break
            clock.advance(1)
        assert first not in dict(group.members())

        # Never without an instance in service, never with the EIP on a TGI that does not answer
        assert looks and all(in_service for in_service, _ in looks)
        assert seen and all(ok for _, ok in seen)
        # The new instance only left Pending:Wait after its TGI served (the load took simulated minutes); only
        # then did the On-Demand one go to Terminating:Wait
        [second] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
        assert second != first and group.purchase[second] == SPOT
        assert ((first,), {first: "InService", second: "Pending:Wait"}) in looks
        assert ((second,), {first: "Terminating:Wait", second: "InService"}) in looks
        waiting = looks.index(((first,), {first: "InService", second: "Pending:Wait"}))
        leaving = looks.index(((second,), {first: "Terminating:Wait", second: "InService"}))
        assert waiting < leaving
        assert capacity.hooks.results_for(second, LAUNCHING) == ["CONTINUE"]
        assert capacity.hooks.results_for(first, TERMINATING) == ["CONTINUE"]

        # And the endpoint now serves from the Spot instance
        assert stack.eip_holder() == second
        endpoint = control.state.get_endpoint(stack.group)
        assert endpoint.serving_instance_id == second and endpoint.mode == SPOT
        assert world.invoke("health", scheduled(clock.now()))["healthy"] is True
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0

        alerts = [a["attributes"]["event"] for a in stack.alerts()]
        assert alerts.count("fallback-on-demand") == 1 and alerts.count("fall-forward-spot") == 1
        assert alerts.index("fallback-on-demand") < alerts.index("fall-forward-spot")
    finally:
        world.close()
