"""The return to Spot, end to end in the local world: only the On-Demand instances are replaced.

The real capacity, lifecycle and health handlers run on moto with the world's Auto Scaling group
(``spotkeeper_local.auto_scaling_group``), TGI emulated per instance and a simulated clock. The group plays what
AWS documents for a change of OnDemandBaseCapacity: "a gradual replacement of instances to adjust the current
On-Demand Instance levels. When replacing instances, Amazon EC2 Auto Scaling launches new instances before
terminating the previous ones" (API_InstancesDistribution). The capacity function lowers the base and does nothing
else; these tests check what that does to the group: one Spot launch per On-Demand replica returning, the Spot
replicas untouched, never fewer than N ready replicas, and a Spot launch that fails leaves the On-Demand one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from capacity_harness import (
    MIN_ON_DEMAND,
    NO_SPOT_CAPACITY,
    Capacity,
    launch_failure,
    policy_of,
    schedule,
    with_replicas,
)

from spotkeeper.records import ON_DEMAND, READY, SPOT
from spotkeeper_local.aws_events import scheduled, spot_interruption
from spotkeeper_local.lifecycle_hooks import LAUNCHING, TERMINATING
from spotkeeper_local.sim_clock import SimClock

# Minutes, as a model load is; the drill's default launch-to-ready is 451 s.
LOAD_SECONDS = 240
LIFECYCLE = ("EC2 Instance-launch Lifecycle Action", "EC2 Instance-terminate Lifecycle Action")


@dataclass
class Run:
    """The world with N replicas, its events delivered (``copies`` times each, in a shuffled order per batch), and
    what was seen at every delivery: members and their states, ready replicas, where the Elastic IP is."""

    capacity: Capacity
    copies: int = 1
    seed: int = 0
    lifecycle_timeout: float = 900.0  # a shorter one hands a launch over to the health probe while it loads
    launched: list[str] = field(default_factory=list)
    before: set[str] = field(default_factory=set)  # launched before the part looked at
    looks: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def world(self) -> Any:
        return self.capacity.world

    @property
    def clock(self) -> SimClock:
        return self.capacity.clock

    def look(self) -> None:
        group, stack = self.capacity.group, self.capacity.stack
        state = self.world.deps["lifecycle"].state
        ready = [r.instance_id for r in state.replicas(stack.group) if r.state == READY]
        holder = stack.eip_holder()
        server = self.world.fleet.servers.get(holder or "")
        self.looks.append(
            {
                "t": self.clock.now(),
                "members": dict(group.members()),
                "ready": ready,
                "eip_serving": server is not None and server.is_serving,
            }
        )

    def deliver(self, event: dict[str, Any]) -> None:
        self.look()
        kind = event["detail-type"]
        function = "lifecycle" if kind in LIFECYCLE else "capacity"
        timeout = self.lifecycle_timeout if function == "lifecycle" else 900
        result = self.world.invoke(function, event, timeout=timeout)
        self.outcomes.append((kind, result.get("outcome") if isinstance(result, dict) else result))
        self.look()

    def step(self) -> None:
        self.capacity.group.tick()
        batch: list[dict[str, Any]] = []
        self.world.pump(batch.append)
        # Every instance launched, whenever (a lifecycle action completed may launch the next one)
        self.launched += [i for i in self.world.launched_at if i not in self.launched and i not in self.before]
        batch = [event for event in batch for _ in range(self.copies)]
        random.Random(self.seed + len(self.looks)).shuffle(batch)
        for event in batch:
            self.deliver(event)
        if int(self.clock.elapsed()) % 60 == 0:
            self.world.invoke("health", scheduled(self.clock.now()))

    def until(self, done: Callable[[], bool], seconds: int) -> bool:
        for _ in range(seconds):
            self.step()
            if done():
                return True
            self.clock.advance(1)
        return False

    def forget_launches(self) -> None:
        self.before |= set(self.world.launched_at)
        self.launched.clear()

    def purchase(self, instance_id: str) -> str | None:
        return self.capacity.group.purchase.get(instance_id)

    def members(self) -> dict[str, str]:
        return dict(self.capacity.group.members())


def hedged_world(stack: Any, copies: int = 1, seed: int = 0) -> Run:
    """Two Spot replicas in service and ready, behind the Elastic IP."""
    capacity = Capacity(stack, SimClock(), control=True, load_seconds=LOAD_SECONDS, REPLICAS="2")
    run = Run(capacity, copies=copies, seed=seed)
    [first] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
    run.world.fleet.boot(first, load_seconds=0)
    run.world.invoke("health", scheduled(run.clock.now()))
    with_replicas(stack, 2)
    assert run.until(lambda: len(ready_spot(run)) == 2, 900)
    return run


def ready_spot(run: Run) -> list[str]:
    members = run.members()
    return [i for i, s in members.items() if s == "InService" and run.purchase(i) == SPOT]


def fall_back_for_one_replica(run: Run) -> tuple[str, str]:
    """Spot takes one replica back while Spot capacity is out: the group's Spot launch fails, the capacity function
    puts one replica on On-Demand, the On-Demand one serves. Returns (the Spot replica left, the On-Demand one)."""
    market, group = run.capacity.market, run.capacity.group
    lost, kept = sorted(ready_spot(run))
    market.capacity = False
    market.set_score(1)
    group.reclaim(lost)

    def on_demand_ready() -> bool:
        members = run.members()
        return any(s == "InService" and run.purchase(i) == ON_DEMAND for i, s in members.items())

    assert run.until(on_demand_ready, 1800)
    [on_demand] = [i for i, s in run.members().items() if run.purchase(i) == ON_DEMAND]
    assert policy_of(run.capacity.stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
    assert run.capacity.endpoint().on_demand_replicas == 1
    return kept, on_demand


def spot_back(run: Run) -> str:
    """Spot capacity returns; past the minimum time on On-Demand the schedule decides (delivered ``copies`` times)."""
    market, clock = run.capacity.market, run.clock
    market.capacity = True
    market.set_score(9)
    clock.advance(MIN_ON_DEMAND)
    tick = schedule(clock.now())
    outcomes = [run.capacity.invoke(tick) for _ in range(run.copies)]
    assert outcomes[0] == "returning-to-spot" and set(outcomes[1:]) <= {"on-spot"}
    return outcomes[0]


@pytest.mark.parametrize(("copies", "seed"), [(1, 0), (2, 7)])
def test_return_to_spot_at_two_replicas_replaces_only_the_on_demand_one(stack, copies, seed):
    # Given two replicas, one of them on On-Demand since Spot could not replace it
    run = hedged_world(stack, copies=copies, seed=seed)
    try:
        kept, on_demand = fall_back_for_one_replica(run)
        run.forget_launches()
        start = len(run.looks)
        # When Spot is back (the schedule, and every event after it, delivered `copies` times in shuffled order)
        spot_back(run)
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
        assert run.until(lambda: on_demand not in run.members(), 1800)
        run.until(lambda: False, 120)  # and a while after
        # Then exactly one instance was launched, a Spot one, and the On-Demand one is gone
        [new] = run.launched
        assert run.purchase(new) == SPOT
        assert run.members() == {kept: "InService", new: "InService"}
        # The Spot replica was never terminated or even put in a terminating state
        assert all(look["members"].get(kept) == "InService" for look in run.looks[start:])
        # The On-Demand one only left once the new one was in service (its launch hook saw TGI serve)
        leaving = [look for look in run.looks[start:] if look["members"].get(on_demand, "").startswith("Terminating")]
        assert leaving and all(look["members"].get(new) == "InService" for look in leaving)
        assert run.capacity.hooks.results_for(new, LAUNCHING) == ["CONTINUE"]
        assert run.capacity.hooks.results_for(on_demand, TERMINATING) == ["CONTINUE"]
        # Never fewer than two ready replicas, the Elastic IP always on a TGI that serves
        assert min(len(look["ready"]) for look in run.looks[start:]) >= 2
        assert all(look["eip_serving"] for look in run.looks[start:])
        # And the endpoint is back on Spot, switched once, alerted once; no instance refresh
        assert run.capacity.endpoint().mode == SPOT
        assert run.capacity.group.refresh_calls == []
        alerts = [a["attributes"]["event"] for a in stack.alerts()]
        assert alerts.count("fall-forward-spot") == 1 and alerts.count("fallback-on-demand") == 1
    finally:
        run.world.close()


def test_a_spot_launch_that_fails_during_the_return_leaves_the_on_demand_replica(stack):
    # Given two replicas, one on On-Demand, and Spot back by the scores
    run = hedged_world(stack)
    try:
        kept, on_demand = fall_back_for_one_replica(run)
        run.forget_launches()
        start = len(run.looks)
        spot_back(run)
        # When the Spot launch of the replacement fails (capacity gone again)
        run.capacity.market.capacity = False
        run.until(lambda: False, 600)
        # Then the failure was reported and fell back: the base is 1 again, Auto Scaling has no On-Demand instance too
        # many and stops replacing it; both replicas stay, nothing was launched
        assert ("EC2 Instance Launch Unsuccessful", "fell-back") in run.outcomes
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
        assert run.capacity.endpoint().on_demand_replicas == 1
        assert run.launched == []
        assert run.members() == {kept: "InService", on_demand: "InService"}
        assert all(look["members"] == {kept: "InService", on_demand: "InService"} for look in run.looks[start:])
        # And the pools that failed are cached, out of the next decision: the group tried each of its zones
        # (balanced-best-effort), each failure an event naming its zone
        pools = run.capacity.deps.journal.failed_pools()
        assert sorted(pool.zone for pool in pools if pool.until > run.clock.now()) == ["us-east-1a", "us-east-1b"]
    finally:
        run.world.close()


def test_a_replayed_old_launch_failure_does_not_undo_the_return(stack):
    run = hedged_world(stack)
    try:
        kept, on_demand = fall_back_for_one_replica(run)
        spot_back(run)
        assert run.until(lambda: on_demand not in run.members(), 1800)
        # A redelivery of the launch failure that caused the fallback arrives late
        old = launch_failure(stack, NO_SPOT_CAPACITY, run.clock.now() - MIN_ON_DEMAND - 600)
        assert run.capacity.invoke(old) == "stale"
        run.until(lambda: False, 300)
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
        assert all(run.purchase(i) == SPOT for i in run.members()) and len(run.members()) == 2
        assert kept in run.members()
    finally:
        run.world.close()


def test_a_spot_replacement_reclaimed_while_it_loads_leaves_the_on_demand_replica_serving(stack):
    # Given two replicas, one on On-Demand, Spot back, and the launch reaction handing over to the probe while TGI
    # loads (so Spot can take the replacement back before it is ready)
    run = hedged_world(stack)
    try:
        kept, on_demand = fall_back_for_one_replica(run)
        run.forget_launches()
        run.lifecycle_timeout = 60
        start = len(run.looks)
        spot_back(run)
        assert run.until(lambda: bool(run.launched), 120)
        [doomed] = run.launched
        assert run.members()[doomed] == "Pending:Wait"
        # When Spot reclaims the replacement before its TGI is ready
        run.capacity.group.reclaim(doomed)
        assert run.until(lambda: on_demand not in run.members(), 2400)
        run.until(lambda: False, 120)
        # Then the On-Demand replica kept serving until a second Spot replacement was in service, the Spot replica
        # was never touched, and no more than those two were launched
        doomed_gone, new = run.launched
        assert doomed_gone == doomed and run.purchase(new) == SPOT
        assert run.members() == {kept: "InService", new: "InService"}
        assert all(look["members"].get(kept) == "InService" for look in run.looks[start:])
        until_new = [look for look in run.looks[start:] if look["members"].get(new) != "InService"]
        assert all(look["members"].get(on_demand) == "InService" for look in until_new)
        assert min(len(look["ready"]) for look in run.looks[start:]) >= 2
        assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
    finally:
        run.world.close()


def test_a_spot_replica_warned_during_the_return_gets_its_own_replacement(stack):
    # Given two replicas, one on On-Demand, Spot back, and the Spot replacement of the On-Demand one loading (the
    # launch reaction hands over to the probe while TGI loads)
    run = hedged_world(stack)
    try:
        kept, on_demand = fall_back_for_one_replica(run)
        run.forget_launches()
        run.lifecycle_timeout = 60
        spot_back(run)
        assert run.until(lambda: bool(run.launched), 120)
        [returning] = run.launched
        assert run.members()[returning] == "Pending:Wait"
        start = len(run.looks)
        # When the Spot replica is warned (Auto Scaling retires the On-Demand one once `returning` serves) and Spot
        # reclaims it two minutes later
        outcome = run.world.invoke("interruption", spot_interruption(kept, run.clock.now()))
        # Then the warning is a replacement of its own: the On-Demand instance leaving is not capacity that stays
        assert outcome == {"outcome": "replacement-started"}
        assert run.capacity.group.desired() == 3
        run.until(lambda: False, 120)
        run.capacity.group.reclaim(kept)
        assert run.until(lambda: on_demand not in run.members() and ready_now(run) >= 2, 2400)
        run.until(lambda: False, 120)
        # And two Spot replicas serve, the group back at two
        members = run.members()
        assert len(members) == 2 and all(s == "InService" and run.purchase(i) == SPOT for i, s in members.items())
        assert returning in members and run.capacity.group.desired() == 2
        # From the moment the returning replica is in service (and the On-Demand one leaves), two replicas are ready:
        # no launch-to-ready with one
        looks = run.looks[start:]
        served = next(n for n, look in enumerate(looks) if look["members"].get(returning) == "InService")
        assert min(len(look["ready"]) for look in looks[served:]) >= 2
        assert all(look["eip_serving"] for look in looks)
    finally:
        run.world.close()


def ready_now(run: Run) -> int:
    """Ready replicas now (a look of its own, so every second is looked at)."""
    run.look()
    return len(run.looks[-1]["ready"])
