"""Attach mode's worst case: a rebalance recommendation for a group at MaxSize without Capacity Rebalancing.

The only way to get a replacement is to detach the at-risk instance (desired capacity kept, so the group launches
one at once). A detached instance is nobody's: spotkeeper tags it before detaching and terminates it, and only
it, once the replacement serves. Against moto.
"""

from __future__ import annotations

import pytest
from conftest import MODEL_ID, create_stack
from control import control_deps_for, instance_ids

from spotkeeper.fleet import DETACHED_TAG
from spotkeeper_local.aws_events import rebalance_recommendation
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock


@pytest.fixture
def world(aws):
    # Given an existing group (attach mode) of one at its MaxSize, without Capacity Rebalancing
    stack = create_stack(aws, capacity_rebalance=False)
    autoscaling = aws.client("autoscaling")
    autoscaling.update_auto_scaling_group(AutoScalingGroupName=stack.group, MaxSize=1)
    clock = SimClock()
    hooks = LifecycleHooks()
    ec2 = aws.client("ec2")
    fleet = EmulatedInstances(ec2, MODEL_ID, clock, load_seconds=0.0)
    watcher = GroupWatcher(autoscaling, stack.group, hooks)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    # ...whose instance serves
    [serving] = instance_ids(stack)
    fleet.boot(serving)
    assert invoke("lifecycle", watcher.lifecycle_event(serving, LAUNCHING), deps, clock=clock)["outcome"] == "promoted"
    stack.alerts()
    yield stack, clock, fleet, watcher, deps, ec2, serving, hooks
    fleet.close()


def _state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def _tags(ec2, instance_id: str) -> dict[str, str]:
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_detached_instance_is_terminated_once_its_replacement_serves(world):
    stack, clock, fleet, watcher, deps, ec2, at_risk, hooks = world
    # When the rebalance recommendation arrives
    assert invoke("interruption", rebalance_recommendation(at_risk), deps)["outcome"] == "replacement-started"
    # Then the at-risk instance left the group tagged as detached by spotkeeper, and still runs and serves
    assert at_risk not in instance_ids(stack)
    assert _tags(ec2, at_risk)[DETACHED_TAG] == stack.group
    assert _state(ec2, at_risk) == "running" and stack.eip_holder() == at_risk
    # ...while the group launched its replacement
    [replacement] = instance_ids(stack)
    assert stack.group_description()["DesiredCapacity"] == 1
    # When the replacement's TGI is ready (the launch hook, delivered twice)
    fleet.boot(replacement)
    event = watcher.lifecycle_event(replacement, LAUNCHING)
    assert invoke("lifecycle", event, deps, clock=clock)["outcome"] == "promoted"
    invoke("lifecycle", event, deps, clock=clock)
    # Then the EIP is on the replacement and the detached instance is terminated: no GPU left running for nobody
    assert stack.eip_holder() == replacement
    assert _state(ec2, at_risk) in {"shutting-down", "terminated"}
    assert _state(ec2, replacement) == "running"
    moved = [a for a in stack.alerts() if a["attributes"]["event"] == "eip-moved"]
    assert len(moved) == 1 and moved[0]["body"]["retiring"] == [at_risk]
    assert deps.state.get_instance(stack.group, at_risk).retired


def test_detached_instance_keeps_serving_while_its_replacement_is_not_ready(world):
    stack, clock, fleet, watcher, deps, ec2, at_risk, hooks = world
    invoke("interruption", rebalance_recommendation(at_risk), deps)
    [replacement] = instance_ids(stack)
    # Given the replacement never becomes ready before its deadline
    fleet.boot(replacement, model_id="someone/another-model")
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks, LAUNCH_DEADLINE_SECONDS="60")
    result = invoke("lifecycle", watcher.lifecycle_event(replacement, LAUNCHING), deps, clock=clock)
    # Then the launch is abandoned and the detached instance is left running with the EIP: it still serves
    assert result["outcome"] == "abandoned"
    assert _state(ec2, at_risk) == "running" and stack.eip_holder() == at_risk
    assert not deps.state.get_instance(stack.group, at_risk).retired


def test_an_instance_that_was_never_detached_is_not_terminated_directly(world):
    # A scale-out replacement is retired through the group (its terminate hook drains it), never by EC2 directly.
    stack, clock, fleet, watcher, deps, ec2, serving, hooks = world
    calls = []
    deps.clients.ec2.meta.events.register(
        "before-parameter-build.ec2.TerminateInstances", lambda params, **_: calls.append(params)
    )
    stack.session.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=stack.group, MaxSize=2)
    assert invoke("interruption", rebalance_recommendation(serving), deps)["outcome"] == "replacement-started"
    replacement = next(i for i in instance_ids(stack) if i != serving)
    fleet.boot(replacement)
    assert invoke("lifecycle", watcher.lifecycle_event(replacement, LAUNCHING), deps, clock=clock)["outcome"] == (
        "promoted"
    )
    assert calls == []
    assert DETACHED_TAG not in _tags(ec2, serving)
