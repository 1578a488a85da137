"""Capacity: fallback to On-Demand, fall-forward to Spot, alarm alerts, against moto.

The wiring (moto with the Spot market and Auto Scaling group stand-ins) lives in ``capacity_harness``.
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any

import pytest
from capacity_harness import (
    ENDPOINT_DOWN,
    MIN_ON_DEMAND,
    NO_SPOT_CAPACITY,
    Capacity,
    alarm_change,
    launch_failure,
    policy_of,
    schedule,
)

from spotkeeper.events import InvalidEvent
from spotkeeper.logic.capacity import classify_launch_failure
from spotkeeper.records import ON_DEMAND, SPOT, PendingLaunch
from spotkeeper_local.aws_events import load_event
from spotkeeper_local.sim_clock import SimClock

STACK_ALARMS = [ENDPOINT_DOWN, "spotkeeper-fallback-active", "spotkeeper-dlq-not-empty", "spotkeeper-function-errors"]

UNFULFILLABLE = (
    "Could not launch Spot Instances. UnfulfillableCapacity - Unable to fulfill capacity due to your request "
    "configuration. Please adjust your request and try again. Launching EC2 instance failed."
)
PRICE_TOO_LOW = (
    "Could not launch Spot Instances. SpotMaxPriceTooLow - Your Spot request price of 0.5 is lower than the "
    "minimum required Spot request fulfillment price of 0.6418. Launching EC2 instance failed."
)
MAX_SPOT_COUNT = (
    "Could not launch Spot Instances. MaxSpotInstanceCountExceeded - Max spot instance count exceeded. "
    "Launching EC2 instance failed."
)
ZONE_SHORT = (
    "We currently do not have sufficient g5.2xlarge capacity in the Availability Zone you requested "
    "(us-east-1a). Our system will be working on provisioning additional capacity. You can currently get "
    "g5.2xlarge capacity by not specifying an Availability Zone in your request or choosing us-east-1b, "
    "us-east-1c. Launching EC2 instance failed."
)
BAD_AMI = "The image id '[ami-0123456789abcdef0]' does not exist. Launching EC2 instance failed."
FREE_TIER = (
    "Could not launch Spot Instances. InvalidParameterCombination - The specified instance type is not eligible "
    "for Free Tier. Launching EC2 instance failed."
)
ON_DEMAND_SHORT = (
    "Could not launch On-Demand Instances. InsufficientInstanceCapacity - We currently do not have sufficient "
    "g5.2xlarge capacity in the Availability Zone you requested (us-east-1a). Launching EC2 instance failed."
)
VCPU_LIMIT = (
    "Could not launch On-Demand Instances. VcpuLimitExceeded - You have requested more vCPU capacity than your "
    "current vCPU limit of 0 allows for the instance bucket that the specified instance type belongs to. "
    "Launching EC2 instance failed."
)


def without_base(policy: dict[str, Any]) -> dict[str, Any]:
    rest = copy.deepcopy(policy)
    rest["InstancesDistribution"].pop("OnDemandBaseCapacity")
    return rest


def kinds(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["attributes"]["event"] for a in alerts]


def has_served(capacity: Capacity, at: float) -> str:
    """An instance of the stack served from ``at`` on (the endpoint-down alarm only falls back after that)."""
    [instance] = [i["InstanceId"] for i in capacity.stack.group_description()["Instances"]]
    state, group = capacity.deps.state, capacity.stack.group
    assert state.set_serving(group, instance, "10.0.1.10", at, state.get_endpoint(group).version)
    return instance


def loading(capacity: Capacity, instance_id: str, started_at: float, deadline_seconds: float = 900.0) -> None:
    """A replacement launch recorded by the lifecycle function, its TGI loading."""
    launch = PendingLaunch(instance_id, "spotkeeper-launch", "token-1", started_at, started_at + deadline_seconds)
    assert capacity.deps.state.put_pending_launch(capacity.stack.group, launch)


def fall_back(capacity: Capacity) -> None:
    assert capacity.invoke(launch_failure(capacity.stack, NO_SPOT_CAPACITY, capacity.clock.now())) == "fell-back"
    capacity.stack.alerts()  # drained: the tests below look at what comes after


# --- recognising a Spot shortage ---------------------------------------------------------------------
@pytest.mark.parametrize("message", [NO_SPOT_CAPACITY, UNFULFILLABLE, PRICE_TOO_LOW, MAX_SPOT_COUNT, ZONE_SHORT])
def test_spot_capacity_and_price_reasons_are_a_spot_shortage(message):
    assert classify_launch_failure(message).spot_shortage


@pytest.mark.parametrize("message", [BAD_AMI, FREE_TIER, ON_DEMAND_SHORT, VCPU_LIMIT, "Launching EC2 instance failed."])
def test_other_reasons_are_not_a_spot_shortage(message):
    assert not classify_launch_failure(message).spot_shortage


# --- fallback ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_spot_shortage_falls_back_once_under_duplicated_and_shuffled_delivery(stack, capacity, seed):
    # Given a Spot group and several Spot shortage failures, each delivered three times, in any order
    clock = capacity.clock
    before = policy_of(stack)
    failures = [
        launch_failure(stack, message, clock.now() + offset)
        for offset, message in enumerate([NO_SPOT_CAPACITY, UNFULFILLABLE, PRICE_TOO_LOW])
    ]
    deliveries = [event for event in failures for _ in range(3)]
    random.Random(seed).shuffle(deliveries)
    # When they are delivered
    clock.advance(5)
    outcomes = [capacity.invoke(event) for event in deliveries]
    # Then the group got one On-Demand instance as its base, and nothing else in its policy changed
    assert outcomes.count("fell-back") == 1
    assert set(outcomes) == {"fell-back", "already-on-demand"}
    after = policy_of(stack)
    assert after["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
    assert without_base(after) == without_base(before)
    # And the switch is recorded once, with when and why
    endpoint = capacity.endpoint()
    assert endpoint.mode == ON_DEMAND and endpoint.mode_since == clock.now()
    assert endpoint.mode_reason.startswith("launch-unsuccessful: ")
    # And one critical alert says so
    alerts = stack.alerts()
    assert [a["attributes"] for a in alerts] == [{"severity": "critical", "event": "fallback-on-demand"}]
    assert stack.group in alerts[0]["subject"] and "On-Demand" in alerts[0]["subject"]
    assert alerts[0]["body"]["on_demand_base_capacity"] == 1


def test_launch_failure_for_another_reason_alerts_without_falling_back(stack, capacity):
    clock = capacity.clock
    before = policy_of(stack)
    event = launch_failure(stack, BAD_AMI, clock.now(), zone="us-east-1b")
    outcomes = [capacity.invoke(event) for _ in range(3)]
    assert outcomes[0] == "alerted"
    assert policy_of(stack) == before
    assert capacity.endpoint().mode == SPOT
    [alert] = stack.alerts()
    assert alert["attributes"] == {"severity": "warning", "event": "launch-failed"}
    assert "does not exist" in alert["subject"] and alert["body"]["fallback"] is False
    assert alert["body"]["zone"] == "us-east-1b"


def test_on_demand_capacity_failure_is_critical_but_no_fallback(stack, capacity):
    clock = capacity.clock
    assert capacity.invoke(launch_failure(stack, ON_DEMAND_SHORT, clock.now())) == "alerted"
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
    assert [a["attributes"] for a in stack.alerts()] == [{"severity": "critical", "event": "launch-failed"}]


def test_sample_events_of_launch_failures(stack, capacity):
    assert capacity.invoke(load_event("launch-unsuccessful-bad-ami")) == "alerted"
    assert capacity.invoke(load_event("launch-unsuccessful-spot-capacity")) == "fell-back"
    assert kinds(stack.alerts()) == ["launch-failed", "fallback-on-demand"]


def test_failure_of_another_group_is_ignored(stack, capacity):
    event = launch_failure(stack, NO_SPOT_CAPACITY, capacity.clock.now())
    event["detail"]["AutoScalingGroupName"] = "someone-elses-group"
    assert capacity.invoke(event) == "ignored"
    assert capacity.endpoint().mode == SPOT and stack.alerts() == []


def test_group_without_mixed_instances_policy_cannot_fall_back(aws):
    from conftest import create_stack

    stack = create_stack(aws)
    autoscaling = aws.client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="plain-group",
        MinSize=1,
        MaxSize=1,
        LaunchTemplate={"LaunchTemplateId": stack.launch_template_id, "Version": "$Latest"},
        VPCZoneIdentifier=stack.subnet_id,
    )
    stack.group = "plain-group"
    capacity = Capacity(stack, SimClock())
    event = launch_failure(stack, NO_SPOT_CAPACITY, capacity.clock.now())
    assert [capacity.invoke(event) for _ in range(2)] == ["cannot-fall-back"] * 2
    assert capacity.endpoint().mode == SPOT
    [alert] = stack.alerts()
    assert alert["attributes"] == {"severity": "critical", "event": "fallback-impossible"}


def test_retry_after_the_alert_failed_alerts_once(stack, capacity, monkeypatch):
    clock = capacity.clock
    real_send = capacity.deps.alerts.send
    calls = {"n": 0}

    def failing_once(alert):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("SNS unavailable")
        real_send(alert)

    monkeypatch.setattr(capacity.deps.alerts, "send", failing_once)
    event = launch_failure(stack, NO_SPOT_CAPACITY, clock.now())
    with pytest.raises(RuntimeError):
        capacity.invoke(event)
    # Lambda retries the same event, and its duplicate arrives too
    assert capacity.invoke(event) == "already-on-demand"
    assert capacity.invoke(event) == "already-on-demand"
    assert kinds(stack.alerts()) == ["fallback-on-demand"]
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1


# --- alarms ------------------------------------------------------------------------------------------
def test_endpoint_down_alarm_falls_back_once(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    before = policy_of(stack)
    alarm = alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())
    shortage = launch_failure(stack, NO_SPOT_CAPACITY, clock.now())
    deliveries = [alarm, shortage, alarm, alarm, shortage]
    random.Random(7).shuffle(deliveries)
    outcomes = [capacity.invoke(event) for event in deliveries]
    assert outcomes.count("fell-back") == 1
    after = policy_of(stack)
    assert after["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
    assert without_base(after) == without_base(before)
    assert capacity.endpoint().mode == ON_DEMAND
    alerts = stack.alerts()
    assert sorted(kinds(alerts)) == ["alarm-raised", "fallback-on-demand"]
    raised = next(a for a in alerts if a["attributes"]["event"] == "alarm-raised")
    assert raised["attributes"]["severity"] == "critical"
    assert raised["subject"].startswith(f"[spotkeeper critical] {ENDPOINT_DOWN} is in ALARM: ")


def test_endpoint_down_sample_alone_falls_back(stack):
    capacity = Capacity(stack, SimClock())
    has_served(capacity, 1_700_000_000.0)  # before the sample's alarm; no launch pending since
    assert capacity.invoke(load_event("alarm-endpoint-down")) == "fell-back"
    assert capacity.endpoint().mode_reason == "endpoint-down alarm"
    alerts = {a["attributes"]["event"]: a for a in stack.alerts()}
    assert set(alerts) == {"alarm-raised", "fallback-on-demand"}
    raised = alerts["alarm-raised"]
    assert raised["subject"] == f"[spotkeeper critical] {ENDPOINT_DOWN} is in ALARM: falling back to On-Demand"
    assert raised["body"]["description"].startswith("No healthy TGI")
    assert capacity.invoke(load_event("alarm-endpoint-recovered")) == "alerted"
    [recovered] = stack.alerts()
    assert recovered["subject"] == f"[spotkeeper info] {ENDPOINT_DOWN} is OK again"
    assert capacity.endpoint().mode == ON_DEMAND  # recovery is the fall-forward's call, not the alarm's


def test_every_alarm_transition_gives_one_readable_alert(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    for name in STACK_ALARMS:
        raised = alarm_change(name, "ALARM", clock.now())
        clock.advance(60)
        cleared = alarm_change(name, "OK", clock.now(), previous="ALARM")
        clock.advance(60)
        for event in (raised, raised, cleared, cleared):
            capacity.invoke(event)
    ignored = alarm_change(STACK_ALARMS[1], "INSUFFICIENT_DATA", clock.now())
    assert capacity.invoke(ignored) == "ignored"
    # A new stack's first evaluation (INSUFFICIENT_DATA -> OK) is not a recovery: no alert
    first = alarm_change(STACK_ALARMS[2], "OK", clock.now(), previous="INSUFFICIENT_DATA")
    assert capacity.invoke(first) == "ignored"
    alerts = [a for a in stack.alerts() if a["attributes"]["event"].startswith("alarm-")]
    assert [(a["body"]["alarm_name"], a["body"]["state"]) for a in alerts] == [
        (name, state) for name in STACK_ALARMS for state in ("ALARM", "OK")
    ]
    for alert in alerts:
        name, state = alert["body"]["alarm_name"], alert["body"]["state"]
        assert name in alert["subject"]
        if state == "ALARM":
            assert "is in ALARM" in alert["subject"] and alert["attributes"]["event"] == "alarm-raised"
            assert alert["attributes"]["severity"] == ("critical" if name == ENDPOINT_DOWN else "warning")
        else:
            assert alert["subject"].endswith("is OK again") and alert["attributes"] == {
                "severity": "info",
                "event": "alarm-ok",
            }
        assert alert["body"]["reason"].startswith("Threshold Crossed")
    # Only the endpoint-down alarm switched the group
    assert capacity.endpoint().mode == ON_DEMAND


def test_other_alarms_do_not_fall_back(stack, capacity):
    assert capacity.invoke(alarm_change("spotkeeper-function-errors", "ALARM", capacity.clock.now())) == "alerted"
    assert capacity.endpoint().mode == SPOT
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0


# --- the endpoint-down alarm while Spot delivers ------------------------------------------------------
def base_capacity(stack: Any) -> int:
    return policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"]


def test_alarm_while_a_replacement_loads_alerts_without_falling_back(stack):
    # Given the serving instance was reclaimed and its replacement is loading its model, well within its deadline
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    loading(capacity, "i-0replacement00001", started_at=clock.now() - 240)
    before = policy_of(stack)
    # When the endpoint-down alarm fires (three minutes without a healthy probe)
    outcome = capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now()))
    # Then ops are told, critically, and nothing switches to On-Demand
    assert outcome == "replacement-loading"
    assert policy_of(stack) == before and capacity.endpoint().mode == SPOT
    [alert] = stack.alerts()
    assert alert["attributes"] == {"severity": "critical", "event": "alarm-raised"}
    assert alert["subject"] == f"[spotkeeper critical] {ENDPOINT_DOWN} is in ALARM: replacement loading, no fallback"
    assert alert["body"]["why"] == "replacement i-0replacement00001 loading (660 s left)"


def test_alarm_with_the_replacement_past_its_deadline_falls_back(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    loading(capacity, "i-0replacement00001", started_at=clock.now() - 901)
    assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())) == "fell-back"
    assert base_capacity(stack) == 1 and capacity.endpoint().mode == ON_DEMAND
    alerts = {a["attributes"]["event"]: a for a in stack.alerts()}
    assert alerts["alarm-raised"]["body"]["why"] == "launch deadline passed for i-0replacement00001"
    assert alerts["fallback-on-demand"]["body"]["fallback_because"] == "launch deadline passed for i-0replacement00001"


def test_alarm_with_no_launch_pending_falls_back(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())) == "fell-back"
    assert base_capacity(stack) == 1
    alerts = {a["attributes"]["event"]: a for a in stack.alerts()}
    assert alerts["alarm-raised"]["body"]["why"] == "no replacement launch pending"


def test_a_replacement_interrupted_while_loading_is_not_a_reason_to_wait(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    loading(capacity, "i-0replacement00001", started_at=clock.now() - 60)
    capacity.deps.state.begin_replacement(
        stack.group, "i-0replacement00001", "doomed_at", clock.now() - 10, "event-1", "scale-out", 1
    )
    assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())) == "fell-back"


def test_alarm_before_the_first_instance_ever_served_only_alerts(stack):
    # Given a fresh stack whose first instance is still loading (or never got a launch event at all)
    clock = SimClock()
    capacity = Capacity(stack, clock)
    # When the alarm fires, however often, and the schedule looks again later
    for _ in range(3):
        assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())) == "not-yet-served"
    clock.advance(3600)
    assert capacity.invoke(schedule(clock.now())) == "on-spot"
    # Then one critical alert, no On-Demand
    [alert] = stack.alerts()
    assert alert["subject"].endswith("nothing served yet, no fallback")
    assert alert["attributes"]["severity"] == "critical"
    assert base_capacity(stack) == 0 and capacity.endpoint().mode == SPOT


def test_a_held_alarm_falls_back_on_schedule_once_the_replacement_misses_its_deadline(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    loading(capacity, "i-0replacement00001", started_at=clock.now() - 300)
    alarm = alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())
    assert capacity.invoke(alarm) == "replacement-loading"
    # While it loads, the schedule holds too
    clock.advance(300)
    assert capacity.invoke(schedule(clock.now())) == "on-spot"
    assert base_capacity(stack) == 0
    # Past the deadline, with the alarm still in ALARM (CloudWatch sends no second event), the schedule falls back
    clock.advance(301)
    runs = [capacity.invoke(schedule(clock.now())) for _ in range(2)]
    assert runs[0] == "fell-back" and capacity.endpoint().mode == ON_DEMAND
    assert base_capacity(stack) == 1
    # And a replay of the alarm changes nothing more
    assert capacity.invoke(alarm) == "already-on-demand"
    alerts = stack.alerts()
    assert kinds(alerts) == ["alarm-raised", "fallback-on-demand"]
    assert alerts[1]["body"]["fallback_because"] == "launch deadline passed for i-0replacement00001"


def test_replayed_and_reordered_alarm_events_after_recovery_change_nothing(stack):
    # Given the alarm fired while a replacement loaded, and cleared once it served
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    loading(capacity, "i-0replacement00001", started_at=clock.now() - 200)
    raised = alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())
    clock.advance(240)
    state = capacity.deps.state
    state.set_serving(
        stack.group, "i-0replacement00001", "10.0.1.11", clock.now(), state.get_endpoint(stack.group).version
    )
    state.complete_launch(stack.group, "i-0replacement00001")
    clock.advance(120)
    cleared = alarm_change(ENDPOINT_DOWN, "OK", clock.now(), previous="ALARM")
    # When EventBridge delivers each of them one to three times, out of order, long after the deadline
    clock.advance(3600)
    deliveries = [raised, raised, cleared, raised, cleared, cleared]
    for seed in (1, 2, 3):
        random.Random(seed).shuffle(deliveries)
        outcomes = {capacity.invoke(event) for event in deliveries}
        assert outcomes <= {"recovered", "recovering", "replacement-loading", "alerted"}
        assert capacity.invoke(schedule(clock.now())) == "on-spot"
    # Then nothing fell back, and each transition was alerted once
    assert base_capacity(stack) == 0 and capacity.endpoint().mode == SPOT
    assert sorted(kinds(stack.alerts())) == ["alarm-ok", "alarm-raised"]


def test_an_alarm_older_than_the_serving_instance_does_not_fall_back(stack):
    # The replacement serves, but the alarm has not turned OK yet (it needs fresh datapoints)
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    raised = alarm_change(ENDPOINT_DOWN, "ALARM", clock.now() - 120)
    capacity.deps.state.record_endpoint_alarm(stack.group, "ALARM", clock.now() - 120)
    state = capacity.deps.state
    state.set_serving(
        stack.group, "i-0replacement00001", "10.0.1.11", clock.now(), state.get_endpoint(stack.group).version
    )
    assert capacity.invoke(raised) == "recovering"
    assert capacity.invoke(schedule(clock.now())) == "on-spot"
    assert base_capacity(stack) == 0


def replacement_serving_since(capacity: Capacity, at: float, replacement: str = "i-0replacement00001") -> str:
    """The serving instance was terminated with no warning; its replacement loaded and serves from ``at``."""
    state, group = capacity.deps.state, capacity.stack.group
    loading(capacity, replacement, started_at=at - 210)
    assert state.set_serving(group, replacement, "10.0.1.11", at, state.get_endpoint(group).version)
    state.complete_launch(group, replacement)
    return replacement


def test_an_alarm_that_fires_after_the_replacement_serves_does_not_fall_back(stack):
    # Given the replacement of an instance terminated by hand serves since 28 s, no launch pending any more
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    replacement = replacement_serving_since(capacity, clock.now() - 28)
    # When the endpoint-down alarm, judging the minutes nothing served, reaches ALARM only now
    outcome = capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now()))
    # Then ops are told the alarm fired and the endpoint serves again; nothing falls back
    assert outcome == "recovering"
    [alert] = stack.alerts()
    assert alert["subject"] == f"[spotkeeper critical] {ENDPOINT_DOWN} is in ALARM: serving again, no fallback"
    assert alert["body"]["why"] == f"{replacement} serves again: ready 28 s ago, no probe failed since"
    # And while its probes keep succeeding, the schedule holds the still-ALARM alarm back too (its OK is late)
    clock.advance(300)
    capacity.deps.state.record_probe(stack.group, replacement, True, at=clock.now() - 30)
    assert capacity.invoke(schedule(clock.now())) == "on-spot"
    assert base_capacity(stack) == 0 and capacity.endpoint().mode == SPOT


@pytest.mark.parametrize("failing", [True, False], ids=["probe-failing", "no-probe-since"])
def test_an_alarm_while_the_serving_instance_is_not_proven_healthy_falls_back(stack, failing):
    # Given the replacement served, but its probe failed since, or nothing proved it healthy for minutes
    clock = SimClock()
    capacity = Capacity(stack, clock)
    has_served(capacity, clock.now() - 3600)
    replacement = replacement_serving_since(capacity, clock.now() - (28 if failing else 600))
    if failing:
        capacity.deps.state.record_probe(stack.group, replacement, False)
    # When the alarm fires, there is no launch pending: Spot is not delivering
    assert capacity.invoke(alarm_change(ENDPOINT_DOWN, "ALARM", clock.now())) == "fell-back"
    assert base_capacity(stack) == 1


def test_probe_successes_are_recorded_newest_first(stack):
    # Two overlapping probe runs: the older success, finishing last, does not move the last healthy time back
    state = Capacity(stack, SimClock()).deps.state
    state.record_probe(stack.group, "i-0a", True, at=200.0)
    state.record_probe(stack.group, "i-0a", True, at=140.0)
    assert state.get_instance(stack.group, "i-0a").probe_ok_at == 200.0


# --- fall-forward ------------------------------------------------------------------------------------
def test_fall_forward_does_nothing_while_on_spot(stack, capacity):
    capacity.market.set_score(10)
    assert capacity.invoke(schedule(capacity.clock.now())) == "on-spot"
    assert capacity.group.refresh_calls == [] and capacity.market.score_calls() == []


def test_fall_forward_waits_for_the_minimum_time_on_demand(stack, capacity):
    clock = capacity.clock
    fall_back(capacity)
    capacity.market.set_score(10)
    clock.advance(MIN_ON_DEMAND - 1)
    assert capacity.invoke(schedule(clock.now())) == "too-soon"
    assert capacity.group.refresh_calls == [] and capacity.market.score_calls() == []
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1


def test_fall_forward_does_nothing_while_scores_are_low(stack, capacity):
    clock = capacity.clock
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND)
    capacity.market.set_score(6)  # one under the threshold
    assert capacity.invoke(schedule(clock.now())) == "spot-unlikely"
    assert capacity.group.refresh_calls == []
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
    assert capacity.endpoint().mode == ON_DEMAND and stack.alerts() == []
    # The scores asked are for the group's types, one instance, per Availability Zone, in its region
    [asked] = capacity.market.score_calls()
    assert asked["InstanceTypes"] == ["g5.2xlarge", "g6.2xlarge"]
    assert asked["TargetCapacity"] == 1 and asked["SingleAvailabilityZone"] is True
    assert asked["RegionNames"] == ["us-east-1"]


def test_a_high_score_in_a_zone_the_group_does_not_use_does_not_count(stack, capacity):
    clock = capacity.clock
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND)
    others = [zone_id for zone_id in capacity.market.zones if zone_id != capacity.zone_id()]
    capacity.market.set_score(2)
    capacity.market.set_score(10, others)
    assert capacity.invoke(schedule(clock.now())) == "spot-unlikely"
    capacity.market.set_score(7, [capacity.zone_id()])
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"


def test_fall_forward_lowers_the_base_once_and_starts_no_refresh_when_spot_is_back(stack, capacity):
    # Given a group on On-Demand for longer than the minimum, and Spot scoring 8 in its zone again
    clock = capacity.clock
    before = policy_of(stack)
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND + 60)
    capacity.market.set_score(8, [capacity.zone_id()])
    capacity.market.set_price("g5.2xlarge", 0.45)
    capacity.market.set_price("g6.2xlarge", 0.52)
    # When the schedule fires, is delivered twice, and fires again five minutes later
    tick = schedule(clock.now())
    outcomes = [capacity.invoke(tick), capacity.invoke(tick)]
    clock.advance(300)
    outcomes.append(capacity.invoke(schedule(clock.now())))
    # Then the policy is back to Spot only, once, and that is all spotkeeper does: lowering OnDemandBaseCapacity
    # makes Auto Scaling replace the On-Demand instance, launch before terminate (API_InstancesDistribution); an
    # instance refresh on top would replace every instance of the group
    assert outcomes == ["returning-to-spot", "on-spot", "on-spot"]
    assert capacity.group.refresh_calls == []
    assert policy_of(stack) == before
    endpoint = capacity.endpoint()
    assert endpoint.mode == SPOT and endpoint.mode_reason.startswith("spot-back: placement score 8")
    # And one alert says so, with what it saves per hour (g5.2xlarge On-Demand list price against Spot)
    [alert] = stack.alerts()
    assert alert["attributes"] == {"severity": "info", "event": "fall-forward-spot"}
    saving = alert["body"]["saving"]
    assert saving["on_demand_instance_type"] == "g5.2xlarge" and saving["spot_usd_per_hour"] == 0.45
    assert saving["usd_per_hour"] == pytest.approx(1.212 - 0.45)
    assert "saving about $0.76/h" in alert["subject"]
    assert alert["body"]["replacing_on_demand"] == 1 and alert["body"]["on_demand_base_capacity"] == 0


def test_price_history_is_the_second_signal_when_scores_are_unavailable(stack, capacity):
    clock = capacity.clock
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND)
    capacity.market.withhold_scores("UnauthorizedOperation")
    # No Spot price in the group's zone: nothing says Spot is back
    assert capacity.invoke(schedule(clock.now())) == "spot-unlikely"
    # A Spot price close to On-Demand means Spot is scarce
    capacity.market.set_price("g5.2xlarge", 1.20, zones=["us-east-1a"])
    assert capacity.invoke(schedule(clock.now())) == "spot-unlikely"
    assert capacity.group.refresh_calls == []
    # A Spot price well under On-Demand is the signal
    capacity.market.set_price("g6.2xlarge", 0.40, zones=["us-east-1a"])
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    [alert] = stack.alerts()
    assert alert["body"]["signal"] == "spot-price"
    assert alert["body"]["saving"]["spot_instance_type"] == "g6.2xlarge"


def die_after_lowering_the_base(capacity, monkeypatch) -> dict:
    """A fall-forward that dies after it lowered the base, before it recorded the switch. Returns its event."""
    real_set_mode = capacity.deps.state.set_mode

    def dying_once(*args, **kwargs):
        monkeypatch.setattr(capacity.deps.state, "set_mode", real_set_mode)
        raise RuntimeError("Lambda timed out")

    monkeypatch.setattr(capacity.deps.state, "set_mode", dying_once)
    tick = schedule(capacity.clock.now())
    with pytest.raises(RuntimeError):
        capacity.invoke(tick)
    return tick


def test_interrupted_fall_forward_is_finished_as_it_was_decided(stack, capacity, monkeypatch):
    clock = capacity.clock
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND)
    capacity.market.set_score(9)
    capacity.market.set_price("g5.2xlarge", 0.5)
    # Given the reaction dies after lowering the base (Auto Scaling is replacing the On-Demand instance), before
    # recording the switch
    tick = die_after_lowering_the_base(capacity, monkeypatch)
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
    assert capacity.endpoint().mode == ON_DEMAND
    # When Lambda retries it, Spot scoring low by then
    capacity.market.set_score(2)
    assert capacity.invoke(tick) == "returning-to-spot"
    # Then the switch the group already got is recorded (not undone: that would replace the Spot instance again), and
    # alerted once
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
    endpoint = capacity.endpoint()
    assert endpoint.mode == SPOT and endpoint.mode_reason.startswith("spot-back: placement score 9")
    assert kinds(stack.alerts()) == ["fall-forward-spot"]


def test_fall_forward_alert_that_failed_is_sent_by_the_next_run(stack, capacity, monkeypatch):
    clock = capacity.clock
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND)
    capacity.market.set_score(9)
    capacity.market.set_price("g5.2xlarge", 0.5)
    real_send = capacity.deps.alerts.send

    def failing(alert):
        monkeypatch.setattr(capacity.deps.alerts, "send", real_send)
        raise RuntimeError("SNS unavailable")

    monkeypatch.setattr(capacity.deps.alerts, "send", failing)
    with pytest.raises(RuntimeError):
        capacity.invoke(schedule(clock.now()))
    clock.advance(300)
    assert [capacity.invoke(schedule(clock.now())) for _ in range(2)] == ["on-spot", "on-spot"]
    assert kinds(stack.alerts()) == ["fall-forward-spot"]
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0


def test_late_spot_failure_after_fall_forward_changes_nothing(stack, capacity):
    clock = capacity.clock
    old_failure = launch_failure(stack, NO_SPOT_CAPACITY, clock.now())
    assert capacity.invoke(old_failure) == "fell-back"
    clock.advance(MIN_ON_DEMAND)
    capacity.market.set_score(9)
    assert capacity.invoke(schedule(clock.now())) == "returning-to-spot"
    # A redelivery of the failure from before the fall-forward arrives late
    assert capacity.invoke(old_failure) == "stale"
    assert capacity.endpoint().mode == SPOT
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
    # But a new failure after it falls back again
    clock.advance(30)
    assert capacity.invoke(launch_failure(stack, NO_SPOT_CAPACITY, clock.now())) == "fell-back"
    assert capacity.endpoint().mode == ON_DEMAND


# --- reconcile, every five minutes -------------------------------------------------------------------
def redeploy(stack: Any, **distribution: int) -> dict[str, Any]:
    """What `sam deploy` with a changed launch template does: a new template version, and the template's whole
    MixedInstancesPolicy written to the group (OnDemandBaseCapacity 0 included)."""
    ec2, autoscaling = stack.session.client("ec2"), stack.session.client("autoscaling")
    version = ec2.create_launch_template_version(
        LaunchTemplateId=stack.launch_template_id,
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g5.2xlarge", "UserData": "bmV3"},
    )["LaunchTemplateVersion"]["VersionNumber"]
    policy = {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateId": stack.launch_template_id, "Version": str(version)},
            "Overrides": [{"InstanceType": "g5.2xlarge"}, {"InstanceType": "g6.2xlarge"}],
        },
        "InstancesDistribution": {
            "OnDemandBaseCapacity": 0,
            "OnDemandPercentageAboveBaseCapacity": 0,
            "SpotAllocationStrategy": "price-capacity-optimized",
            **distribution,
        },
    }
    autoscaling.update_auto_scaling_group(AutoScalingGroupName=stack.group, MixedInstancesPolicy=policy)
    return policy_of(stack)


def test_reconcile_puts_the_on_demand_base_back_after_a_redeploy_reset_it(stack):
    # Given the group fell back to On-Demand, then a redeploy rewrote its policy with OnDemandBaseCapacity 0
    clock = SimClock()
    capacity = Capacity(stack, clock)
    fall_back(capacity)
    clock.advance(600)
    redeployed = redeploy(stack)
    assert base_capacity(stack) == 0
    # When the schedule runs (too soon to fall forward), twice
    runs = [capacity.invoke(schedule(clock.now())) for _ in range(2)]
    # Then the base is back to 1, and the rest of the redeployed policy (its new launch template version) is kept
    assert runs == ["too-soon; reconciled on-demand-base", "too-soon"]
    after = policy_of(stack)
    assert base_capacity(stack) == 1 and without_base(after) == without_base(redeployed)
    assert after["LaunchTemplate"]["LaunchTemplateSpecification"]["Version"] == "2"
    [alert] = stack.alerts()
    assert alert["attributes"] == {"severity": "warning", "event": "on-demand-base-restored"}
    assert alert["body"]["found"] == 0 and alert["body"]["restored"] == 1
    assert capacity.endpoint().mode == ON_DEMAND


def test_reconcile_leaves_a_return_to_spot_alone_that_lowered_the_base(stack, monkeypatch):
    from spotkeeper.logic.reconcile import reconcile

    clock = SimClock()
    capacity = Capacity(stack, clock)
    fall_back(capacity)
    clock.advance(MIN_ON_DEMAND)
    capacity.market.set_score(9)
    # A fall-forward half-way: base already 0 (Auto Scaling replacing the On-Demand instance), the switch not recorded
    die_after_lowering_the_base(capacity, monkeypatch)
    # The reconcile (a later run, say) does not put the base back: that would undo the return half-way
    assert reconcile(capacity.deps) == []
    assert base_capacity(stack) == 0 and stack.alerts() == []
    # While a base lowered without a return begun (a redeploy) is put back
    capacity.deps.state.set_mode(stack.group, ON_DEMAND, "r", clock.now(), ON_DEMAND, 1, expected_replicas=1)
    assert reconcile(capacity.deps) == ["on-demand-base"]
    assert base_capacity(stack) == 1


def test_reconcile_alerts_an_on_demand_base_the_spot_mode_does_not_explain(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    redeploy(stack, OnDemandBaseCapacity=1)
    runs = [capacity.invoke(schedule(clock.now())) for _ in range(2)]
    assert runs == ["on-spot; reconciled purchase-options-drift"] * 2
    assert base_capacity(stack) == 1 and capacity.endpoint().mode == SPOT
    [alert] = stack.alerts()  # once an hour
    assert alert["attributes"] == {"severity": "warning", "event": "purchase-options-drift"}


def test_reconcile_puts_a_missing_lifecycle_hook_back(stack):
    clock = SimClock()
    capacity = Capacity(stack, clock)
    autoscaling = stack.session.client("autoscaling")
    autoscaling.delete_lifecycle_hook(LifecycleHookName="spotkeeper-launch", AutoScalingGroupName=stack.group)
    runs = [capacity.invoke(schedule(clock.now())) for _ in range(2)]
    assert runs == ["on-spot; reconciled hooks", "on-spot"]
    hooks = {
        h["LifecycleHookName"]: h
        for h in autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=stack.group)["LifecycleHooks"]
    }
    launch = hooks["spotkeeper-launch"]
    assert launch["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert (launch["HeartbeatTimeout"], launch["DefaultResult"]) == (900, "ABANDON")
    assert hooks["spotkeeper-terminate"]["HeartbeatTimeout"] == 900  # present: left as it was
    assert kinds(stack.alerts()) == ["lifecycle-hooks-restored"]


def test_reconcile_gives_back_the_capacity_a_running_replacement_needs(stack):
    # Given an interruption's replacement started by scale-out (desired 1 -> 2), then a redeploy set desired to 1
    clock = SimClock()
    capacity = Capacity(stack, clock)
    [doomed] = [i["InstanceId"] for i in stack.group_description()["Instances"]]
    capacity.deps.state.begin_replacement(stack.group, doomed, "doomed_at", clock.now(), "event-1", "scale-out", 1)
    assert stack.group_description()["DesiredCapacity"] == 1
    # When the schedule runs
    runs = [capacity.invoke(schedule(clock.now())) for _ in range(2)]
    # Then the group has room for the replacement again
    assert runs == ["on-spot; reconciled desired-capacity", "on-spot"]
    assert stack.group_description()["DesiredCapacity"] == 2
    assert kinds(stack.alerts()) == ["desired-capacity-restored"]
    # And once the doomed instance is retired, nothing is given back again
    capacity.deps.state.finish_action(stack.group, doomed, "retire")
    stack.session.client("autoscaling").set_desired_capacity(AutoScalingGroupName=stack.group, DesiredCapacity=1)
    assert capacity.invoke(schedule(clock.now())) == "on-spot"


# --- bad input ---------------------------------------------------------------------------------------
BREAKAGES = [
    lambda e: e["detail"].pop("StatusMessage"),
    lambda e: e.update({"detail-type": "EC2 Instance Launch Successful"}),
    lambda e: e.update({"source": "aws.ec2"}),
    lambda e: e["detail"]["state"].update({"value": "ALARMING"}),
    lambda e: e["detail"].pop("alarmName"),
]


def test_malformed_capacity_events_are_rejected_and_change_nothing(stack, capacity, caplog):
    samples = ["launch-unsuccessful-spot-capacity"] * 3 + ["alarm-endpoint-down"] * 2
    for sample, breakage in zip(samples, BREAKAGES, strict=True):
        event = load_event(sample)
        breakage(event)
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(InvalidEvent) as error:
            capacity.invoke(event)
        assert error.value.event_id == event["id"] and event["id"] in caplog.text
    assert capacity.endpoint().mode == SPOT and stack.alerts() == []
    assert policy_of(stack)["InstancesDistribution"]["OnDemandBaseCapacity"] == 0
