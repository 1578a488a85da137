"""The scheduled probe: metrics, adoption, consecutive failures and the Unhealthy mark."""

from __future__ import annotations

import json

import pytest
from conftest import MODEL_ID
from control import control_deps_for, instance_ids

from spotkeeper.logic.health import CONFIRM_EVERY_SECONDS
from spotkeeper_local.aws_events import scheduled, spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, lifecycle_event
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.world import World


@pytest.fixture
def world(stack):
    clock = SimClock()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock)
    [instance] = instance_ids(stack)
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client())
    yield stack, clock, fleet, instance, deps
    fleet.close()


def emf_metrics(output: str) -> list[dict]:
    documents = [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]
    return [
        {"name": m["Name"], "value": doc[m["Name"]], "dimensions": doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"]}
        for doc in documents
        for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    ]


def test_probe_adopts_a_ready_instance_and_publishes_health(world, capsys):
    stack, clock, fleet, instance, deps = world
    fleet.boot(instance)
    result = invoke("health", scheduled(), deps, clock=clock)
    assert result["healthy"] is True and result["serving"] == instance
    assert stack.eip_holder() == instance
    published = {m["name"]: m for m in emf_metrics(capsys.readouterr().out)}
    assert published["Healthy"]["value"] == [1.0]
    assert published["ProbeLatency"]["value"][0] > 0
    assert published["QueueSize"]["value"] == [0.0]
    assert ["AutoScalingGroupName", "service"] in published["Healthy"]["dimensions"]


def test_probe_without_any_ready_instance_reports_unhealthy_and_moves_nothing(world, capsys):
    stack, clock, fleet, instance, deps = world
    fleet.boot(instance, load_seconds=300)  # still loading: port closed
    result = invoke("health", scheduled(), deps, clock=clock)
    assert result["healthy"] is False and result["serving"] is None
    assert stack.eip_holder() is None
    assert {m["name"]: m["value"] for m in emf_metrics(capsys.readouterr().out)}["Healthy"] == [0.0]


def desired(stack) -> int:
    return stack.group_description()["DesiredCapacity"]


def test_failures_confirmed_within_one_run_launch_a_replacement_beside_the_serving_instance(world):
    stack, clock, fleet, instance, deps = world
    server = fleet.boot(instance)
    invoke("health", scheduled(), deps, clock=clock)
    stack.alerts()
    # When TGI stops answering, one probe run probes it again every few seconds until N failures in a row
    server.set_unhealthy(True)
    started = clock.now()
    assert invoke("health", scheduled(), deps, clock=clock)["healthy"] is False
    assert clock.now() - started == 2 * CONFIRM_EVERY_SECONDS
    assert deps.state.get_instance(stack.group, instance).probe_failures == 3
    # Then its replacement launches beside it (desired 1 -> 2), while it keeps the EIP and stays in service
    assert desired(stack) == 2
    [member] = [m for m in stack.group_description()["Instances"] if m["InstanceId"] == instance]
    assert member["HealthStatus"] == "Healthy" and stack.eip_holder() == instance
    [alert] = stack.alerts()
    assert (alert["attributes"]["event"], alert["attributes"]["severity"]) == ("instance-unhealthy", "critical")
    assert "replacement launching beside it" in alert["subject"] and alert["body"]["replacement"] == "scale-out"
    # And later runs, still failing, neither launch a second replacement nor alert again
    for _ in range(2):
        invoke("health", scheduled(), deps, clock=clock)
    assert desired(stack) == 2 and stack.alerts() == []


def test_a_run_without_time_to_confirm_counts_one_failure(world):
    stack, clock, fleet, instance, deps = world
    server = fleet.boot(instance)
    invoke("health", scheduled(), deps, clock=clock)
    server.set_unhealthy(True)
    # A 20 s run cannot wait 5 s and probe again (two 3 s timeouts) and keep 15 s: one look per run
    for failures in (1, 2):
        invoke("health", scheduled(), deps, clock=clock, timeout=20)
        assert deps.state.get_instance(stack.group, instance).probe_failures == failures
        assert desired(stack) == 1
    invoke("health", scheduled(), deps, clock=clock, timeout=20)
    assert desired(stack) == 2


def test_a_success_resets_the_failure_count(world):
    stack, clock, fleet, instance, deps = world
    server = fleet.boot(instance)
    invoke("health", scheduled(), deps, clock=clock)
    for _ in range(3):
        server.set_unhealthy(True)
        invoke("health", scheduled(), deps, clock=clock, timeout=20)  # one look per run
        invoke("health", scheduled(), deps, clock=clock, timeout=20)
        server.set_unhealthy(False)
        invoke("health", scheduled(), deps, clock=clock)
    assert stack.group_description()["Instances"][0]["HealthStatus"] == "Healthy"
    assert desired(stack) == 1
    assert deps.state.get_instance(stack.group, instance).probe_ok_at == clock.now()


def test_probe_puts_back_an_eip_someone_moved_away(world, aws):
    stack, clock, fleet, instance, deps = world
    fleet.boot(instance)
    invoke("health", scheduled(), deps, clock=clock)
    stack.alerts()
    # Given someone associated the EIP with another instance by hand
    ec2 = aws.client("ec2")
    other = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=stack.subnet_id)["Instances"][0]
    ec2.associate_address(AllocationId=stack.eip_allocation_id, InstanceId=other["InstanceId"], AllowReassociation=True)
    # When the probe runs (twice: the second finds nothing to repair)
    first = invoke("health", scheduled(), deps, clock=clock)
    invoke("health", scheduled(), deps, clock=clock)
    # Then the EIP is back on the serving instance, with one alert
    assert first["serving"] == instance and stack.eip_holder() == instance
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["eip-repaired"]


