"""Property-based: every control handler fed mutated AWS events.

A mutation either leaves a valid event (the handler acts or ignores it) or breaks it: then the handler raises
InvalidEvent, logs a line naming the event id, and nothing in AWS changed. No other exception is acceptable.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from capacity_harness import Capacity
from conftest import MODEL_ID, create_stack
from control import control_deps_for
from counts import COUNTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from spotkeeper.events import InvalidEvent
from spotkeeper_local.aws_events import load_event
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LifecycleHooks
from spotkeeper_local.sim_clock import SimClock

CASES = [
    ("interruption", "spot-interruption-warning"),
    ("interruption", "rebalance-recommendation"),
    ("lifecycle", "lifecycle-launch"),
    ("lifecycle", "lifecycle-terminate"),
    ("health", "schedule"),
    ("capacity", "launch-unsuccessful-spot-capacity"),
    ("capacity", "alarm-endpoint-down"),
    ("capacity", "capacity-schedule"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: Any, sample: dict) -> dict:
    event = copy.deepcopy(sample)
    for _ in range(draw(st.integers(1, 3))):
        candidates = paths(event)
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent = event
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return event


def side_effects(stack: Any, hooks: LifecycleHooks) -> tuple:
    group = stack.group_description()
    table = stack.session.client("dynamodb").scan(TableName=stack.table_name)["Items"]
    return (
        group["DesiredCapacity"],
        str(group.get("MixedInstancesPolicy")),
        sorted((i["InstanceId"], i["HealthStatus"]) for i in group["Instances"]),
        stack.eip_holder(),
        len(hooks.calls),
        sorted(str(item) for item in table if not item["pk"]["S"].startswith("idempotency#")),
    )


@pytest.mark.slow
@pytest.mark.parametrize(("function", "sample"), CASES)
def test_mutated_events_are_handled_or_rejected_cleanly(function, sample, caplog):
    with mock_aws():
        import boto3

        stack = create_stack(boto3.session.Session(region_name="us-east-1"))
        clock, hooks = SimClock(), LifecycleHooks()
        fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock)
        if function == "capacity":
            capacity = Capacity(stack, clock)
            deps, hooks = capacity.deps, capacity.hooks
        else:
            deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
        original = load_event(sample)
        outcomes: dict[str, int] = {"rejected": 0, "handled": 0}

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(event=mutated(original))
        def check(event: dict) -> None:
            caplog.clear()
            before = side_effects(stack, hooks)
            stack.alerts()
            try:
                invoke(function, event, deps, clock=clock)
            except InvalidEvent as error:
                outcomes["rejected"] += 1
                assert side_effects(stack, hooks) == before, "a rejected event changed AWS state"
                assert stack.alerts() == []
                assert "rejected malformed event" in caplog.text
                event_id = event.get("id") if isinstance(event, dict) else None
                if isinstance(event_id, str):
                    assert error.event_id == event_id and event_id in caplog.text
            else:
                outcomes["handled"] += 1

        try:
            check()
        finally:
            fleet.close()
        COUNTS["property examples run (mutated AWS events)"] += sum(outcomes.values())
        assert outcomes["rejected"] > 0, "the mutations never produced an invalid event: the test proves nothing"
