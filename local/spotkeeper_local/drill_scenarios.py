"""The drill's engine: plays a scenario file (``scenario_file.Scenario``) on one ``DrillWorld`` and checks it.

Times are simulated seconds after the clients start (t = 0), once the first instance serves (with spotkeeper
off: once its TGI is ready and the Elastic IP is associated by hand). Every action of the file's timeline plays
at its time on the world's parts (``market``, ``group``, ``fleet``, the EventBridge bus, the Lambda runtime, the
AWS clients); its instance is resolved by role when it plays, and a role that names no instance then stops the
drill with an error (``ScenarioError``) rather than being skipped. At the end the file's expectations become the
scenario's checks, read from what the world recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spotkeeper_local.aws_events import rebalance_recommendation, spot_interruption
from spotkeeper_local.aws_faults import FaultWindows
from spotkeeper_local.drill_world import SHORT_NAMES, DrillWorld
from spotkeeper_local.embedded_aws import EmbeddedAws, LocalTemplate
from spotkeeper_local.report import Check, DrillError, ScenarioResult, client_stats
from spotkeeper_local.scenario_file import (
    AwsFaults,
    EipDisassociate,
    EipMove,
    EventChaos,
    InterruptionWarning,
    LambdaThrottle,
    RebalanceRecommendation,
    Reclaim,
    Scenario,
    Setup,
    SpotCapacity,
    TerminateByHand,
    TgiFault,
    ZoneOutage,
)

WARM_UP_LIMIT = 900.0  # simulated seconds the first instance may take to serve, past its load time
# facts the report keeps under the names the code scenarios used: the first time each action played
FIRST_AT = {
    "spot-interruption-warning": "warning_at",
    "reclaim": "reclaimed_at",
    "rebalance-recommendation": "recommendation_at",
    "spot-capacity-lost": "spot_lost_at",
    "spot-capacity-back": "spot_back_at",
}


class ScenarioError(DrillError):
    """The scenario could not be played as written (the first instance never served, a role named nothing)."""


def load_seconds_of(setup: Setup, override: float | None = None) -> float:
    """Simulated launch-to-ready of an instance launched during the scenario."""
    if override is not None:
        return override
    if setup.load_seconds is not None:
        return setup.load_seconds
    from spotkeeper_local.launch_time import launch_to_ready

    return round(launch_to_ready().total, 1)


def play(
    scenario: Scenario,
    aws: EmbeddedAws,
    template: LocalTemplate,
    parameters: dict[str, str],
    options: Any,
    first_load_seconds: float = 60.0,
) -> ScenarioResult:
    load_seconds = load_seconds_of(scenario.setup, getattr(options, "load_seconds", None))
    world = DrillWorld.deploy(
        aws,
        template,
        f"drill-{scenario.name}",
        parameters,
        load_seconds,
        spotkeeper=scenario.setup.spotkeeper,
        first_load_seconds=first_load_seconds,
    )
    if getattr(options, "serial_delivery", False):
        world.concurrency = 1
    try:
        return Engine(world, scenario).play()
    finally:
        world.close()


class Engine:
    def __init__(self, world: DrillWorld, scenario: Scenario) -> None:
        self.world = world
        self.scenario = scenario
        self.original: str | None = None
        self.played: list[list[Any]] = []  # [t, action, instance or detail]
        self.marks: dict[str, float] = {}
        self._waiting: list[tuple[str, Any]] = []  # (condition, action) not yet scheduled
        self._chaos: list[dict[str, Any]] = []
        # Ops act with their own credentials: faults injected into the functions' clients do not touch them.
        self.hand = world.aws.session().client("ec2")
        self.faults = FaultWindows(world.clock.now)
        clients = world.clients
        built = [clients.__dict__[n] for n in ("autoscaling", "ec2", "sns", "cloudwatch") if n in clients.__dict__]
        self.faults.install(clients.boto3_session(), built)
        self._put = world.put_event
        world.put_event = self._put_event  # type: ignore[method-assign]
        world.clock.on_advance(self._check_waiting)

    # playing ----------------------------------------------------------------------------------------------
    def play(self) -> ScenarioResult:
        world, setup = self.world, self.scenario.setup
        for rule in setup.capacity:
            self._capacity(rule.spot, rule.instance_types, rule.zones, "at the start")
        if setup.spotkeeper:
            if not world.run_until(lambda: self._serving_ready() is not None, world.load_seconds + WARM_UP_LIMIT):
                raise ScenarioError(f"{self.scenario.name}: the first instance never became the serving instance")
            self.original = self._serving_ready()
        else:
            self.original = self._hand_run_start()
        if setup.clients.via == "gateway":
            world.start_load(world.start_gateway(), setup.clients.interval, "gateway")
        else:
            world.start_load(world.start_eip_router(), setup.clients.interval, "elastic ip", keep_alive=False)
        load = world.load
        if load is not None and load.timeout != setup.clients.timeout:
            load.stop()  # nothing sent yet: the same clients, waiting as long as the file says
            load.timeout = setup.clients.timeout
            load.start()
        for action in self.scenario.timeline:
            if action.when is None:
                self._schedule(action.at, action)
            else:
                self._waiting.append((action.when, action))
        run = self.scenario.run
        if run.seconds is not None:
            world.run_for(run.seconds)
        else:
            condition = self._condition(run.until or "")
            world.run_until(condition, max(0.0, run.limit - world.t()))
            world.run_for(run.settle)
        return self._result()

    def _hand_run_start(self) -> str:
        """Without spotkeeper, as ops run it by hand: the group's instance loads TGI, someone associates the EIP."""
        world = self.world
        first = world.group.members()[0][0]
        if not world.run_until(
            lambda: world.fleet.servers.get(first) is not None and world.fleet.servers[first].state == "ready",
            world.load_seconds + 60,
        ):
            raise ScenarioError(f"{self.scenario.name}: the first instance's TGI never became ready")
        self.hand.associate_address(AllocationId=world.stack.eip_allocation_id, InstanceId=first)
        world.note(f"ops: Elastic IP associated with {first} by hand")
        return first

    def _schedule(self, at: float, action: Any) -> None:
        self.world.at(at, action.do, lambda: self._do(action))

    def _check_waiting(self, _now: float) -> None:
        if not self._waiting or self.world.load is None:
            return
        for item in list(self._waiting):
            condition, action = item
            if self._condition(condition)():
                self._waiting.remove(item)
                self._schedule(self.world.t() + action.at, action)

    def _condition(self, name: str) -> Callable[[], bool]:
        conditions: dict[str, Callable[[], bool]] = {
            "replacement-launched": lambda: self._role("replacement") is not None,
            "on-demand-serves": self._on_demand_serves,
            "back-on-spot": self._back_on_spot,
        }
        if name not in conditions:
            raise ScenarioError(f"{self.scenario.name}: the engine cannot wait for {name!r}")
        return conditions[name]

    # what the world looks like -------------------------------------------------------------------------------
    def _serving_ready(self) -> str | None:
        world = self.world
        serving = world.endpoint().get("serving_instance_id")
        server = world.fleet.servers.get(serving or "")
        if serving and server is not None and server.state == "ready" and world.eip_holder() == serving:
            return serving
        return None

    def _on_demand_serves(self) -> bool:
        serving = self._serving_ready()
        return serving is not None and self.world.group.purchase.get(serving) == "on-demand"

    def _back_on_spot(self) -> bool:
        world = self.world
        serving = self._serving_ready()
        refresh = world.group.refreshes[0] if world.group.refreshes else None
        return (
            serving is not None
            and world.group.purchase.get(serving) == "spot"
            and world.endpoint().get("mode") == "spot"
            and refresh is not None
            and not refresh.active
            and len(world.group.members()) == 1
        )

    def _running(self) -> dict[str, Any]:
        """This scenario's instances that EC2 has not terminated."""
        from moto.ec2.models import ec2_backends

        from spotkeeper_local.auto_scaling_group import ACCOUNT_ID, REGION

        backend = ec2_backends[ACCOUNT_ID][REGION]
        ours = self.world.launched_at  # this scenario's stack (the embedded AWS keeps earlier scenarios' too)
        return {i.id: i for i in backend.all_instances() if i.state in ("pending", "running") and i.id in ours}

    def _role(self, role: str) -> str | None:
        world = self.world
        running = self._running()
        launched = sorted((at, i) for i, at in world.launched_at.items() if i in running)
        members = [i for i, _ in world.group.members() if i in running]
        by_launch = sorted(members, key=lambda i: world.launched_at.get(i, float("inf")))
        if role == "serving":
            return world.endpoint().get("serving_instance_id")
        if role == "original":
            return self.original
        if role == "replacement":
            return next((i for at, i in launched if world.t(at) >= 0 and i != self.original), None)
        if role == "newest":
            return launched[-1][1] if launched else None
        if role in ("any-spot", "on-demand"):
            purchase = "spot" if role == "any-spot" else "on-demand"
            return next((i for i in by_launch if world.group.purchase.get(i) == purchase), None)
        if role == "nothing":
            return None
        raise ScenarioError(f"{self.scenario.name}: unknown role {role!r}")

    def _target(self, role: str, action: str) -> str:
        instance = self._role(role)
        if instance is None:
            raise ScenarioError(f"{self.scenario.name}: at t={self.world.t():g}s {action}: no {role} instance")
        return instance

    def _placement(self) -> tuple[str, str]:
        """The instance type and zone the group launches into (the stand-in uses its first override and subnet)."""
        from moto.autoscaling.models import autoscaling_backends
        from moto.ec2.models import ec2_backends

        from spotkeeper_local.auto_scaling_group import ACCOUNT_ID, REGION

        group = autoscaling_backends[ACCOUNT_ID][REGION].autoscaling_groups[self.world.stack.group]
        overrides = (group.mixed_instances_policy or {}).get("LaunchTemplate", {}).get("Overrides", [])
        instance_type = overrides[0]["InstanceType"] if overrides else ""
        subnet = (group.vpc_zone_identifier or "").split(",")[0]
        zone = ec2_backends[ACCOUNT_ID][REGION].get_subnet(subnet).availability_zone if subnet else ""
        return instance_type, zone

    # the actions ----------------------------------------------------------------------------------------------
    def _do(self, action: Any) -> None:
        world = self.world
        t = round(world.t(), 1)
        self.marks.setdefault(action.do, t)
        detail: Any = None
        if isinstance(action, InterruptionWarning):
            detail = self._target(action.target, action.do)
            world.note(f"EC2: Spot interruption warning for {detail}", "reclaim in 120 s")
            world.put_event(spot_interruption(detail, at=world.clock.now()))
        elif isinstance(action, RebalanceRecommendation):
            detail = self._target(action.target, action.do)
            world.note(f"EC2: rebalance recommendation for {detail}", "elevated risk of interruption")
            world.group.rebalance_recommendation(detail)
            world.put_event(rebalance_recommendation(detail, at=world.clock.now()))
        elif isinstance(action, Reclaim):
            detail = self._target(action.target, action.do)
            world.note(f"EC2: Spot reclaims {detail}")
            world.group.reclaim(detail)
        elif isinstance(action, SpotCapacity):
            back = action.do == "spot-capacity-back"
            detail = self._capacity(back, action.instance_types, action.zones, "")
        elif isinstance(action, ZoneOutage):
            detail = self._zone_outage(action.zone)
        elif isinstance(action, TgiFault):
            detail = self._target(action.target, action.do)
            server = world.fleet.servers.get(detail)
            if server is None:
                raise ScenarioError(f"{self.scenario.name}: at t={t:g}s {action.do}: {detail} runs no TGI")
            if action.do == "tgi-crash":
                world.note(f"{detail}: TGI crashes", "the port closes")
                server.kill()
            elif action.do == "tgi-hang":
                world.note(f"{detail}: TGI hangs", "the port accepts connections, nothing answers")
                server.set_hung()
            else:
                world.note(f"{detail}: TGI fails /health", "503, generations fail")
                server.set_unhealthy()
        elif isinstance(action, EipMove):
            detail = self._target(action.to, action.do)
            self.hand.associate_address(
                AllocationId=world.stack.eip_allocation_id, InstanceId=detail, AllowReassociation=True
            )
            world.note(f"ops: Elastic IP moved to {detail} ({action.to}) by hand")
        elif isinstance(action, EipDisassociate):
            addresses = self.hand.describe_addresses(AllocationIds=[world.stack.eip_allocation_id])["Addresses"]
            association = addresses[0].get("AssociationId") if addresses else None
            if association is None:
                raise ScenarioError(f"{self.scenario.name}: at t={t:g}s eip-disassociate: the EIP is on nothing")
            detail = addresses[0].get("InstanceId")
            self.hand.disassociate_address(AssociationId=association)
            world.note(f"ops: Elastic IP disassociated from {detail} by hand")
        elif isinstance(action, TerminateByHand):
            detail = self._target(action.target, action.do)
            world.note(f"ops: {detail} terminated by hand (EC2 TerminateInstances)")
            world.group.terminated_outside(detail, "by hand (EC2 TerminateInstances)", "terminated outside the group")
        elif isinstance(action, LambdaThrottle):
            before = world.concurrency
            world.concurrency = 0
            world.note("Lambda: throttled", f"no invocation for {action.seconds:g} s; events wait in their queues")

            def lift() -> None:
                world.concurrency = before
                world.note("Lambda: throttling over")

            world.at(world.t() + action.seconds, "lambda throttle over", lift)
            detail = action.seconds
        elif isinstance(action, AwsFaults):
            kind = "throttling" if action.do == "aws-throttling" else "5xx"
            self.faults.open(action.service, kind, action.seconds, action.failures_per_call)
            world.note(
                f"AWS: {action.service} {kind} for {action.seconds:g} s",
                f"the first {action.failures_per_call} attempts of every call fail",
            )
            detail = action.service
        elif isinstance(action, EventChaos):
            self._chaos.append(
                {"kind": action.do, "event": action.event, "left": action.count, "seconds": action.seconds}
            )
            world.note(
                f"EventBridge: {action.do.removeprefix('events-')} of the next {action.count} {action.event} events"
            )
            detail = action.event
        else:
            raise ScenarioError(f"{self.scenario.name}: the engine cannot play {action.do!r}")
        self.played.append([t, action.do, detail])

    def _capacity(self, spot: bool, types: list[str] | None, zones: list[str] | None, when: str) -> str:
        instance_type, zone = self._placement()
        world = self.world
        scope = f"{', '.join(types) if types else 'every type'} in {', '.join(zones) if zones else 'every zone'}"
        hits = (types is None or instance_type in types) and (zones is None or zone in zones)
        what = "is back" if spot else "runs out"
        if not hits:
            world.note(
                f"EC2: Spot capacity {what} for {scope} {when}".rstrip(), f"not the group's {instance_type} in {zone}"
            )
            return scope
        world.market.capacity = spot
        world.market.set_score(9 if spot else 1)
        world.note(f"EC2: Spot capacity {what} for {scope} {when}".rstrip(), f"placement score {9 if spot else 1}")
        return scope

    def _zone_outage(self, zone: str | None) -> str:
        world = self.world
        group_type, group_zone = self._placement()
        zone = zone or group_zone
        if zone == group_zone:
            world.market.capacity = False
            world.market.set_score(1)
        struck = [i for i, instance in self._running().items() if instance.placement.zone == zone]
        world.note(f"EC2: {zone} fails", f"Spot capacity gone there; {len(struck)} instances unreachable")
        for instance_id in struck:
            world.fleet.kill(instance_id)
        return zone

    def _put_event(self, event: dict[str, Any]) -> None:
        """Onto the bus, unless a scenario's EventBridge chaos loses, delays or duplicates it."""
        world = self.world
        kind = SHORT_NAMES.get(event.get("detail-type", ""), event.get("detail-type", ""))
        for rule in self._chaos:
            if rule["left"] <= 0 or rule["event"] not in ("any", kind):
                continue
            rule["left"] -= 1
            if rule["kind"] == "events-loss":
                world.note(f"EventBridge: {kind} lost")
                return
            if rule["kind"] == "events-delay":
                world.note(f"EventBridge: {kind} delayed {rule['seconds']:g} s")
                world.at(world.t() + rule["seconds"], "delayed event", lambda: self._put(event))
                return
            world.note(f"EventBridge: {kind} delivered twice")
            self._put(event)
            world.at(world.t() + rule["seconds"], "duplicate event", lambda: self._put(event))
            return
        self._put(event)

    # the report -----------------------------------------------------------------------------------------------
    def _result(self) -> ScenarioResult:
        world, scenario = self.world, self.scenario
        replacement = self._role("replacement") or next(
            (i for at, i in sorted((a, i) for i, a in world.launched_at.items()) if world.t(at) >= 0), None
        )
        took = None
        if replacement is not None and replacement in world.ready_at:
            took = world.ready_at[replacement] - world.launched_at[replacement]
        marks = dict(self.marks)
        if took is not None and replacement is not None:
            marks["replacement ready"] = round(world.t(world.ready_at[replacement]), 1)
        first_target = {do: d for _, do, d in reversed(self.played)}
        facts: dict[str, Any] = {
            "original": self.original,
            "interrupted": first_target.get("spot-interruption-warning"),
            "at_risk": first_target.get("rebalance-recommendation"),
            "replacement": replacement,
            "replacement_launch_to_ready_seconds": took,
            "load_seconds": world.load_seconds,
            "played": self.played,
            "marks": marks,
            "aws_faults_injected": dict(self.faults.injected),
        }
        for do, name in FIRST_AT.items():
            if do in self.marks:
                facts[name] = self.marks[do]
        return _result(world, scenario, facts, self._checks())

    def _checks(self) -> list[Check]:
        world, expect = self.world, self.scenario.expect
        assert world.load is not None
        clients = client_stats(world.via, world.load.outcomes, 0.0, world.t())
        endpoint = world.endpoint()
        checks: list[Check] = []

        def bound(name: str, value: float, b: Any) -> None:
            checks.append(Check(f"{name} in [{b.min:g}, {b.max:g}]", b.min <= value <= b.max, f"{value:g}"))

        bound(
            f"longest window without a successful request via the {world.via} (s)",
            clients.longest_outage_seconds,
            expect.longest_no_success_seconds,
        )
        if expect.failed_requests is not None:
            bound("failed requests", clients.failed, expect.failed_requests)
        if expect.recovered is not None:
            checks.append(
                Check(
                    "clients recovered" if expect.recovered else "clients never recovered",
                    clients.recovered == expect.recovered,
                    f"recovered={clients.recovered}; {clients.failed} of {clients.sent} failed",
                )
            )
        mode = endpoint.get("mode", "spot")
        if expect.capacity_mode is not None:
            checks.append(Check(f"capacity mode ends {expect.capacity_mode}", mode == expect.capacity_mode, mode))
        for seen in expect.modes_seen:
            times = [t for t, m in world.mode_log if m == seen and t >= 0]
            checks.append(
                Check(f"capacity mode was {seen}", bool(times), f"from t={times[0]:g}s" if times else "never")
            )
        members = world.group.members()
        if expect.desired_capacity is not None:
            checks.append(
                Check(
                    f"desired capacity ends {expect.desired_capacity}",
                    world.group.desired() == expect.desired_capacity,
                    str(world.group.desired()),
                )
            )
        if expect.group_size is not None:
            checks.append(
                Check(
                    f"the group ends with {expect.group_size} instances",
                    len(members) == expect.group_size,
                    ", ".join(f"{i} {s}" for i, s in members) or "none",
                )
            )
        serving = endpoint.get("serving_instance_id")
        if expect.serving_purchase is not None:
            bought = world.group.purchase.get(serving or "")
            checks.append(
                Check(
                    f"the serving instance is {expect.serving_purchase}",
                    bought == expect.serving_purchase,
                    f"{serving} is {bought}",
                )
            )
        holder = world.eip_holder()
        if expect.eip_on is not None:
            meant = self._role(expect.eip_on)
            checks.append(
                Check(
                    f"the EIP ends on {expect.eip_on}",
                    holder == meant and (meant is not None or expect.eip_on == "nothing"),
                    f"EIP on {holder or 'nothing'}, {expect.eip_on} is {meant or 'nothing'}",
                )
            )
        if expect.eip_not_on is not None:
            meant = self._role(expect.eip_not_on)
            checks.append(
                Check(
                    f"the EIP does not end on {expect.eip_not_on}",
                    holder != meant and (meant is not None or expect.eip_not_on == "nothing"),
                    f"EIP on {holder or 'nothing'}, {expect.eip_not_on} is {meant or 'nothing'}",
                )
            )
        if expect.aws_faults_injected is not None:
            bound("AWS call attempts failed by the fault windows", self.faults.total, expect.aws_faults_injected)
        sent = [a["event"] for a in world.alerts]
        for name in expect.alerts.must:
            checks.append(Check(f"alert {name} sent", name in sent, f"{sent.count(name)} sent"))
        for name in expect.alerts.must_not:
            checks.append(Check(f"no {name} alert", name not in sent, f"{sent.count(name)} sent"))
        transitions = world.alarms.evaluator.transitions if world.alarms is not None else []
        alarmed = [c.alarm for c in transitions if c.state == "ALARM"]
        for name in expect.alarms.must:
            checks.append(Check(f"alarm {name} went to ALARM", name in alarmed, f"{alarmed.count(name)} times"))
        for name in expect.alarms.must_not:
            checks.append(
                Check(f"alarm {name} stayed out of ALARM", name not in alarmed, f"{alarmed.count(name)} times")
            )
        failed = _handler_problems(world)
        checks.append(
            Check(
                "every handler invocation succeeded within its timeout"
                if expect.handlers_succeed
                else "some handler invocation failed (expected: see the scenario's story)",
                (not failed) == expect.handlers_succeed,
                f"{len(world.invocations)} invocations" + (f"; {'; '.join(failed[:3])}" if failed else ""),
            )
        )
        if expect.no_stray_instances:
            in_group = {i for i, _ in members}
            stray = sorted(set(self._running()) - in_group)
            checks.append(Check("no instance left running outside the group", not stray, ", ".join(stray) or "none"))
        return checks


