"""Races: interruption, launch-hook and probe reactions for the same instances, concurrently (threads against
moto's server) and sequentially in every order. The EIP never moves to an instance that is not ready, never
back to a doomed one, and exactly one replacement is asked for."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

import boto3
import pytest
from conftest import MODEL_ID, REGION, create_stack
from counts import COUNTS
from moto.server import ThreadedMotoServer

from spotkeeper.aws import AwsClients
from spotkeeper.deps import ControlDeps
from spotkeeper.events import LaunchLifecycleAction, SpotInterruptionWarning, parse_event
from spotkeeper.idempotency import once_per_event
from spotkeeper.logic.health import probe_endpoint
from spotkeeper.logic.interruption import react_to_interruption
from spotkeeper.logic.lifecycle import on_instance_launching
from spotkeeper.settings import ControlEnv
from spotkeeper_local.aws_events import spot_interruption
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import LambdaContext
from spotkeeper_local.lifecycle_hooks import LAUNCHING, GroupWatcher, LifecycleHooks
from spotkeeper_local.sim_clock import SimClock

# Threads against moto's server: slow, and `make unit` skips them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def session_for(endpoint: str) -> Any:
    session = boto3.session.Session(region_name=REGION)
    real_client = session.client

    def client(service: str, **kwargs: Any) -> Any:
        kwargs.setdefault("endpoint_url", endpoint)
        return real_client(service, **kwargs)

    def resource(service: str, **kwargs: Any) -> Any:
        kwargs.setdefault("endpoint_url", endpoint)
        return boto3.session.Session.resource(session, service, **kwargs)

    session.client = client  # every client of this session talks to the moto server
    session.resource = resource
    return session


class World:
    """A fresh stack on the moto server with the doomed instance serving and its replacement launched."""

    def __init__(self, endpoint: str) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
        self.endpoint = endpoint
        self.stack = create_stack(session_for(endpoint))
        self.clock = SimClock()
        self.hooks = LifecycleHooks()
        ec2 = self.stack.session.client("ec2")
        [self.doomed] = [i["InstanceId"] for i in self.stack.group_description()["Instances"]]
        self.fleet = EmulatedInstances(ec2, MODEL_ID, self.clock, load_seconds=30)
        self.fleet.boot(self.doomed, load_seconds=0)
        deps = self.deps()
        deps.fleet.move_eip(self.doomed)
        deps.state.set_serving(self.stack.group, self.doomed, deps.fleet.private_address(self.doomed), 0.0, 0)
        self.watcher = GroupWatcher(self.stack.session.client("autoscaling"), self.stack.group, self.hooks)
        self.eip_seen: list[tuple[str | None, dict[str, str]]] = []
        self.clock.on_advance(lambda _now: self.sample())

    def deps(self) -> ControlDeps:
        clients = AwsClients(session_for(self.endpoint))  # one session and clients per thread, as per Lambda
        self.hooks.install(clients.autoscaling)
        env = ControlEnv.from_environ(self.stack.env(READY_POLL_SECONDS="5"))
        return ControlDeps.build(env, clients=clients, tgi=self.fleet.tgi_client(), clock=self.clock)

    def sample(self) -> None:
        self.eip_seen.append((self.stack.eip_holder(), {i: s.state for i, s in self.fleet.servers.items()}))

    def close(self) -> None:
        self.fleet.close()


def reactions(world: World, warning: dict, launch_event: dict) -> dict[str, Any]:
    parsed_warning = parse_event(warning, SpotInterruptionWarning)
    parsed_launch = parse_event(launch_event, LaunchLifecycleAction)

    def launch(deps: ControlDeps) -> str:
        # As the lifecycle handler does: a second delivery while the first is still waiting is dropped.
        context = LambdaContext("spotkeeper-lifecycle", timeout_seconds=300, clock=world.clock)
        return once_per_event(
            deps, launch_event["id"], lambda: on_instance_launching(parsed_launch, deps, lambda: 300.0), context
        )

    return {
        "warning": lambda deps: react_to_interruption(parsed_warning, deps),
        "warning-again": lambda deps: react_to_interruption(parsed_warning, deps),
        "launch": launch,
        "launch-again": launch,
        "probe": lambda deps: probe_endpoint(deps),
    }


def start(world: World) -> tuple[dict, dict, str]:
    """The warning was delivered once: a replacement is launching. Returns the events to race."""
    warning = spot_interruption(world.doomed)
    world_deps = world.deps()
    react_to_interruption(parse_event(warning, SpotInterruptionWarning), world_deps)
    [launch_event] = [e for e in world.watcher.poll() if e["detail"]["LifecycleTransition"] == LAUNCHING]
    replacement = launch_event["detail"]["EC2InstanceId"]
    world.fleet.boot(replacement)
    return warning, launch_event, replacement


def check_invariants(world: World, replacement: str) -> None:
    for holder, states in world.eip_seen:
        if holder == replacement:
            assert states[replacement] == "ready", "EIP on a replacement whose TGI was not ready"
    holders = [h for h, _ in world.eip_seen]
    if replacement in holders:
        assert world.doomed not in holders[holders.index(replacement) :], "EIP moved back to the doomed instance"
    world.sample()
    stack = world.stack
    assert stack.eip_holder() == replacement
    assert (
        ControlDeps.build(ControlEnv.from_environ(stack.env()), clients=AwsClients(session_for(world.endpoint)))
        .state.get_endpoint(stack.group)
        .serving_instance_id
        == replacement
    )
    assert stack.group_description()["DesiredCapacity"] == 1  # one replacement asked for, the doomed one retired
    assert world.hooks.results_for(replacement, LAUNCHING) == ["CONTINUE"]
    kinds = Counter(a["attributes"]["event"] for a in stack.alerts())
    assert kinds["spot-interruption"] == 1 and kinds["eip-moved"] == 1


@pytest.mark.parametrize("order", list(itertools.permutations(["warning-again", "launch", "launch-again", "probe"])))
def test_every_order(moto_server, order):
    world = World(moto_server)
    try:
        warning, launch_event, replacement = start(world)
        steps = reactions(world, warning, launch_event)
        for name in order:
            steps[name](world.deps())
        probe_endpoint(world.deps())  # the scheduled probe eventually runs after everything
        check_invariants(world, replacement)
    finally:
        world.close()
    COUNTS["orderings tried (sequential)"] += 1


@pytest.mark.parametrize("round_", range(6))
def test_concurrent_reactions(moto_server, round_):
    world = World(moto_server)
    try:
        warning, launch_event, replacement = start(world)
        steps = reactions(world, warning, launch_event)
        names = ["warning-again", "launch", "launch-again", "probe", "probe"]
        names = names[round_ % len(names) :] + names[: round_ % len(names)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(names))

        def run(name: str) -> None:
            deps = world.deps()
            barrier.wait()
            try:
                steps[name](deps)
            except BaseException as error:  # surfaced below with its thread's name
                errors.append(error)

        threads = [threading.Thread(target=run, args=(name,), name=name) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        probe_endpoint(world.deps())
        check_invariants(world, replacement)
    finally:
        world.close()
    COUNTS["orderings tried (concurrent threads)"] += 1


def test_a_probe_that_hands_over_between_join_and_move_leaves_one_eip_alert(moto_server, monkeypatch):
    """The interleaving CI once hit by chance: the launch reaction puts the replacement in the ready set, the
    probe (seeing the doomed primary) hands the EIP over to it, then the launch reaction's own move finds it done.
    One move, so one `eip-moved` alert."""
    import spotkeeper.logic.lifecycle as lifecycle

    world = World(moto_server)
    try:
        warning, launch_event, replacement = start(world)
        join = lifecycle._join_ready_set
        probes: list[dict] = []

        def join_then_probe(instance_id: str, deps: ControlDeps) -> None:
            join(instance_id, deps)
            if not probes:
                probes.append(probe_endpoint(world.deps()))

        monkeypatch.setattr(lifecycle, "_join_ready_set", join_then_probe)
        for _ in range(int(60 / 5)):  # the replacement's TGI loads in 30 s of simulated time
            world.clock.advance(5)
        reactions(world, warning, launch_event)["launch"](world.deps())
        assert probes, "the racing probe never ran"
        probe_endpoint(world.deps())
        check_invariants(world, replacement)
    finally:
        world.close()
