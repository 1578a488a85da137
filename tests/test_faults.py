"""AWS throttling and 5xx on every call the control functions make, and faults retries cannot hide."""

from __future__ import annotations

import random
from collections import Counter

import botocore.retries.standard
import pytest
from conftest import MODEL_ID
from control import control_deps_for, instance_ids
from counts import COUNTS
from faults import FaultInjector
from scenario import Scenario

from spotkeeper_local.aws_events import scheduled, spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, TERMINATING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock


@pytest.fixture(autouse=True)
def no_backoff_sleep(monkeypatch):
    # Retries still happen; only the wall-clock wait between them is skipped.
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)


def faulty(deps, injector):
    for client in (deps.clients.autoscaling, deps.clients.ec2, deps.clients.sns, deps.state._table.meta.client):
        injector.install(client)
    return deps


def test_interruption_scenario_survives_throttling_and_5xx_on_every_call(stack):
    clock, hooks = SimClock(), LifecycleHooks()
    ec2 = stack.session.client("ec2")
    [doomed] = instance_ids(stack)
    fleet = EmulatedInstances(ec2, MODEL_ID, clock, load_seconds=lambda iid: 0.0 if iid == doomed else 60.0)
    injector = FaultInjector(failures_per_call=2)
    deps = faulty(control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks), injector)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    watcher.known = set()
    try:
        Scenario(deps, watcher, fleet, ec2, rng=random.Random(5)).run()
        scenario = Scenario(deps, watcher, fleet, ec2, rng=random.Random(5))
        scenario.emit(spot_interruption(doomed, at=clock.now()))
        scenario.run()
    finally:
        fleet.close()
    COUNTS["faults injected (throttling/5xx)"] += injector.total
    # Every kind of call was hit, and the end state is exactly the fault-free one
    assert {"autoscaling.SetDesiredCapacity", "ec2.AssociateAddress", "sns.Publish", "dynamodb.UpdateItem"} <= set(
        injector.injected
    )
    replacement = next(i for i in instance_ids(stack) if i != doomed)
    assert stack.eip_holder() == replacement
    assert deps.state.get_endpoint(stack.group).serving_instance_id == replacement
    assert stack.group_description()["DesiredCapacity"] == 1
    assert hooks.results_for(replacement, LAUNCHING) == ["CONTINUE"]
    assert hooks.results_for(doomed, TERMINATING) == ["CONTINUE"]
    kinds = Counter(a["attributes"]["event"] for a in stack.alerts())
    assert kinds == {"eip-moved": 2, "spot-interruption": 1, "instance-terminating": 1}


def test_launch_hook_that_fails_past_its_retries_is_redone_by_the_next_delivery(stack):
    clock, hooks = SimClock(), LifecycleHooks()
    [instance] = instance_ids(stack)
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock)
    fleet.boot(instance)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    # Given EC2 keeps failing AssociateAddress beyond the retry budget for the first invocation
    injector = FaultInjector(failures_per_call=99, only={"AssociateAddress"})
    broken = faulty(control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks), injector)
    event = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks).lifecycle_event(instance, LAUNCHING)
    try:
        with pytest.raises(Exception, match=r"RequestLimitExceeded|InternalError"):
            invoke("lifecycle", event, broken, clock=clock)
        # Then nothing half-done is left as if finished: the hook is still pending
        assert hooks.results_for(instance, LAUNCHING) == [None]
        # When Lambda retries the event and EC2 has recovered
        assert invoke("lifecycle", event, deps, clock=clock)["outcome"] == "promoted"
    finally:
        fleet.close()
    COUNTS["faults injected (throttling/5xx)"] += injector.total
    assert stack.eip_holder() == instance
    assert hooks.results_for(instance, LAUNCHING) == ["CONTINUE"]
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["eip-moved"]


def test_expired_lifecycle_token_is_not_an_error(stack):
    clock, hooks = SimClock(), LifecycleHooks()
    [instance] = instance_ids(stack)
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock)
    fleet.boot(instance)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    event = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks).lifecycle_event(instance, LAUNCHING)
    hooks.actions[event["detail"]["LifecycleActionToken"]].result = "ABANDON"  # the hook timed out meanwhile
    try:
        assert invoke("lifecycle", event, deps, clock=clock)["outcome"] == "promoted"
    finally:
        fleet.close()
    COUNTS["faults injected (expired token)"] += 1
    assert stack.eip_holder() == instance


def test_instance_that_vanished_before_it_was_ready_is_abandoned(stack):
    clock, hooks = SimClock(), LifecycleHooks()
    [instance] = instance_ids(stack)
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=120)
    fleet.boot(instance)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    event = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks).lifecycle_event(instance, LAUNCHING)
    clock.on_advance(lambda now: stack.session.client("ec2").terminate_instances(InstanceIds=[instance]))
    try:
        assert invoke("lifecycle", event, deps, clock=clock)["outcome"] == "abandoned"
        assert invoke("health", scheduled(), deps, clock=clock)["launches"] == {}
    finally:
        fleet.close()
    COUNTS["faults injected (vanished instance)"] += 1
    assert hooks.results_for(instance, LAUNCHING) == ["ABANDON"]
    assert stack.eip_holder() is None
