"""The first deploy: CloudFormation's creation of the group waits for a signal that an instance serves.

moto has no SignalResource: the CloudFormation client is a botocore Stubber holding the answers AWS documents
(an empty 200 while the stack waits, a ValidationError once the resource is no longer waiting).
"""

from __future__ import annotations

import pytest
from botocore.stub import Stubber
from conftest import MODEL_ID
from control import control_deps_for, instance_ids

from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LAUNCHING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock


@pytest.fixture
def world(stack):
    clock = SimClock()
    hooks = LifecycleHooks()
    fleet = EmulatedInstances(stack.session.client("ec2"), MODEL_ID, clock, load_seconds=0.0)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    [first] = instance_ids(stack)
    yield stack, clock, hooks, fleet, watcher, first
    fleet.close()


def _deps(world, **env):
    stack, clock, hooks, fleet, _, _ = world
    return control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks, **env)


def test_first_instance_to_serve_signals_the_waiting_stack(world):
    stack, clock, hooks, fleet, watcher, first = world
    deps = _deps(world, CREATION_SIGNAL_STACK="spotkeeper")
    # Given a model that takes most of its deadline to load, on the first instance of a new stack
    fleet.boot(first, load_seconds=850)
    with Stubber(deps.clients.cloudformation) as cloudformation:
        cloudformation.add_response(
            "signal_resource",
            {},
            {"StackName": "spotkeeper", "LogicalResourceId": "FleetGroup", "UniqueId": first, "Status": "SUCCESS"},
        )
        # When the launch hook waits for it
        result = invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), deps, clock=clock, timeout=900)
        # Then once it serves, the stack got its one signal
        cloudformation.assert_no_pending_responses()
    assert result["outcome"] == "promoted" and stack.eip_holder() == first


def test_a_stack_no_longer_waiting_refuses_the_signal_and_nothing_fails(world):
    stack, clock, hooks, fleet, watcher, first = world
    deps = _deps(world, CREATION_SIGNAL_STACK="spotkeeper")
    fleet.boot(first)
    with Stubber(deps.clients.cloudformation) as cloudformation:
        cloudformation.add_client_error(
            "signal_resource",
            service_error_code="ValidationError",
            service_message="Resource FleetGroup is in CREATE_COMPLETE state and cannot be signaled",
        )
        result = invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), deps, clock=clock)
        cloudformation.assert_no_pending_responses()
    assert result["outcome"] == "promoted" and stack.eip_holder() == first


def test_a_signal_that_fails_otherwise_fails_the_reaction_so_it_is_retried(world):
    stack, clock, hooks, fleet, watcher, first = world
    deps = _deps(world, CREATION_SIGNAL_STACK="spotkeeper")
    fleet.boot(first)
    with Stubber(deps.clients.cloudformation) as cloudformation:
        cloudformation.add_client_error("signal_resource", service_error_code="AccessDenied", http_status_code=403)
        event = watcher.lifecycle_event(first, LAUNCHING)
        with pytest.raises(Exception, match="AccessDenied"):
            invoke("lifecycle", event, deps, clock=clock)
        # When Lambda retries the event, the instance already serves: the signal is sent again all the same
        cloudformation.add_response("signal_resource", {})
        assert invoke("lifecycle", event, deps, clock=clock)["outcome"] in {"promoted", "continued"}
        cloudformation.assert_no_pending_responses()
    assert stack.eip_holder() == first


def test_attach_mode_never_signals(world):
    stack, clock, hooks, fleet, watcher, first = world
    deps = _deps(world)  # CREATION_SIGNAL_STACK empty, as the template sets it in attach mode
    fleet.boot(first)
    with Stubber(deps.clients.cloudformation) as cloudformation:  # no answers: any call would raise
        result = invoke("lifecycle", watcher.lifecycle_event(first, LAUNCHING), deps, clock=clock)
        cloudformation.assert_no_pending_responses()
    assert result["outcome"] == "promoted"