def test_a_probe_that_loses_the_adoption_race_does_not_alert_again(world):
    from spotkeeper.logic.health import adopt_ready_instance

    stack, clock, fleet, instance, deps = world
    fleet.boot(instance)
    # Given a concurrent probe recorded the instance as serving after this probe saw nothing serving
    assert adopt_ready_instance(deps) == instance
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["eip-moved"]
    # When this probe's adoption runs into it
    assert adopt_ready_instance(deps) == instance
    # Then the EIP stays put and no second alert goes out
    assert stack.eip_holder() == instance
    assert stack.alerts() == []


# --- a launch whose lifecycle event was lost ----------------------------------------------------------
@pytest.fixture
def lost_launch(stack):
    """The group's instance serves; a second one waits in Pending:Wait on the launch hook, its event lost.

    moto holds no instance in Pending:Wait and has no lifecycle actions: the local world's group does, and its
    ``LifecycleHooks`` holds the pending action.
    """
    clock = SimClock()
    world = World.build(
        stack.session, clock, {"health": stack.env()}, group=stack.group, launching=False, tgi_from_fleet=True
    )
    fleet, hooks, deps = world.fleet, world.hooks, world.deps["health"]  # the lifecycle function's deps are alike
    [serving] = instance_ids(stack)
    fleet.boot(serving)
    invoke("health", scheduled(), deps, clock=clock)
    deps.clients.autoscaling.set_desired_capacity(AutoScalingGroupName=stack.group, DesiredCapacity=2)
    [new] = [i for i in instance_ids(stack) if i != serving]
    assert world.group is not None and dict(world.group.members())[new] == "Pending:Wait"
    world.group.take()  # its launch event is never delivered
    [action] = [a for a in hooks.actions.values() if a.instance_id == new and a.transition == LAUNCHING]
    stack.alerts()
    yield stack, clock, fleet, deps, hooks, action, new
    world.close()


def test_probe_adopts_a_pending_wait_instance_nobody_recorded_and_continues_it_when_ready(lost_launch):
    stack, clock, fleet, deps, hooks, action, new = lost_launch
    fleet.boot(new, load_seconds=300)
    # When the probe runs while the model loads
    first = invoke("health", scheduled(), deps, clock=clock)
    # Then it adopts the launch (once), and keeps the hook alive by InstanceId
    assert first["adopted_launches"] == [new] and first["launches"] == {new: "waiting"}
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["launch-adopted"]
    assert action.result is None and action.heartbeats == 1
    # And once TGI serves, the next probe completes the hook CONTINUE, without a token
    clock.advance(301)
    second = invoke("health", scheduled(), deps, clock=clock)
    assert second["adopted_launches"] == [] and second["launches"] == {new: "continued"}
    assert action.result == "CONTINUE"
    [completion] = hooks.completions()
    assert "LifecycleActionToken" not in completion and completion["InstanceId"] == new
    # And a probe after that has nothing left to adopt or finish
    assert invoke("health", scheduled(), deps, clock=clock)["launches"] == {}
    assert stack.alerts() == []


def test_an_adopted_launch_that_never_serves_is_abandoned_at_its_deadline(lost_launch):
    stack, clock, fleet, deps, hooks, action, new = lost_launch
    fleet.boot(new, load_seconds=10_000)
    invoke("health", scheduled(), deps, clock=clock)
    clock.advance(deps.env.launch_deadline_seconds)
    assert invoke("health", scheduled(), deps, clock=clock)["launches"] == {new: "abandoned"}
    assert action.result == "ABANDON"
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["launch-adopted", "launch-abandoned"]


def test_a_late_lifecycle_event_carries_on_with_the_adopted_launch(lost_launch):
    stack, clock, fleet, deps, hooks, action, new = lost_launch
    fleet.boot(new, load_seconds=60)
    invoke("health", scheduled(), deps, clock=clock)
    # The lost event turns up after all (EventBridge redelivered it) once TGI serves
    clock.advance(61)
    late = lifecycle_event(stack.group, "spotkeeper-launch", new, LAUNCHING, action.token)
    outcome = invoke("lifecycle", late, deps, clock=clock)
    assert outcome["outcome"] in {"continued", "promoted"}
    assert action.result == "CONTINUE" and len(hooks.completions()) == 1
    # And neither the probe nor a redelivery completes it again
    assert invoke("health", scheduled(), deps, clock=clock)["launches"] == {}
    assert invoke("lifecycle", late, deps, clock=clock) == outcome  # the idempotency record answers
    assert len(hooks.completions()) == 1


