"""Interruption warnings and rebalance recommendations, against moto."""

from __future__ import annotations

import logging

import pytest
from control import control_deps_for, instance_ids

from spotkeeper.events import InvalidEvent
from spotkeeper_local.aws_events import load_event, rebalance_recommendation, spot_interruption
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.sim_clock import SimClock


def test_warning_starts_a_replacement_while_the_doomed_instance_stays(stack, deps):
    # Given a group of one serving instance
    [doomed] = instance_ids(stack)
    # When its Spot interruption warning arrives three times
    event = spot_interruption(doomed)
    outcomes = [invoke("interruption", event, deps)["outcome"] for _ in range(3)]
    # Then one replacement launches alongside it, the doomed instance is still in service, one alert went out
    assert outcomes == ["replacement-started", "duplicate", "duplicate"]
    group = stack.group_description()
    assert group["DesiredCapacity"] == 2
    states = {i["InstanceId"]: i["LifecycleState"] for i in group["Instances"]}
    assert states[doomed] == "InService" and len(states) == 2
    alerts = stack.alerts()
    assert [a["attributes"] for a in alerts] == [{"severity": "warning", "event": "spot-interruption"}]
    assert alerts[0]["body"]["instance_id"] == doomed and doomed in alerts[0]["subject"]
    assert deps.state.get_instance(stack.group, doomed).doomed


def test_warning_for_an_instance_outside_the_group_changes_nothing(stack, deps):
    before = stack.group_description()
    result = invoke("interruption", spot_interruption("i-0123456789abcdef0"), deps)
    assert result == {"outcome": "ignored"}
    assert stack.group_description()["DesiredCapacity"] == before["DesiredCapacity"]
    assert stack.alerts() == []


def test_sample_for_an_unknown_instance_causes_no_action(stack, deps):
    assert invoke("interruption", load_event("spot-interruption-unknown-instance"), deps) == {"outcome": "ignored"}
    assert stack.group_description()["DesiredCapacity"] == 1 and stack.alerts() == []


def test_rebalance_then_warning_replaces_once_when_the_group_does_not_rebalance(aws):
    from conftest import create_stack

    stack = create_stack(aws, capacity_rebalance=False)
    deps = control_deps_for(stack, clock=SimClock())
    [at_risk] = instance_ids(stack)
    assert invoke("interruption", rebalance_recommendation(at_risk), deps)["outcome"] == "replacement-started"
    assert invoke("interruption", spot_interruption(at_risk), deps)["outcome"] == "recorded"
    assert stack.group_description()["DesiredCapacity"] == 2
    kinds = [a["attributes"]["event"] for a in stack.alerts()]
    assert kinds == ["rebalance-recommendation", "spot-interruption"]


def test_rebalance_is_recorded_only_when_the_group_rebalances_itself(stack, deps):
    [at_risk] = instance_ids(stack)
    event = rebalance_recommendation(at_risk)
    assert [invoke("interruption", event, deps)["outcome"] for _ in range(2)] == ["recorded", "duplicate"]
    assert stack.group_description()["DesiredCapacity"] == 1
    assert [a["attributes"]["severity"] for a in stack.alerts()] == ["info"]


def test_retry_after_a_half_done_reaction_does_not_add_a_second_instance(stack, monkeypatch, deps):
    [doomed] = instance_ids(stack)
    event = spot_interruption(doomed)
    # Given the alert fails after the group was already scaled out (SNS outage)
    calls = {"n": 0}
    real_send = deps.alerts.send

    def failing_once(alert):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("SNS unavailable")
        real_send(alert)

    monkeypatch.setattr(deps.alerts, "send", failing_once)
    with pytest.raises(RuntimeError):
        invoke("interruption", event, deps)
    # When Lambda retries the same event
    assert invoke("interruption", event, deps)["outcome"] == "replacement-started"
    # Then the group asked for exactly one extra instance
    assert stack.group_description()["DesiredCapacity"] == 2
    assert len(stack.alerts()) == 1


@pytest.mark.parametrize("sample", ["malformed-spot-interruption"])
def test_malformed_event_is_rejected_with_its_id_and_changes_nothing(stack, sample, caplog, deps):
    event = load_event(sample)
    with caplog.at_level(logging.ERROR), pytest.raises(InvalidEvent) as error:
        invoke("interruption", event, deps)
    assert error.value.event_id == event["id"]
    assert event["id"] in caplog.text and "rejected malformed event" in caplog.text
    assert stack.group_description()["DesiredCapacity"] == 1
    assert stack.alerts() == []


def test_warning_marks_the_replica_warned_first_and_requests_the_replacement_within_four_aws_calls(stack, deps):
    # Given every AWS call of the function is counted (botocore's events, as the benchmark counts them)
    calls: list[str] = []
    for client in (deps.clients.autoscaling, deps.clients.ec2, deps.clients.sns, deps.state._table.meta.client):
        client.meta.events.register(
            "before-parameter-build", lambda event_name, **_: calls.append(event_name.rsplit(".", 1)[-1])
        )
    [doomed] = instance_ids(stack)
    # When the warning for a group of one arrives
    invoke("interruption", spot_interruption(doomed), deps)
    # Then the first call marks the replica warned in the ready set (the gateway stops routing to it), and the
    # group was asked for a replacement by the fourth call
    assert calls[0] == "UpdateItem", calls
    assert "SetDesiredCapacity" in calls
    assert calls.index("SetDesiredCapacity") + 1 <= 4, calls


@pytest.mark.parametrize(
    ("warned", "leaving", "surplus"),
    [
        ("i-spot", set(), 1),  # a return to Spot: the On-Demand one goes once the new one serves
        ("i-spot", {"i-od"}, 0),  # Capacity Rebalancing replaces the one recorded at risk
        ("i-new", set(), 0),  # the new one itself is warned: if it goes, the group keeps the old one
    ],
)
def test_surplus_above_desired_is_what_auto_scaling_retires(warned, leaving, surplus):
    from spotkeeper.group import Group, GroupInstance
    from spotkeeper.logic.interruption import surplus_to_retire

    active = (
        GroupInstance("i-od", "InService"),
        GroupInstance("i-spot", "InService"),
        GroupInstance("i-new", "Pending:Wait"),
    )
    group = Group(name="g", desired=2, max_size=4, instances=active)
    assert surplus_to_retire(group, list(active), warned, leaving) == surplus
    at_desired = Group(name="g", desired=3, max_size=4, instances=active)
    assert surplus_to_retire(at_desired, list(active), warned, leaving) == 0
