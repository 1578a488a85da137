"""The first deploy: CloudFormation's creation of the group waits for a signal that an instance serves.

moto has no SignalResource: the local world answers it with ``StackSignals`` (AWS's documented behaviour: the
waiting resource takes the signal, a created one refuses every later signal with a ValidationError).
"""

from __future__ import annotations

import pytest
from conftest import MODEL_ID
from control import instance_ids

from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock
from spotkeeper_local.world import World


@pytest.fixture
def world(stack):
    clock = SimClock()
    hooks = LifecycleHooks()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=0.0)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    [first] = instance_ids(stack)
    yield stack, clock, hooks, fleet, watcher, first
    fleet.close()


def _local(world, **env) -> World:
    stack, clock, hooks, fleet, _, _ = world
    return World.build(
        stack.session,
        clock,
        {"lifecycle": stack.env(**env)},
        take_over_group=False,
        tgi=fleet.tgi_client(),
        hooks=hooks,
    )


def test_first_instance_to_serve_signals_the_waiting_stack(world):
    stack, clock, hooks, fleet, watcher, first = world
    local = _local(world, CREATION_SIGNAL_STACK="spotkeeper")
    # Given a model that takes most of its deadline to load, on the first instance of a new stack
    fleet.boot(first, load_seconds=850)
    # When the launch hook waits for it
    result = invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), local.deps["lifecycle"], clock=clock,
                    timeout=900)  # fmt: skip
    # Then once it serves, the stack got its one signal
    assert result["outcome"] == "promoted" and stack.eip_holder() == first
    assert local.signals.received == [
        {"StackName": "spotkeeper", "LogicalResourceId": "FleetGroup", "UniqueId": first, "Status": "SUCCESS"}
    ]


def test_a_stack_no_longer_waiting_refuses_the_signal_and_nothing_fails(world):
    stack, clock, hooks, fleet, watcher, first = world
    local = _local(world, CREATION_SIGNAL_STACK="spotkeeper")
    deps = local.deps["lifecycle"]
    assert deps.creation_signal.instance_serves("i-0aaaaaaaaaaaaaaaa") is True  # the stack is created
    fleet.boot(first)
    result = invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), deps, clock=clock)
    assert result["outcome"] == "promoted" and stack.eip_holder() == first
    assert [s["UniqueId"] for s in local.signals.received] == ["i-0aaaaaaaaaaaaaaaa"]


def test_a_signal_that_fails_otherwise_fails_the_reaction_so_it_is_retried(world):
    stack, clock, hooks, fleet, watcher, first = world
    local = _local(world, CREATION_SIGNAL_STACK="spotkeeper")
    deps = local.deps["lifecycle"]
    fleet.boot(first)
    local.signals.fail_next_with = "AccessDenied"
    event = watcher.lifecycle_event(first, LAUNCHING)
    with pytest.raises(Exception, match="AccessDenied"):
        invoke("lifecycle", event, deps, clock=clock)
    # When Lambda retries the event, the instance already serves: the signal is sent again all the same
    assert invoke("lifecycle", event, deps, clock=clock)["outcome"] in {"promoted", "continued"}
    assert [s["UniqueId"] for s in local.signals.received] == [first]
    assert stack.eip_holder() == first


def test_attach_mode_never_signals(world):
    stack, clock, hooks, fleet, watcher, first = world
    local = _local(world)  # CREATION_SIGNAL_STACK empty, as the template sets it in attach mode
    fleet.boot(first)
    result = invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), local.deps["lifecycle"], clock=clock)
    assert result["outcome"] == "promoted"
    assert local.signals.received == []
