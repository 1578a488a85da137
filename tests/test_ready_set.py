"""The ready set in the state table, and the control functions that keep it: idempotent, monotonic, EIP hand-over."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from conftest import MODEL_ID, create_state_table
from control import control_deps_for, instance_ids

from spotkeeper.records import GONE, READY, WARNED, ReplicaFacts
from spotkeeper.state import StateStore
from spotkeeper_local.aws_events import scheduled, spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, TERMINATING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock

GROUP = "spotkeeper-tgi"
FACTS = ReplicaFacts("i-a", "10.0.1.5", "us-east-1a", "g5.2xlarge", "spot")


def _apply(store: StateStore, event: str, at: float) -> bool:
    if event == "ready":
        return store.join_ready_set(GROUP, FACTS, at)
    if event == "warned":
        return store.mark_warned(GROUP, "i-a", at, create=True)
    return store.leave_ready_set(GROUP, "i-a", at, "terminating")


@pytest.mark.parametrize("order", list(itertools.permutations(["ready", "warned", "gone"])))
def test_replayed_and_reordered_events_never_bring_a_replica_back(aws: Any, order: tuple[str, ...]) -> None:
    store = StateStore(create_state_table(aws, "state"))
    # Each event delivered twice, in this order (EventBridge may duplicate and reorder)
    applied = [_apply(store, event, at) for at, event in enumerate(order + order)]
    (replica,) = store.replicas(GROUP)
    # Then the record ends in the furthest state any event reached, and only state changes were written
    assert replica.state == GONE
    assert store.ready_set(GROUP) == []
    rank = {"ready": 1, "warned": 2, "gone": 3}
    moved_forward = [rank[event] > max([0] + [rank[e] for e in order[:i]]) for i, event in enumerate(order)]
    assert applied == [*moved_forward, False, False, False]


def test_warning_then_ready_keeps_it_warned_and_a_warning_for_an_unknown_instance_writes_nothing(aws: Any) -> None:
    store = StateStore(create_state_table(aws, "state"))
    assert not store.mark_warned(GROUP, "i-stranger", 1.0)
    assert store.replicas(GROUP) == []

    assert store.join_ready_set(GROUP, FACTS, 1.0)
    assert store.mark_warned(GROUP, "i-a", 2.0)
    assert not store.join_ready_set(GROUP, FACTS, 3.0)  # a late "ready" does not undo the warning
    [replica] = store.ready_set(GROUP)
    assert (replica.state, replica.since, replica.address, replica.availability_zone) == (
        WARNED,
        2.0,
        "10.0.1.5",
        "us-east-1a",
    )
    assert (replica.instance_type, replica.lifecycle) == ("g5.2xlarge", "spot")

    # Warned while still loading (no address yet): out of the set, and it never joins
    assert store.mark_warned(GROUP, "i-loading", 4.0, create=True)
    assert not store.join_ready_set(GROUP, ReplicaFacts("i-loading", "10.0.1.9"), 5.0)
    assert [r.instance_id for r in store.ready_set(GROUP)] == ["i-a"]


# control functions ---------------------------------------------------------------------------------------


@pytest.fixture
def pair(stack: Any):
    """A group of two ready replicas, both launched through their lifecycle hook: the first is the primary."""
    clock = SimClock()
    hooks = LifecycleHooks()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=0.0)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    stack.session.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=stack.group, MaxSize=3, DesiredCapacity=2
    )
    first, second = instance_ids(stack)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    for instance in (first, second):
        fleet.boot(instance)
        outcome = invoke("lifecycle", watcher.lifecycle_event(instance, LAUNCHING), deps, clock=clock)["outcome"]
        assert outcome in {"promoted", "continued"}
    stack.alerts()
    yield stack, clock, deps, fleet, watcher, first, second
    fleet.close()


def test_launched_replicas_join_the_ready_set_and_the_first_holds_the_eip(pair: Any) -> None:
    stack, clock, deps, fleet, watcher, first, second = pair
    replicas = {r.instance_id: r for r in deps.state.ready_set(stack.group)}
    assert set(replicas) == {first, second}
    assert {r.state for r in replicas.values()} == {READY}
    assert replicas[second].address == fleet.private_address(second)
    assert replicas[second].availability_zone == "us-east-1a"
    assert deps.state.get_endpoint(stack.group).serving_instance_id == first
    assert stack.eip_holder() == first


def test_a_warned_primary_hands_the_eip_to_the_other_ready_replica_at_once(pair: Any) -> None:
    stack, clock, deps, fleet, watcher, first, second = pair
    # When the primary's Spot interruption warning arrives (twice)
    outcomes = [invoke("interruption", spot_interruption(first), deps, clock=clock)["outcome"] for _ in range(2)]
    # Then it is warned, and the EIP is on the other replica now, before any replacement is ready
    assert outcomes == ["replacement-started", "duplicate"]
    states = {r.instance_id: r.state for r in deps.state.ready_set(stack.group)}
    assert states == {first: WARNED, second: READY}
    assert stack.eip_holder() == second
    assert deps.state.get_endpoint(stack.group).serving_instance_id == second
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["spot-interruption", "eip-moved"]
    # When its terminate hook runs: it leaves the set, the EIP stays where it is
    invoke("lifecycle", watcher.lifecycle_event(first, TERMINATING), deps, clock=clock)
    assert [r.instance_id for r in deps.state.ready_set(stack.group)] == [second]
    assert stack.eip_holder() == second


def test_a_warned_replica_that_is_not_the_primary_leaves_the_eip_alone(pair: Any) -> None:
    stack, clock, deps, fleet, watcher, first, second = pair
    invoke("interruption", spot_interruption(second), deps, clock=clock)
    assert {r.instance_id: r.state for r in deps.state.ready_set(stack.group)} == {first: READY, second: WARNED}
    assert stack.eip_holder() == first


def test_a_lone_warned_primary_keeps_the_eip(stack: Any) -> None:
    clock = SimClock()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=0.0)
    hooks = LifecycleHooks()
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    try:
        [only] = instance_ids(stack)
        fleet.boot(only)
        invoke("lifecycle", watcher.lifecycle_event(only, LAUNCHING), deps, clock=clock)
        invoke("interruption", spot_interruption(only), deps, clock=clock)
        # One replica: warned, but it keeps the EIP and stays the primary until its replacement is ready
        assert [(r.instance_id, r.state) for r in deps.state.ready_set(stack.group)] == [(only, WARNED)]
        assert stack.eip_holder() == only
        assert deps.state.get_endpoint(stack.group).serving_instance_id == only
    finally:
        fleet.close()


def test_the_probe_repairs_the_ready_set(pair: Any) -> None:
    stack, clock, deps, fleet, watcher, first, second = pair
    # Given the second replica's record was lost (say its launch reaction failed before writing it) ...
    deps.state._table.delete_item(Key={"pk": f"group#{stack.group}", "sk": f"replica#{second}"})
    # ... and the first one left the group without its terminate hook reaching spotkeeper
    stack.session.client("autoscaling").detach_instances(
        InstanceIds=[first], AutoScalingGroupName=stack.group, ShouldDecrementDesiredCapacity=True
    )
    # When the scheduled probe runs
    invoke("health", scheduled(), deps, clock=clock)
    # Then the set holds what is really there, and the EIP followed
    assert {r.instance_id: r.state for r in deps.state.ready_set(stack.group)} == {second: READY}
    assert deps.state.get_endpoint(stack.group).serving_instance_id == second
    assert stack.eip_holder() == second


def test_a_replica_that_stops_answering_leaves_the_set_after_the_probe_limit(pair: Any) -> None:
    stack, clock, deps, fleet, watcher, first, second = pair
    # Given the replica that is not the primary stops answering (its TGI crashed; EC2 still runs it)
    fleet.kill(second)
    reports = []
    for _ in range(3):  # UNHEALTHY_AFTER_FAILURES
        clock.advance(60)
        reports.append(invoke("health", scheduled(), deps, clock=clock))
    # Then after the third failed probe it left the set and the group was told to replace it
    assert {r.instance_id for r in deps.state.ready_set(stack.group)} == {first}
    assert deps.state.get_instance(stack.group, second).marked_unhealthy
    health = {i["InstanceId"]: i["HealthStatus"] for i in stack.group_description()["Instances"]}
    assert health[second] == "Unhealthy" and health[first] == "Healthy"
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["instance-unhealthy"]
    assert all(report["healthy"] for report in reports)  # the primary kept serving throughout
    assert stack.eip_holder() == first
