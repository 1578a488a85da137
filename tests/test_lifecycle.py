"""Launch and terminate hooks: readiness gate, hand-over to the probe, deadline, drain, bad input."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest
from conftest import MODEL_ID
from control import control_deps_for, instance_ids

from spotkeeper.events import InvalidEvent
from spotkeeper_local.aws_events import load_event, scheduled
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, TERMINATING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock


@pytest.fixture
def world(stack):
    clock = SimClock()
    hooks = LifecycleHooks()
    ec2 = stack.session.client("ec2")
    fleet = EmulatedInstances(ec2, MODEL_ID, clock, load_seconds=0.0)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    [instance] = instance_ids(stack)

    def deps(**env):
        return control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks, **env)

    yield stack, clock, hooks, fleet, watcher, instance, deps
    fleet.close()


def launch_event(watcher, instance):
    return watcher.lifecycle_event(instance, LAUNCHING)


def test_slow_model_load_is_handed_over_to_the_probe_which_continues_it(world):
    stack, clock, hooks, fleet, watcher, instance, make_deps = world
    deps = make_deps()
    fleet.boot(instance, load_seconds=600)
    # When the launch hook fires and TGI needs 600 s, longer than the function's 300 s
    assert invoke("lifecycle", launch_event(watcher, instance), deps, clock=clock, timeout=300)["outcome"] == (
        "handed-over"
    )
    # Then nothing moved yet, the hook is still pending and was kept alive
    assert stack.eip_holder() is None and hooks.results_for(instance, LAUNCHING) == [None]
    assert any(name == "RecordLifecycleActionHeartbeat" for name, _ in hooks.calls)
    # When the scheduled probe runs after the model loaded
    clock.advance(400)
    result = invoke("health", scheduled(), deps, clock=clock)
    # Then it promoted the instance
    assert result["launches"] == {instance: "promoted"}
    assert hooks.results_for(instance, LAUNCHING) == ["CONTINUE"]
    assert stack.eip_holder() == instance
    assert [a["attributes"]["event"] for a in stack.alerts()] == ["eip-moved"]


def test_launch_past_its_deadline_is_abandoned_once(world):
    stack, clock, hooks, fleet, watcher, instance, make_deps = world
    deps = make_deps(LAUNCH_DEADLINE_SECONDS="200")
    fleet.boot(instance, load_seconds=10_000)
    event = launch_event(watcher, instance)
    assert invoke("lifecycle", event, deps, clock=clock)["outcome"] == "abandoned"
    assert invoke("lifecycle", event, deps, clock=clock)["outcome"] == "abandoned"  # idempotent replay
    assert hooks.results_for(instance, LAUNCHING) == ["ABANDON"]
    assert stack.eip_holder() is None
    alerts = stack.alerts()
    assert [(a["attributes"]["event"], a["attributes"]["severity"]) for a in alerts] == [
        ("launch-abandoned", "critical")
    ]


def test_wrong_model_is_never_promoted(world):
    stack, clock, hooks, fleet, watcher, instance, make_deps = world
    deps = make_deps(LAUNCH_DEADLINE_SECONDS="60")
    fleet.boot(instance, model_id="someone/another-model")
    assert invoke("lifecycle", launch_event(watcher, instance), deps, clock=clock)["outcome"] == "abandoned"
    assert stack.eip_holder() is None


def test_terminate_hook_drains_in_flight_generation_before_continuing(world):
    stack, clock, hooks, fleet, watcher, instance, make_deps = world
    deps = make_deps(DRAIN_SECONDS="600")
    server = fleet.boot(instance)
    fleet.token_delay = 0.0
    server.token_delay = 0.05
    invoke("lifecycle", launch_event(watcher, instance), deps, clock=clock)
    # Given a long generation in flight on the instance
    finished = {}

    def generate():
        response = httpx.post(
            f"{server.url}/generate", json={"inputs": "hello", "parameters": {"max_new_tokens": 20}}, timeout=30
        )
        finished["status"] = response.status_code

    client = threading.Thread(target=generate)
    client.start()
    while server.in_flight == 0 and client.is_alive():
        threading.Event().wait(0.01)
    # When the instance's terminate hook fires (the drain polls in real time: sleep for real here)
    clock.sleep = lambda seconds: (threading.Event().wait(0.05), clock.advance(seconds))
    outcome = invoke("lifecycle", watcher.lifecycle_event(instance, TERMINATING), deps, clock=clock)
    client.join(5)
    # Then the generation finished before the hook was continued
    assert finished.get("status") == 200
    assert outcome == {"outcome": "completed"}
    assert hooks.results_for(instance, TERMINATING) == ["CONTINUE"]
    terminating = [a for a in stack.alerts() if a["attributes"]["event"] == "instance-terminating"]
    assert len(terminating) == 1 and terminating[0]["body"]["drain"] == "drained"
    # ...and being the serving instance with nothing to hand over to, it is no longer recorded as serving
    assert deps.state.get_endpoint(stack.group).serving_instance_id is None


def test_lifecycle_event_for_another_group_changes_nothing(world):
    stack, clock, hooks, fleet, watcher, instance, make_deps = world
    deps = make_deps()
    assert invoke("lifecycle", load_event("lifecycle-launch-other-group"), deps, clock=clock) == {"outcome": "ignored"}
    assert stack.eip_holder() is None and hooks.calls == [] and stack.alerts() == []


def test_malformed_lifecycle_event_is_rejected_with_its_id_and_changes_nothing(world, caplog):
    stack, clock, hooks, fleet, watcher, instance, make_deps = world
    deps = make_deps()
    event = load_event("malformed-lifecycle")
    with caplog.at_level(logging.ERROR), pytest.raises(InvalidEvent):
        invoke("lifecycle", event, deps, clock=clock)
    assert event["id"] in caplog.text
    assert stack.eip_holder() is None and hooks.calls == [] and stack.alerts() == []
    assert deps.state.waiting_launches(stack.group) == []
