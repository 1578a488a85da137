"""Every events/ sample reaches exactly the rules of the function it is written for, per template.yaml.

The samples are written for a stack named `spotkeeper` (tests/cfn.py STACK_NAME): in create mode its group is
`spotkeeper-tgi` and its alarms are `spotkeeper-<alarm>`. Attach mode with ExistingGroupName=spotkeeper-tgi
must route them the same way.

The matching is moto's own EventBridge pattern matching (tests/cfn.py `pattern_matches`, the drill's bus); the
operator table at the end checks it against EventBridge's documented answers.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from cfn import (
    ACCOUNT_ID,
    EVENTS_DIR,
    GROUP_NAME,
    REGION,
    STACK_NAME,
    Stack,
    load_event,
    load_template,
    pattern_matches,
    stack_rules,
)

SPOT_INTERRUPTION = ("InterruptionFunction", "SpotInterruption")
REBALANCE = ("InterruptionFunction", "Rebalance")
LIFECYCLE = ("LifecycleFunction", "LifecycleHook")
LAUNCH_UNSUCCESSFUL = ("CapacityFunction", "LaunchUnsuccessful")
ALARM_STATE = ("CapacityFunction", "AlarmStateChange")

# sample -> the (function, event) rules it must reach, and no others.
EXPECTED_ROUTES: dict[str, set[tuple[str, str]]] = {
    "spot-interruption-warning.json": {SPOT_INTERRUPTION},
    "rebalance-recommendation.json": {REBALANCE},
    "lifecycle-launch.json": {LIFECYCLE},
    "lifecycle-terminate.json": {LIFECYCLE},
    "launch-unsuccessful-spot-capacity.json": {LAUNCH_UNSUCCESSFUL},
    "launch-unsuccessful-bad-ami.json": {LAUNCH_UNSUCCESSFUL},
    "alarm-endpoint-down.json": {ALARM_STATE},
    "alarm-endpoint-recovered.json": {ALARM_STATE},
    # Scheduled events are not pattern-matched: the schedule targets its function directly.
    "schedule.json": set(),
    "capacity-schedule.json": set(),
    # Negatives. Another group's hook never reaches us.
    "lifecycle-launch-other-group.json": set(),
    # EC2 events cannot be filtered on the group: these reach the interruption function, whose code checks
    # membership and must take no action.
    "spot-interruption-unknown-instance.json": {SPOT_INTERRUPTION},
    "malformed-spot-interruption.json": {SPOT_INTERRUPTION},
    # Right source, type, group and hook: delivered, then rejected by the handler's parser (and DLQ'd).
    "malformed-lifecycle.json": {LIFECYCLE},
}

ENVELOPE = {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
CREATE = {}
ATTACH = {
    "Mode": "attach",
    "ExistingGroupName": GROUP_NAME,
    "ExistingEipAllocationId": "eipalloc-0123456789abcdef0",
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def _routes(stack: Stack, event: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r.function, r.event) for r in stack_rules(stack) if r.pattern and pattern_matches(r.pattern, event)}


def test_every_sample_has_an_expected_route() -> None:
    # Given the events folder / Then each sample there is covered by this test, and each one named here exists
    assert {p.name for p in EVENTS_DIR.glob("*.json")} == set(EXPECTED_ROUTES)


@pytest.mark.parametrize("mode", [CREATE, ATTACH], ids=["create", "attach"])
@pytest.mark.parametrize("sample", sorted(EXPECTED_ROUTES))
def test_sample_reaches_exactly_its_rules(template: dict[str, Any], mode: dict[str, str], sample: str) -> None:
    # Given the stack the samples are written for
    stack = Stack(template, parameters=mode)
    # When EventBridge matches the sample against every rule of the stack
    routes = _routes(stack, load_event(sample))
    # Then it reaches exactly the rules of the function it is meant for
    assert routes == EXPECTED_ROUTES[sample]


def test_another_stack_name_does_not_receive_the_samples(template: dict[str, Any]) -> None:
    # Given the same template deployed as a different stack (group and alarm names derive from it)
    stack = Stack(template, stack_name="spotkeeper-dev")
    # Then group- or alarm-scoped samples reach none of its rules, while EC2 events still do
    for sample, expected in EXPECTED_ROUTES.items():
        routes = _routes(stack, load_event(sample))
        ec2_routes = {r for r in expected if r[0] == "InterruptionFunction"}
        assert routes == ec2_routes, sample


@pytest.mark.parametrize(
    ("sample", "function", "event_name", "schedule"),
    [
        ("schedule.json", "HealthFunction", "Probe", "rate(1 minute)"),
        ("capacity-schedule.json", "CapacityFunction", "FallForward", "rate(5 minutes)"),
    ],
)
def test_schedule_samples_name_their_rules(
    template: dict[str, Any], sample: str, function: str, event_name: str, schedule: str
) -> None:
    stack = Stack(template)
    rule = next(r for r in stack_rules(stack) if (r.function, r.event) == (function, event_name))
    event = load_event(sample)
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"] == [f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{rule.name}"]
    assert rule.schedule == schedule


def test_alarm_samples_describe_the_templates_endpoint_down_alarm(template: dict[str, Any]) -> None:
    stack = Stack(template)
    alarm = stack.resolve(template["Resources"]["EndpointDownAlarm"]["Properties"])
    for sample, state, previous in [
        ("alarm-endpoint-down.json", "ALARM", "OK"),
        ("alarm-endpoint-recovered.json", "OK", "ALARM"),
    ]:
        detail = load_event(sample)["detail"]
        assert detail["alarmName"] == alarm["AlarmName"] == f"{STACK_NAME}-endpoint-down"
        assert (detail["state"]["value"], detail["previousState"]["value"]) == (state, previous)
        metric = detail["configuration"]["metrics"][0]["metricStat"]["metric"]
        assert metric["namespace"] == alarm["Namespace"]
        assert metric["name"] == alarm["MetricName"]
        assert metric["dimensions"] == {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        assert load_event(sample)["resources"] == [
            f"arn:aws:cloudwatch:{REGION}:{ACCOUNT_ID}:alarm:{alarm['AlarmName']}"
        ]


def test_lifecycle_samples_carry_the_templates_hooks(template: dict[str, Any]) -> None:
    stack = Stack(template)
    hooks = {
        h["LifecycleTransition"]: h["LifecycleHookName"]
        for h in stack.resolve(template["Resources"]["FleetGroup"]["Properties"]["LifecycleHookSpecificationList"])
    }
    launch = load_event("lifecycle-launch.json")["detail"]
    terminate = load_event("lifecycle-terminate.json")["detail"]
    assert hooks[launch["LifecycleTransition"]] == launch["LifecycleHookName"]
    assert hooks[terminate["LifecycleTransition"]] == terminate["LifecycleHookName"]
    assert launch["AutoScalingGroupName"] == terminate["AutoScalingGroupName"] == GROUP_NAME
    malformed = load_event("malformed-lifecycle.json")["detail"]
    assert "LifecycleActionToken" not in malformed


def test_launch_failure_samples_carry_their_reasons() -> None:
    spot = load_event("launch-unsuccessful-spot-capacity.json")["detail"]
    assert spot["StatusMessage"] == (
        "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available "
        "that matches your request. Launching EC2 instance failed."
    )
    bad_ami = load_event("launch-unsuccessful-bad-ami.json")["detail"]
    assert "Spot" not in bad_ami["StatusMessage"]
    assert "Capacity" not in bad_ami["StatusMessage"]


@pytest.mark.parametrize("sample", sorted(EXPECTED_ROUTES))
def test_sample_is_shaped_as_aws_delivers_it(sample: str) -> None:
    event = load_event(sample)
    assert set(event) == ENVELOPE
    assert event["version"] == "0"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", event["id"])
    assert event["account"] == ACCOUNT_ID
    assert event["region"] == REGION
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])
    assert isinstance(event["resources"], list)
    assert isinstance(event["detail"], dict)


def test_sample_ids_are_unique() -> None:
    ids = [load_event(sample)["id"] for sample in EXPECTED_ROUTES]
    assert len(ids) == len(set(ids))


# Operators the template may use in the future; each row is (pattern, event, EventBridge's answer).
OPERATOR_CASES = [
    ({"source": ["aws.ec2"]}, {"source": "aws.ec2"}, True),
    ({"source": ["aws.ec2"]}, {"source": "aws.ec2x"}, False),
    ({"detail": {"n": [5]}}, {"detail": {"n": "5"}}, False),
    ({"detail": {"g": [{"prefix": "spotkeeper-"}]}}, {"detail": {"g": "spotkeeper-tgi"}}, True),
    ({"detail": {"g": [{"prefix": "spotkeeper-"}]}}, {"detail": {"g": "other"}}, False),
    ({"detail": {"g": [{"suffix": "-tgi"}]}}, {"detail": {"g": "spotkeeper-tgi"}}, True),
    ({"resources": [{"wildcard": "arn:*:alarm:spotkeeper-*"}]}, {"resources": ["x", "arn:a:alarm:spotkeeper-1"]}, True),
    ({"resources": [{"wildcard": "arn:*:alarm:spotkeeper-*"}]}, {"resources": ["arn:a:alarm:other"]}, False),
    ({"detail": {"s": [{"anything-but": ["OK"]}]}}, {"detail": {"s": "ALARM"}}, True),
    ({"detail": {"s": [{"anything-but": ["OK"]}]}}, {"detail": {"s": "OK"}}, False),
    ({"detail": {"s": [{"exists": True}]}}, {"detail": {"s": "x"}}, True),
    ({"detail": {"s": [{"exists": True}]}}, {"detail": {}}, False),
    ({"detail": {"s": [{"equals-ignore-case": "alarm"}]}}, {"detail": {"s": "ALARM"}}, True),
    ({"detail": {"n": [{"numeric": [">", 0, "<=", 5]}]}}, {"detail": {"n": 5}}, True),
    ({"detail": {"n": [{"numeric": [">", 0, "<=", 5]}]}}, {"detail": {"n": 6}}, False),
    ({"detail": {"a": ["x"]}}, {"detail": {"a": {"nested": "x"}}}, False),
    ({"detail": {"a": {"b": ["x"]}}}, {"detail": {"a": {"b": "x"}}}, True),
    ({"detail": {"a": {"b": ["x"]}}}, {"detail": {"a": "x"}}, False),
]


@pytest.mark.parametrize(("pattern", "event", "expected"), OPERATOR_CASES)
def test_matcher_operators_agree_with_eventbridge(
    pattern: dict[str, Any], event: dict[str, Any], expected: bool
) -> None:
    assert pattern_matches(pattern, event) is expected
