"""The one local world: the stand-ins for what moto lacks, the instances' TGI, and the functions' wiring.

``World.build`` assembles it around one Auto Scaling group of an embedded AWS (the drill's moto server, or moto
in-process under ``mock_aws`` in the tests); the drill (``drill_world``), the bench (``bench/reaction.py``) and
the tests (``tests/control.py``, the capacity tests) all build it here:

* ``clients``: the handlers' boto3 clients (``AwsClients`` on the given session);
* ``hooks``: ``LifecycleHooks``, answering CompleteLifecycleAction / RecordLifecycleActionHeartbeat;
* ``signals``: ``StackSignals``, answering CloudFormation's SignalResource (the first deploy's creation signal);
* ``market``: ``SpotMarket``, answering GetSpotPlacementScores / DescribeSpotPriceHistory (typical prices from
  ``prices.json``) and deciding whether Spot launches find capacity;
* ``group``: ``GroupStandIn``, the group's lifecycle and its instance refreshes (``take_over_group=False``
  leaves moto's immediate launches to tests that turn group changes into events themselves);
* ``fleet``: one TGI emulator per instance (``EmulatedInstances``);
* ``deps``: each function's deps, built from its environment as its handler would, on these clients and clock.

Where the next pieces plug in, so they land on this one world:

* instance boot timing: ``load_seconds(instance_id)`` decides how long an instance takes from launch to TGI
  ready (the drill gives every instance the launch-to-ready model's total, ``launch_time``, or ``--load-seconds``);
* event delivery: ``pump`` hands what the group did (lifecycle and launch-failure events) to a ``deliver``
  callable; the drill puts them on the EventBridge bus (and with ``--chaos`` delivers each from a function's queue
  one to three times, late, out of order, lifecycle events now and then not at all: ``delivery_chaos``, in
  ``drill_world``'s ``_collect`` / ``_deliver``), a test may invoke handlers directly, duplicate or reorder them;
* scheduled actions: ``DrillWorld.at(t, label, action)`` in ``drill_world``; a scenario file's actions are
  calls on this world's parts (``market``, ``group``, ``fleet``) at their times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spotkeeper.aws import AwsClients
from spotkeeper.deps import CapacityDeps, ControlDeps
from spotkeeper.settings import CapacityEnv, ControlEnv
from spotkeeper_local.auto_scaling_group import GroupStandIn
from spotkeeper_local.emulated_fleet import EmulatedInstances
from spotkeeper_local.lambda_runtime import invoke
from spotkeeper_local.lifecycle_hooks import LifecycleHooks
from spotkeeper_local.spot_market import SpotMarket
from spotkeeper_local.stack_signals import StackSignals

CONTROL_FUNCTIONS = ("interruption", "lifecycle", "health")
DEFAULT_MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class World:
    clock: Any
    clients: AwsClients
    hooks: LifecycleHooks
    market: SpotMarket
    fleet: EmulatedInstances
    deps: dict[str, Any]
    group: GroupStandIn | None = None
    launched_at: dict[str, float] = field(default_factory=dict)
    signals: StackSignals = field(default_factory=StackSignals)

    @classmethod
    def build(
        cls,
        session: Any,
        clock: Any,
        env: dict[str, dict[str, str]],
        *,
        group: str | None = None,
        take_over_group: bool = True,
        launching: bool = True,
        load_seconds: float | Callable[[str], float] = 0.0,
        tgi_port: int | None = None,
        tgi: Any = None,
        tgi_from_fleet: bool = False,
        hooks: LifecycleHooks | None = None,
        spot_score: int = 9,
        typical_prices: bool = True,
        look: Any = None,
    ) -> World:
        """The world around ``group`` (its functions' environments in ``env``, by function folder name).

        ``launching``: the group's instances are launching now (each waits for its launch hook) rather than in
        service. ``tgi_port``: every instance's TGI listens on the instance's own private IP and this port (the
        drill and the bench); without it, each gets a loopback address and the deps reach it through the fleet
        (``tgi_from_fleet``) or through ``tgi``. ``look``: the session the world itself reads AWS with (default:
        ``session``; the bench passes an uncounted one). ``spot_score`` / ``typical_prices``: the market at the
        start (every zone's placement score; the price table's typical Spot prices quoted, or no price yet).
        """
        clients = AwsClients(session)
        hooks = hooks if hooks is not None else LifecycleHooks()
        hooks.install(clients.autoscaling)
        market = SpotMarket(default_score=spot_score, clock=clock.now if clock is not None else time.time)
        market.install(clients.ec2)
        if typical_prices:
            market.set_typical_prices()
        model_id = next((e["MODEL_ID"] for e in env.values() if "MODEL_ID" in e), DEFAULT_MODEL_ID)
        fleet = EmulatedInstances(
            (look or session).client("ec2"), model_id, clock, load_seconds=load_seconds, port=tgi_port
        )
        if tgi_from_fleet:
            tgi = fleet.tgi_client()
        deps: dict[str, Any] = {
            name: ControlDeps.build(ControlEnv.from_environ(env[name]), clients=clients, tgi=tgi, clock=clock)
            for name in CONTROL_FUNCTIONS
            if name in env
        }
        if "capacity" in env:
            deps["capacity"] = CapacityDeps.build(
                CapacityEnv.from_environ(env["capacity"]), clients=clients, clock=clock
            )
        world = cls(clock, clients, hooks, market, fleet, deps)
        world.signals.install(clients.cloudformation)
        if group is not None and take_over_group:
            world.group = GroupStandIn(group, hooks, clock, market=market)
            world.group.answer_refreshes_on(clients.autoscaling)
            world.group.attach(launching=launching)
        return world

    # what the group did ---------------------------------------------------------------------------------
    def pump(self, deliver: Callable[[dict[str, Any]], Any]) -> list[tuple[float, str]]:
        """Hand on what the group did since the last pump: instances that left lose their TGI, launched ones boot
        theirs, each event the group emitted goes to ``deliver``. Returns the group's log (time, text)."""
        if self.group is None:
            return []
        events, booted, gone, log = self.group.take()
        for instance_id in gone:
            self.fleet.kill(instance_id)
        for instance_id in booted:
            self.launched_at.setdefault(instance_id, self.clock.now())
            self.fleet.boot(instance_id)
        for event in events:
            deliver(event)
        return log

    def invoke(self, function: str, event: dict[str, Any], timeout: float = 300.0) -> Any:
        """The function's real handler, on this world's deps and clock."""
        return invoke(function, event, self.deps.get(function), clock=self.clock, timeout=timeout)

    def close(self) -> None:
        self.fleet.close()
        if self.group is not None:
            self.group.detach()