# --- a terminate event that was lost ----------------------------------------------------------------------
def test_probe_gives_back_the_scale_out_capacity_when_the_terminate_event_was_lost(stack):
    # Given the serving instance got its Spot warning and a scale-out replacement (desired 1 -> 2) is loading
    clock = SimClock()
    world = World.build(
        stack.session, clock, {"health": stack.env()}, group=stack.group, launching=False, tgi_from_fleet=True
    )
    assert world.group is not None
    deps = world.deps["health"]  # the interruption function's deps are alike
    try:
        [doomed] = instance_ids(stack)
        world.fleet.boot(doomed)
        invoke("health", scheduled(), deps, clock=clock)
        assert invoke("interruption", spot_interruption(doomed), deps, clock=clock)["outcome"] == "replacement-started"
        [new] = [i for i in instance_ids(stack) if i != doomed]
        world.fleet.boot(new, load_seconds=600)
        assert world.group.desired() == 2
        # When Spot reclaims it and its terminate lifecycle event never arrives
        world.group.reclaim(doomed)
        events, *_ = world.group.take()  # (the replacement's launch event is not delivered either: the probe adopts it)
        [late] = [e for e in events if e["detail-type"] == "EC2 Instance-terminate Lifecycle Action"]
        assert dict(world.group.members())[doomed] == "Terminating:Wait"
        stack.alerts()
        # Then the probe gives the extra capacity back, while the hook still holds the instance
        report = invoke("health", scheduled(), deps, clock=clock)
        assert report["capacity_given_back"] == [doomed] and world.group.desired() == 1
        # ...and, the reclaimed instance being still recorded as serving, stops serving from it (nothing is ready)
        assert report["left_serving"] == doomed and report["serving"] is None
        kinds = [a["attributes"]["event"] for a in stack.alerts()]
        assert kinds.count("capacity-given-back") == 1 and kinds.count("serving-left") == 1
        # ...once: the next probe, and the terminate event if it turns up after all, do not do it again
        assert invoke("health", scheduled(), deps, clock=clock)["capacity_given_back"] == []
        invoke("lifecycle", late, deps, clock=clock)
        assert world.group.desired() == 1
        # ...and the EIP is not put back on the reclaimed instance
        assert stack.eip_holder() is None
        # And when the hook times out, the group does not launch a second replacement for it
        clock.advance(301)
        world.group.tick()
        assert [i for i, _ in world.group.members()] == [new] and world.group.desired() == 1
    finally:
        world.close()


# --- a serving instance failing its probes: launch before terminate ------------------------------------------------
def test_a_failing_serving_instance_keeps_the_eip_until_its_replacement_serves_then_is_retired(stack):
    clock = SimClock()
    world = World.build(
        stack.session, clock, {"health": stack.env()}, group=stack.group, launching=False, tgi_from_fleet=True
    )
    assert world.group is not None
    deps = world.deps["health"]  # the lifecycle function's deps are alike
    try:
        [failing] = instance_ids(stack)
        server = world.fleet.boot(failing)
        invoke("health", scheduled(), deps, clock=clock)
        world.group.take()
        stack.alerts()
        # Given its TGI stopped answering: one probe run starts the replacement beside it
        server.set_unhealthy(True)
        invoke("health", scheduled(), deps, clock=clock)
        [new] = [i for i in instance_ids(stack) if i != failing]
        assert world.group.desired() == 2 and stack.eip_holder() == failing
        assert dict(world.group.members()) == {failing: "InService", new: "Pending:Wait"}
        world.fleet.boot(new, load_seconds=60)
        events, *_ = world.group.take()
        [launch] = [e for e in events if e["detail-type"] == "EC2 Instance-launch Lifecycle Action"]
        # When the replacement's TGI is ready its launch reaction moves the EIP and retires the failing instance
        clock.advance(61)
        assert invoke("lifecycle", launch, deps, clock=clock)["outcome"] == "promoted"
        assert stack.eip_holder() == new and deps.state.get_endpoint(stack.group).serving_instance_id == new
        assert dict(world.group.members())[failing].startswith("Terminating") and world.group.desired() == 1
        assert [a["attributes"]["event"] for a in stack.alerts()] == ["instance-unhealthy", "eip-moved"]
    finally:
        world.close()


def test_with_other_replicas_serving_a_failing_instance_is_marked_unhealthy_for_the_group(world):
    stack, clock, fleet, instance, deps = world
    server = fleet.boot(instance)
    invoke("health", scheduled(), deps, clock=clock)
    stack.alerts()
    server.set_unhealthy(True)
    replicas = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), REPLICAS="2")
    invoke("health", scheduled(), replicas, clock=clock)
    assert stack.group_description()["Instances"][0]["HealthStatus"] == "Unhealthy" and desired(stack) == 1
    assert "marked Unhealthy for replacement" in stack.alerts()[0]["subject"]
