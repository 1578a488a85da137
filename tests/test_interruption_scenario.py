"""The whole path of a Spot interruption on moto, with every event delivered three times in shuffled order."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from conftest import MODEL_ID
from control import control_deps_for, instance_ids
from scenario import Scenario

from spotkeeper_local.aws_events import spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lifecycle_hooks import LAUNCHING, TERMINATING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock

REPLACEMENT_LOAD_SECONDS = 90.0


@pytest.fixture
def world(stack):
    clock = SimClock()
    hooks = LifecycleHooks()
    ec2 = stack.session.client("ec2")
    [first] = instance_ids(stack)
    fleet = EmulatedInstances(
        ec2, MODEL_ID, clock, load_seconds=lambda iid: 0.0 if iid == first else REPLACEMENT_LOAD_SECONDS
    )
    deps = control_deps_for(stack, clock=clock, tgi=fleet.tgi_client(), hooks=hooks)
    watcher = GroupWatcher(stack.session.client("autoscaling"), stack.group, hooks)
    watcher.known = set()  # the first instance's launch hook is still pending when the stack comes up
    yield stack, clock, hooks, fleet, deps, watcher, ec2, first
    fleet.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_interruption_of_the_serving_instance_moves_the_eip_only_to_a_ready_replacement(world, seed):
    stack, clock, hooks, fleet, deps, watcher, ec2, doomed = world
    # Given the first instance was launched, found ready and made serving
    Scenario(deps, watcher, fleet, ec2, rng=random.Random(seed)).run()
    assert stack.eip_holder() == doomed
    assert deps.state.get_endpoint(stack.group).serving_instance_id == doomed
    stack.alerts()  # forget the set-up's alerts

    # Watch, at every tick of simulated time, where the EIP is and whether the replacement's TGI is ready
    timeline = []
    clock.on_advance(
        lambda now: timeline.append(
            (now, stack.eip_holder(), {iid: server.state for iid, server in fleet.servers.items()})
        )
    )

    # When the Spot interruption warning arrives (three times, shuffled with everything it causes)
    warned_at = clock.now()
    scenario = Scenario(deps, watcher, fleet, ec2, rng=random.Random(seed))
    scenario.emit(spot_interruption(doomed, at=warned_at))
    log = scenario.run()
    timeline.append((clock.now(), stack.eip_holder(), {iid: server.state for iid, server in fleet.servers.items()}))

    # Then a replacement launched while the doomed instance was still in service
    launches = [d for d in log if d.event["detail-type"] == "EC2 Instance-launch Lifecycle Action"]
    replacement = launches[0].event["detail"]["EC2InstanceId"]
    assert replacement != doomed
    # ...the EIP stayed on the doomed instance until the replacement's TGI was ready, and never went back
    holders = [holder for _, holder, _ in timeline]
    assert holders and holders[0] == doomed
    for _, holder, states in timeline:
        if holder == replacement:
            assert states[replacement] == "ready"
    first_on_replacement = holders.index(replacement)
    assert all(holder == replacement for holder in holders[first_on_replacement:])
    assert timeline[first_on_replacement][0] - warned_at >= REPLACEMENT_LOAD_SECONDS
    # ...the launch hook was continued and the doomed instance's terminate hook completed
    assert hooks.results_for(replacement, LAUNCHING) == ["CONTINUE"]
    assert hooks.results_for(doomed, TERMINATING) == ["CONTINUE"]
    # ...AWS ends with the EIP and the state table on the replacement, a group of one again
    assert stack.eip_holder() == replacement
    assert deps.state.get_endpoint(stack.group).serving_instance_id == replacement
    group = stack.group_description()
    assert group["DesiredCapacity"] == 1
    assert [i["InstanceId"] for i in group["Instances"]] == [replacement]
    # ...and exactly one alert per event, although each was delivered three times
    kinds = Counter(alert["attributes"]["event"] for alert in stack.alerts())
    assert kinds == {"spot-interruption": 1, "eip-moved": 1, "instance-terminating": 1}
    assert Counter(d.event["id"] for d in log) == {event_id: 3 for event_id in {d.event["id"] for d in log}}