def _handler_problems(world: DrillWorld) -> list[str]:
    failed = [f"{i.function}: {i.error}" for i in world.invocations if i.error]
    late = [
        f"{i.function} ran {i.ended - i.started:.0f} s (past its Lambda timeout)"
        for i in world.invocations
        if i.ended - i.started > world.stack.function_timeout.get(i.function, 900)
    ]
    return failed + late


def _result(world: DrillWorld, scenario: Scenario, facts: dict[str, Any], checks: list[Check]) -> ScenarioResult:
    key, title, story = scenario.name, scenario.title, scenario.story
    assert world.load is not None
    end = world.t()
    clients = client_stats(world.via, world.load.outcomes, 0.0, end)
    holder = world.eip_holder()
    endpoint = world.endpoint()
    serving = endpoint.get("serving_instance_id")
    members = dict(world.group.members())
    if holder is None:
        was = world.eip_lost_from
        note = "nothing" + (f" (was on {was}, terminated)" if was else "")
    else:
        role = "serving" if holder == serving else ("in the group" if holder in members else "not in the group")
        state = world.fleet.servers.get(holder)
        note = f"{holder} ({role}{', TGI down' if state is None or state.state != 'ready' else ''})"
    purchase = {i: world.group.purchase.get(i, "?") for i in members}
    facts = {**facts, "serving_changes": _changes(world), "mode_changes": _mode_changes(world)}
    if not scenario.setup.spotkeeper:
        mode = "spot (no spotkeeper)"
    else:
        mode = endpoint.get("mode", "spot")
        if serving in purchase:
            mode += f" ({serving} is {purchase[serving]})"
    return ScenarioResult(
        key=key,
        title=title,
        story=story,
        clients=clients,
        eip_on=holder,
        eip_note=note,
        serving_instance=serving,
        capacity_mode=mode,
        purchase_options=purchase,
        alerts=list(world.alerts),
        alarms=[
            {"t": round(world.t(c.at), 1), "alarm": c.alarm, "from": c.previous, "to": c.state}
            for c in (world.alarms.evaluator.transitions if world.alarms is not None else [])
        ],
        timeline=list(world.timeline),
        facts=facts,
        checks=checks,
        samples=list(world.load.outcomes),
        duration=end,
    )


def _changes(world: DrillWorld) -> list[list[Any]]:
    """[t, serving instance, its purchase option, its TGI ready] each time one of them changed."""
    changes: list[list[Any]] = []
    for t, serving, ready in world.serving_log:
        row = [t, serving, world.group.purchase.get(serving or "", None), ready]
        if not changes or changes[-1][1:] != row[1:]:
            changes.append(row)
    return changes


def _mode_changes(world: DrillWorld) -> list[list[Any]]:
    changes: list[list[Any]] = []
    for t, mode in world.mode_log:
        if not changes or changes[-1][1] != mode:
            changes.append([t, mode])
    return changes
